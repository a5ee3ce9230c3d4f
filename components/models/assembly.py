"""Build a `LlavaForConditionalGeneration` from a ModelSpec: random-init towers or real checkpoints.

Both paths make a CLIPVisionModel and a causal LM first, then place them into a LlavaForConditionalGeneration
skeleton created on the meta device, so a 7B model is never allocated twice. The connector is always fresh
(`set_connector`), as in the reference, where the projector is created after the LLM is loaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from components.models.connectors import HF_NATIVE, connector_of, is_hf_native, set_connector
from components.models.remote import localize
from components.models.spec import AUTO, ModelSpec, RandomLLM, VisionConfig
from components.models.tokenizer import image_token_id

# LLaVA's feature_select names → transformers' vision_feature_select_strategy.
SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}


@functools.cache
def _checkpoint_vision_config(name_or_path: str) -> CLIPVisionConfig:
    try:
        # Also accepts a full CLIPModel checkpoint (e.g. openai/clip-vit-large-patch14-336): takes its vision part.
        return CLIPVisionConfig.from_pretrained(localize(name_or_path))
    except (OSError, ValueError) as e:
        raise ValueError(f"model.vision.name_or_path={name_or_path!r}: cannot read a CLIP config: {e}") from None


def vision_config(v: VisionConfig, checkpoint: CLIPVisionConfig | None = None) -> CLIPVisionConfig:
    """The vision tower's config, with the resolution actually fed to it. `checkpoint`: the named checkpoint's
    own config when the caller already has it (sizing without weights); else it is read from the checkpoint."""
    if v.image_size == AUTO:
        raise ValueError("model.vision.image_size is 'auto': the sweep must resolve it to a size before build")
    if v.random_init is not None:
        r = v.random_init
        base = CLIPVisionConfig(
            image_size=r.image_size,
            patch_size=r.patch_size,
            hidden_size=r.hidden_size,
            num_hidden_layers=r.num_layers,
            num_attention_heads=r.num_heads,
            intermediate_size=r.intermediate_size,
        )
    else:
        base = CLIPVisionConfig.from_dict((checkpoint or _checkpoint_vision_config(v.name_or_path)).to_dict())
    if v.image_size is not None:
        base.image_size = v.image_size
    if base.image_size % base.patch_size:
        raise ValueError(
            f"model.vision: image_size {base.image_size} is not a multiple of the patch size {base.patch_size}"
        )
    layers = base.num_hidden_layers
    if not -(layers + 1) <= v.feature_layer <= layers:
        raise ValueError(
            f"model.vision.feature_layer={v.feature_layer}: the tower has {layers} layers, so hidden states "
            f"{-(layers + 1)}..{layers} exist"
        )
    return base


def vision_image_size(vision: VisionConfig) -> int:
    """Resolution (pixels per side) fed to the vision tower: the override, else the checkpoint's/random_init's."""
    return int(vision_config(vision).image_size)


def num_image_tokens(vision: VisionConfig, resolved: CLIPVisionConfig | None = None) -> int:
    """Image positions per image in the LLM sequence: (image_size / patch)², plus one with cls_patch.
    `resolved`: the tower's `vision_config`, when the caller has it."""
    vc = resolved or vision_config(vision)
    n = (vc.image_size // vc.patch_size) ** 2
    return n + 1 if vision.feature_select == "cls_patch" else n


def model_image_settings(model: LlavaForConditionalGeneration) -> tuple[int, int]:
    """(image size fed to the tower, image positions per image in the LLM sequence) of a built or saved model,
    from its config: `num_image_tokens` for a model at hand."""
    vc = model.config.vision_config
    size, patch = int(vc.image_size), int(vc.patch_size)
    n = (size // patch) ** 2
    if model.config.vision_feature_select_strategy == "full":  # CLS kept
        n += 1
    return size, n


def _resize_positions(tower: CLIPVisionModel, vc: CLIPVisionConfig) -> CLIPVisionModel:
    """A copy of `tower` for resolution vc.image_size, its position grid resized bicubically (CLS kept)."""
    state = tower.state_dict()
    # transformers 5.2x flattened CLIPVisionModel (no `vision_model.` level); find the key either way.
    key = next(k for k in state if k.endswith("embeddings.position_embedding.weight"))
    pos = state[key]  # (1 + g², D)
    old_grid = int(round((pos.shape[0] - 1) ** 0.5))
    new_grid = vc.image_size // vc.patch_size
    grid = pos[1:].reshape(old_grid, old_grid, -1).permute(2, 0, 1).unsqueeze(0).float()  # (1, D, g, g)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.squeeze(0).permute(1, 2, 0).reshape(new_grid * new_grid, -1).to(pos.dtype)
    state[key] = torch.cat([pos[:1], grid])
    resized = CLIPVisionModel(vc).to(pos.dtype)
    resized.load_state_dict(state)
    return resized


def _vision_tower(vision: VisionConfig, vc: CLIPVisionConfig, dtype: torch.dtype) -> CLIPVisionModel:
    if vision.random_init is not None:
        return CLIPVisionModel(vc)
    name = vision.name_or_path
    try:
        tower = CLIPVisionModel.from_pretrained(localize(name), dtype=dtype)
    except (OSError, ValueError) as e:
        raise ValueError(f"model.vision.name_or_path={name!r}: cannot load a CLIP vision model: {e}") from None
    if tower.config.image_size != vc.image_size:
        tower = _resize_positions(tower, vc)
    return tower


def random_llm_config(r: RandomLLM, vocab_size: int, *, bos: int | None = None, eos: int | None = None,
                      pad: int | None = None) -> LlamaConfig:
    """The Llama config of a `random_init` LLM over a tokenizer of `vocab_size` entries."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=r.hidden_size,
        num_hidden_layers=r.num_layers,
        num_attention_heads=r.num_heads,
        num_key_value_heads=r.num_kv_heads or r.num_heads,
        intermediate_size=r.intermediate_size,
        max_position_embeddings=r.max_position_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def llava_config(cfg: ModelSpec, vision: CLIPVisionConfig, text: PretrainedConfig, image_token_index: int
                 ) -> LlavaConfig:
    """The LlavaConfig of the skeleton `build_model` fills (and sizing builds on the meta device)."""
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_index,
        image_seq_length=num_image_tokens(cfg.vision, vision),
        vision_feature_layer=cfg.vision.feature_layer,
        vision_feature_select_strategy=SELECT_STRATEGY[cfg.vision.feature_select],
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
    )


def _language_model(cfg: ModelSpec, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> PreTrainedModel:
    if cfg.llm.random_init is not None:
        return LlamaForCausalLM(random_llm_config(cfg.llm.random_init, len(tokenizer), bos=tokenizer.bos_token_id,
                                                  eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id))
    name = cfg.llm.name_or_path
    try:
        return AutoModelForCausalLM.from_pretrained(localize(name), dtype=dtype)
    except (OSError, ValueError) as e:
        raise ValueError(f"model.llm.name_or_path={name!r}: cannot load a causal LM: {e}") from None


def build_model(
    cfg: ModelSpec, tokenizer: PreTrainedTokenizerBase, *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> LlavaForConditionalGeneration:
    """A LlavaForConditionalGeneration per `cfg`, in eval mode, with a freshly initialised connector.

    Random parts (towers, connector, new embedding rows) come from `seed`; the global RNG is left untouched.
    `tokenizer` must have the LLaVA tokens (`add_llava_tokens`); the embeddings are grown to len(tokenizer).
    """
    if cfg.connector == AUTO:
        raise ValueError("model.connector is 'auto': the sweep must resolve it to a concrete spec before build")
    vc = vision_config(cfg.vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = _vision_tower(cfg.vision, vc, dtype)
        llm = _language_model(cfg, tokenizer, dtype)
        lm_head = llm.get_output_embeddings()
        if not isinstance(lm_head, nn.Linear):
            raise ValueError(f"model.llm: {type(llm).__name__} has no linear output head")

        llava_cfg = llava_config(cfg, tower.config, llm.config, image_token_id(tokenizer))
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(llava_cfg)
        model.model.vision_tower = tower
        model.model.language_model = llm.base_model
        model.lm_head = lm_head
        set_connector(model, cfg.connector)

        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))  # new rows: mean/covariance of the old ones

    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:  # a transformers version with new LlavaModel parts would land here
        raise RuntimeError(f"build_model: parts left uninitialised on the meta device: {left_on_meta[:5]}")
    for target in (model.config.text_config, model.generation_config):
        target.bos_token_id = tokenizer.bos_token_id
        target.eos_token_id = tokenizer.eos_token_id
        target.pad_token_id = tokenizer.pad_token_id
    return model.to(dtype).eval()


def compile_language_model(llava: LlavaForConditionalGeneration) -> None:
    """torch.compile (inductor) the LLM decoder in place: its parameters, state_dict keys and hooks stay as
    they are, so DeepSpeed, checkpoints and export see the same module. The tower and connector stay eager
    (the tower runs without autograd; the connector is small). Shapes start static and turn dynamic at the
    first recompile, as torch's default does: micro-batch lengths vary."""
    llava.model.language_model.compile()


def load_llava(path: str | Path, *, dtype: torch.dtype = torch.float32) -> LlavaForConditionalGeneration:
    """Load a saved LLaVA model, including ones whose connector is not transformers' own.

    Plain `from_pretrained` would silently give such a model a random projector; here the connector recorded
    in config.mm_projector_type is rebuilt and its weights read from the checkpoint.
    """
    local = localize(str(path))
    config = AutoConfig.from_pretrained(local)
    spec = getattr(config, "mm_projector_type", HF_NATIVE)
    if is_hf_native(spec):
        return LlavaForConditionalGeneration.from_pretrained(local, dtype=dtype)
    # The load report would list the connector keys as missing/unexpected; they are loaded just below.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = LlavaForConditionalGeneration.from_pretrained(local, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    set_connector(model, spec)
    # transformers 5 saves Llava keys in the legacy layout (`multi_modal_projector.*`, no `model.` prefix);
    # match on the slot name so either layout loads.
    slot = "multi_modal_projector."
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(local).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.startswith(slot) or key.startswith("model." + slot):
                    weights[key.split(slot, 1)[1]] = f.get_tensor(key)
    module = connector_of(model)
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{path}: the saved {spec!r} connector weights do not fit: {e}") from None
    return model
