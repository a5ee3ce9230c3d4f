"""What each stage of the pipeline needs (memory, disk, GPUs, storage, time), from its config alone: the input of
`llava-pipeline plan --resources` (pipelines/engine/resources_cmd.py)."""
