"""Environment variables the training workers read: test knobs, and what each worker takes from the driver."""

FAULT_ENV = "LLAVA_FAULT_STEP"  # tests: a worker dies right after this optimizer step, first attempt only
PROBE_ENV = "LLAVA_EXPORT_PROBE"  # tests: save a batch and its in-training logits next to the output
DELAY_ENV = "LLAVA_TRAIN_STEP_DELAY_S"  # tests: sleep after each step, so an interruption lands mid-run
FORWARDED_ENV = (FAULT_ENV, PROBE_ENV, DELAY_ENV, "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR")
