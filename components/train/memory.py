"""What one training stage holds, per worker and in its checkpoints: the arithmetic, no Ray, no weights.

Per worker (a GPU's memory with use_gpu, else the worker's host memory), from the stage's DeepSpeed JSON
(zero.py fills it exactly as training does) and the model's exact counts (components/models/sizes.py):
- weights: all parameters in the training dtype (bf16: 2 bytes, fp32: 4); ZeRO-3 keeps 1/N of them plus
  the layers it gathers for the current step (at most stage3_max_live_parameters);
- gradients of the trainable parameters in the training dtype, partitioned over the N workers from ZeRO-2 on,
  plus one reduce bucket;
- AdamW: an fp32 master copy and two fp32 moments of every trainable parameter (12 bytes), partitioned from
  ZeRO-1 on; `offload_optimizer`/`offload_param` to cpu move them to the worker's host memory;
- activations of one micro-batch at its longest: per_device_batch × the data's longest sample (max_length when
  the data is not known yet; packing fills a row with the same tokens): with activation checkpointing each decoder layer's input (2·h bytes per token) plus
  one layer being recomputed, else every layer's. A Llama layer keeps about (18·h + 8·i) bytes per token in
  16-bit: the normed inputs, q/k/v, the attention output and the SwiGLU's gate, up and product (the
  attention kernels are the memory-efficient ones: no sequence² term). The logits of the supervised positions
  (the loss runs lm_head on those only; the data's most supervised sample, per sample of the micro-batch):
  bf16 logits, their fp32 copy for the loss and its gradient, 10 bytes per position and vocabulary entry. The frozen vision tower runs without autograd: one layer's activations.
Checkpoints (DeepSpeed `save_checkpoint(exclude_frozen_parameters=True)`): each worker writes its optimizer
partition (12 bytes per trainable parameter / N); ZeRO-3 workers also write their parameter partition, below
ZeRO-3 worker 0 writes the trainable parameters once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from components.models.sizes import ModelSizes, meta_model
from components.models.spec import ModelSpec, TokenizerConfig

from .length_mix import DataShape
from .spec import TrainStageConfig
from .zero import deepspeed_config

ADAM_BYTES = 12  # fp32 master + exp_avg + exp_avg_sq per trainable parameter
LOGIT_BYTES = 10  # bf16 logits + their fp32 copy in the loss + its gradient, per position and vocab entry
CHECKPOINT_LAYERS_LIVE = 2  # ZeRO-3: the layer computing and the one prefetched


@dataclass(frozen=True)
class TrainFootprint:
    """Bytes of one training stage (worker = one data-parallel rank)."""

    device: dict[str, int]  # on each GPU (with use_gpu; else in the worker's host memory), by part
    host_offload: dict[str, int]  # in each worker's host memory because the DeepSpeed JSON offloads it
    build: int  # the whole model in the training dtype, in host memory while a worker builds it
    save_transient: int  # a worker's largest optimizer tensor, copied to host memory while it is saved
    checkpoint_rank0: int  # what worker 0 writes per checkpoint
    checkpoint_rank: int  # what each other worker writes per checkpoint
    output: int  # the stage's output: the model folder (finetune) or the connector (pretrain)
    zero_stage: int
    trainable: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device_total(self) -> int:
        return sum(self.device.values())

    def checkpoint_total(self, world: int) -> int:
        return self.checkpoint_rank0 + (world - 1) * self.checkpoint_rank


def trainable_params(spec: ModelSpec, tokenizer: TokenizerConfig, stage: TrainStageConfig) -> int:
    """Parameters the stage updates, counted by the training code's own freezing (trainable.py) on the meta
    model: the connector, the LLM when trained in full, LoRA's adapters."""
    from .trainable import apply_lora, parameter_counts, set_trainable

    model, _, _ = meta_model(spec, tokenizer)
    counts = parameter_counts(apply_lora(model, stage.lora)) if stage.lora is not None else \
        set_trainable(model, stage.trainable)
    return sum(c["trainable"] for c in counts.values())


def _zero(stage: TrainStageConfig, world: int, hidden: int) -> dict[str, Any]:
    return deepspeed_config(stage, world, hidden).get("zero_optimization", {})


def _offloaded(zero: dict[str, Any], key: str) -> bool:
    return str((zero.get(key) or {}).get("device", "none")).lower() == "cpu"


def layer_activation_bytes(sizes: ModelSizes, tokens: int) -> int:
    """16-bit activations one Llama decoder layer keeps for its backward pass over `tokens` positions."""
    return tokens * (18 * sizes.hidden + 8 * sizes.intermediate)


def train_footprint(sizes: ModelSizes, trainable: int, stage: TrainStageConfig, world: int,
                    data: DataShape | None = None) -> TrainFootprint:
    """The stage's memory per worker and its checkpoint sizes, for `world` data-parallel workers; `data`: the
    stage's data, when known (else every sample may be max_length long and fully supervised)."""
    zero = _zero(stage, world, sizes.hidden)
    z = int(zero.get("stage", 0))
    w = 2 if stage.precision == "bf16" else 4
    p = sizes.total
    layer = (4 * sizes.hidden**2 + 3 * sizes.hidden * sizes.intermediate)  # one decoder layer's weights
    weights = w * p if z < 3 else w * (math.ceil(p / world) + min(
        int(float(zero.get("stage3_max_live_parameters", 1e9))), CHECKPOINT_LAYERS_LIVE * layer))
    grads = w * (trainable if z < 2 else math.ceil(trainable / world))
    bucket = w * min(trainable, int(float(zero.get("reduce_bucket_size", 5e8)))) if z >= 2 else 0
    optimizer = ADAM_BYTES * (trainable if z < 1 else math.ceil(trainable / world))
    longest = min(stage.max_length, data.longest) if data else stage.max_length
    supervised = min(longest, data.longest_supervised) if data else stage.max_length
    tokens = stage.per_device_batch * longest
    kept = sizes.layers * 2 * sizes.hidden * tokens if stage.gradient_checkpointing else 0
    layers_live = 1 if stage.gradient_checkpointing else sizes.layers
    activations = kept + layers_live * layer_activation_bytes(sizes, tokens)
    logits = LOGIT_BYTES * stage.per_device_batch * supervised * sizes.vocab
    vision = 2 * stage.per_device_batch * sizes.vision_positions * (6 * sizes.vision_hidden)
    device = {"weights": weights, "gradients": grads + bucket, "optimizer": optimizer,
              "activations": activations + vision, "logits": logits}
    offload: dict[str, int] = {}
    if _offloaded(zero, "offload_optimizer"):
        offload["optimizer"] = device.pop("optimizer")
    if _offloaded(zero, "offload_param") and z == 3:
        offload["weights"] = device.pop("weights")
    partition = math.ceil(trainable / world) if z >= 1 else trainable
    optim_file = ADAM_BYTES * partition
    param_file = w * math.ceil(trainable / world) if z == 3 else 0
    rank0_params = w * trainable if z < 3 else param_file
    if stage.lora is not None:  # the merged model, plus adapter/ with the adapters and the connector
        output = w * p + w * trainable
    elif stage.trainable == "connector":
        output = w * sizes.connector
    else:
        output = w * p
    return TrainFootprint(
        device=device, host_offload=offload, build=w * p, save_transient=4 * partition,
        checkpoint_rank0=optim_file + rank0_params, checkpoint_rank=optim_file + param_file, output=output,
        zero_stage=z, trainable=trainable)
