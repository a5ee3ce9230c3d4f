"""The `pretrain` and `finetune` stages: Ray Train workers, each running a DeepSpeed engine over the LLaVA model."""
