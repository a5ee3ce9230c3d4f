"""DeepSpeed plumbing: the stage's JSON config with its "auto" fields filled, and gathering ZeRO-3 weights.

"auto" is resolved as HF's DeepSpeed integration does: batch fields from the stage's batch arithmetic, bf16
from `precision`, and the bucket sizes from the LLM's hidden size (reduce bucket h², ZeRO-3 prefetch 0.9·h²,
persistence threshold 10·h). Gradient clipping comes from the stage's `optim.max_grad_norm` only; DeepSpeed
applies it to the partitioned gradients under ZeRO-2 and ZeRO-3 with the recipe's client AdamW.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .spec import TrainStageConfig, deepspeed_config_path


def deepspeed_config(stage: TrainStageConfig, world: int, hidden_size: int) -> dict[str, Any]:
    """The stage's DeepSpeed JSON with every "auto" filled; an unknown "auto" key is an error naming the file."""
    path = deepspeed_config_path(stage)  # names the stage key when the file does not exist
    try:
        cfg = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    accumulation = stage.global_batch // (stage.per_device_batch * world)
    values = {
        "train_micro_batch_size_per_gpu": stage.per_device_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": stage.global_batch,
        "bf16.enabled": stage.precision == "bf16",
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }

    def fill(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                fill(value, name + ".")
            elif value == "auto":
                if name not in values:
                    raise ValueError(f"{path}: {name} is \"auto\" but the pipeline has no value for it; set it")
                node[key] = values[name]

    fill(cfg, "")
    if stage.precision == "fp32" and cfg.get("fp16", {}).get("enabled"):
        raise ValueError(f"{path}: fp16 is enabled but the stage's precision is fp32")
    if "gradient_clipping" in cfg:
        raise ValueError(f"{path}: remove gradient_clipping; the stage's optim.max_grad_norm sets it")
    # Always written, 0 included: DeepSpeed >= 0.19.3 clips at 1.0 when the key is absent.
    cfg["gradient_clipping"] = stage.optim.max_grad_norm
    if "optimizer" in cfg or "scheduler" in cfg:
        raise ValueError(f"{path}: remove the optimizer/scheduler blocks; the recipe passes its own AdamW and "
                         "schedule (a config optimizer also JIT-builds a slow fused-Adam op on CPU)")
    cfg.setdefault("steps_per_print", 10**9)  # the recipe logs; keep DeepSpeed's own step lines out
    return cfg


def full_state_dict(module: nn.Module, rank: int) -> dict[str, torch.Tensor] | None:
    """The module's full state dict on CPU, on rank 0 (None elsewhere); a collective under ZeRO-3.

    Parameters are gathered one at a time, so no rank ever holds more than one extra tensor on its device.
    Tied weights appear under each of their names, as in `state_dict()`.
    """
    import deepspeed

    entries = module.state_dict(keep_vars=True)
    params = {id(t): t for t in entries.values() if isinstance(t, nn.Parameter)}
    gathered: dict[int, torch.Tensor] = {}
    for key, param in params.items():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if rank == 0:
                gathered[key] = param.detach().to("cpu", copy=True)
    if rank != 0:
        return None
    return {k: gathered[id(t)] if id(t) in gathered else t.detach().to("cpu", copy=True) for k, t in entries.items()}


def frozen_fingerprint(module: nn.Module, rank: int) -> str | None:
    """sha256 over the frozen parameters' names and bytes (rank 0; a collective under ZeRO-3).

    Recorded at the end of a stage so the summary shows that the frozen parts left training bit-identical."""
    import deepspeed

    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        if param.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if rank == 0:
                digest.update(name.encode())
                digest.update(param.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest() if rank == 0 else None


def fingerprint_tensors(named: dict[str, torch.Tensor]) -> str:
    """The same digest as `frozen_fingerprint`, over plain tensors (for checks outside training)."""
    digest = hashlib.sha256()
    for name, tensor in named.items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
