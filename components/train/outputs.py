"""What a training stage leaves in its output folder (local or s3://), written by rank 0.

pretrain: connector.safetensors + summary.json.
finetune: model/, a transformers model folder (config, safetensors weights, generation config, tokenizer, and
the LlavaProcessor of `components.models.processor`, shaping images as the stage's image_mode did in training),
and summary.json; LoRA runs save the merged model in model/ and keep the adapter (plus the connector, which
trains in full) in adapter/.
summary.json is written last, so its presence marks a complete output.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

from components.core import storage
from components.models.connectors import HF_NATIVE, connector_of, save_connector, set_connector, unwrap_llava
from components.models.processor import build_processor

from .spec import TrainStageConfig
from .trainable import apply_lora, merge_lora
from .zero import full_state_dict


def write_pretrain_output(module: nn.Module, out: str, rank: int) -> None:
    """connector.safetensors (collective: gathers the connector under ZeRO-3)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(connector_of(module).parameters()), modifier_rank=None):
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_connector(module, Path(tmp) / "connector.safetensors")
                storage.upload_dir(tmp, out)


def _skeleton(module: nn.Module, stage: TrainStageConfig) -> nn.Module:
    """An empty (meta-device) copy of the training model's structure, to receive gathered weights."""
    llava = unwrap_llava(module)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(copy.deepcopy(llava.config))
    spec = getattr(llava.config, "mm_projector_type", HF_NATIVE)
    if spec != HF_NATIVE:
        set_connector(model, spec)
    return apply_lora(model, stage.lora) if stage.lora is not None else model


def write_finetune_output(
    module: nn.Module, stage: TrainStageConfig, tokenizer: PreTrainedTokenizerBase, out: str, rank: int
) -> None:
    """The full model in transformers format (collective: gathers every parameter under ZeRO-3)."""
    state = full_state_dict(module, rank)
    if rank != 0:
        return
    assert state is not None
    model = _skeleton(module, stage)
    model.load_state_dict(state, strict=True, assign=True)
    with tempfile.TemporaryDirectory() as tmp:
        if stage.lora is not None:
            model.save_pretrained(str(Path(tmp) / "adapter"))
            save_connector(model, Path(tmp) / "adapter" / "connector.safetensors")
            model = merge_lora(model)
        folder = Path(tmp) / "model"
        llava = unwrap_llava(model)
        # Read back by evaluation: how images were shaped in training, the prompt template, the length cap.
        llava.config.image_aspect_ratio = stage.image_mode
        llava.config.conversation_template = stage.template
        llava.config.tokenizer_model_max_length = stage.max_length
        llava.save_pretrained(str(folder))
        build_processor(llava, tokenizer, stage.image_mode).save_pretrained(str(folder))
        storage.upload_dir(tmp, out)


def write_export_probe(module: nn.Module, inputs: dict[str, Any], out: str, rank: int) -> None:
    """Collective: a batch and its logits from the in-training (possibly ZeRO-3-sharded) model, saved as
    export_probe.safetensors, so a check can compare the exported model against training (tests use it)."""
    from safetensors.torch import save

    module.eval()
    with torch.no_grad():
        fwd = {k: v for k, v in inputs.items() if k != "labels" and v is not None}
        logits = module(**fwd).logits
    if rank == 0:
        tensors = {k: v.detach().cpu().contiguous() for k, v in {**fwd, "logits": logits}.items()}
        storage.write_bytes(storage.join(out, "export_probe.safetensors"), save(tensors))


def write_summary(summary: dict[str, Any], out: str) -> None:
    storage.write_json(storage.join(out, "summary.json"), summary)
