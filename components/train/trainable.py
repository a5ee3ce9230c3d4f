"""What trains: freezing per stage, LoRA on the LLM, and AdamW parameter groups (reference §4.4).

The vision tower is always frozen. Pretraining trains only the connector; finetuning trains connector + LLM,
either fully or through LoRA adapters on every nn.Linear of the LLM (lm_head excluded) with the connector
trained in full.
"""

from __future__ import annotations

from typing import Any, Literal

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import LlavaForConditionalGeneration

from components.models.connectors import connector_of, unwrap_llava

from .spec import LoraConfig, OptimConfig

Trainable = Literal["connector", "connector+llm"]
PARTS = ("vision_tower", "connector", "language_model")


def _part_of_params(model: nn.Module) -> dict[int, str]:
    """Parameter id → part; everything outside the tower and the connector (LLM, lm_head, LoRA) is the LLM."""
    llava = unwrap_llava(model)
    part = {id(p): "language_model" for p in model.parameters()}
    part.update({id(p): "connector" for p in connector_of(llava).parameters()})
    part.update({id(p): "vision_tower" for p in llava.model.vision_tower.parameters()})
    return part


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable/frozen element counts per part (tied weights counted once)."""
    counts = {p: {"trainable": 0, "frozen": 0} for p in PARTS}
    part = _part_of_params(model)
    for param in model.parameters():  # parameters() already skips tied duplicates
        counts[part[id(param)]]["trainable" if param.requires_grad else "frozen"] += param.numel()
    return counts


def _freeze_vision(llava: LlavaForConditionalGeneration) -> None:
    tower = llava.model.vision_tower
    tower.requires_grad_(False)
    # Callers that later run model.train() flip this back; CLIP has no dropout, so only the flag changes.
    tower.eval()


def set_trainable(model: nn.Module, trainable: Trainable) -> dict[str, dict[str, int]]:
    """Freeze/unfreeze per stage; returns `parameter_counts`. Not for LoRA models (use `apply_lora`)."""
    if trainable not in ("connector", "connector+llm"):
        raise ValueError(f"trainable={trainable!r}: expected 'connector' or 'connector+llm'")
    if isinstance(model, PeftModel):
        raise ValueError("set_trainable on a LoRA model: apply_lora already set what trains")
    llava = unwrap_llava(model)
    llava.requires_grad_(trainable == "connector+llm")
    connector_of(llava).requires_grad_(True)
    _freeze_vision(llava)
    return parameter_counts(model)


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear in the LLM (lm_head sits outside it, so it is never a target)."""
    llava = unwrap_llava(model)
    return [
        f"model.language_model.{name}"
        for name, module in llava.model.language_model.named_modules()
        if isinstance(module, nn.Linear)
    ]


def apply_lora(model: nn.Module, lora: LoraConfig) -> PeftModel:
    """Wrap the model with LoRA adapters on the LLM's linears; connector fully trainable, the rest frozen."""
    llava = unwrap_llava(model)
    targets = lora_target_modules(llava)
    if not targets:
        raise ValueError("apply_lora: the language model has no nn.Linear layers to adapt")
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,  # exact names: peft matches a list entry as a full name or name suffix
        bias="none",
    )
    wrapped = get_peft_model(llava, peft_cfg)  # freezes every non-LoRA parameter
    connector_of(wrapped).requires_grad_(True)
    _freeze_vision(llava)
    return wrapped


def merge_lora(model: nn.Module) -> LlavaForConditionalGeneration:
    """Fold the LoRA adapters into the LLM weights; the result is a plain LlavaForConditionalGeneration."""
    if not isinstance(model, PeftModel):
        raise ValueError(f"merge_lora: expected a LoRA (PeftModel) model, got {type(model).__name__}")
    merged = model.merge_and_unload()
    if not isinstance(merged, LlavaForConditionalGeneration):
        raise TypeError(f"merge_lora: unwrapped to {type(merged).__name__}, not LlavaForConditionalGeneration")
    return merged


def _no_decay_param_ids(model: nn.Module) -> set[int]:
    """Biases and normalisation weights (LayerNorm, RMSNorm): excluded from weight decay, as the reference."""
    ids: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, nn.LayerNorm | nn.GroupNorm) or type(module).__name__.endswith("Norm")
        for name, param in module.named_parameters(recurse=False):
            if is_norm or name == "bias" or name.endswith("_bias"):
                ids.add(id(param))
    return ids


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups over the trainable parameters; empty groups are left out.

    Connector params use optim.connector_lr when set, else optim.lr. Each group carries a `name` for logging.
    """
    connector_ids = {id(p) for p in connector_of(model).parameters()}
    no_decay = _no_decay_param_ids(model)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            buckets.setdefault((id(param) in connector_ids, id(param) in no_decay), []).append(param)
    groups = []
    for (is_connector, skip_decay), params in sorted(buckets.items()):
        lr = optim.connector_lr if is_connector and optim.connector_lr is not None else optim.lr
        groups.append(
            {
                "name": f"{'connector' if is_connector else 'llm'}/{'no_decay' if skip_decay else 'decay'}",
                "params": params,
                "lr": lr,
                "weight_decay": 0.0 if skip_decay else optim.weight_decay,
            }
        )
    return groups
