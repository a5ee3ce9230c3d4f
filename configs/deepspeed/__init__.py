"""DeepSpeed JSON configs referenced by the pipeline configs (`deepspeed: deepspeed/zero2.json`)."""
