"""Vision→text connectors (LLaVA's "mm_projector") and their place inside `LlavaForConditionalGeneration`.

Specs follow the reference builder: `linear`, `mlp{N}x_gelu` (Linear(v→t), then (N−1)×[GELU, Linear(t→t)])
and `identity`. `mlp2x_gelu` is transformers' own `LlavaMultiModalProjector`, so models using it save and load
with plain transformers; the others replace it in the projector slot and need this module to load.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

HF_NATIVE = "mlp2x_gelu"
_MLP = re.compile(r"^mlp(\d+)x_gelu$")
VALID_SPECS = "linear, mlp{N}x_gelu (N >= 1, e.g. mlp2x_gelu), identity"


class SequentialConnector(nn.Sequential):
    """A connector made of Linear/GELU layers; `spec` records which one it is."""

    def __init__(self, spec: str, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.spec = spec


class IdentityConnector(nn.Identity):
    """Passes vision features through unchanged (vision width must equal text width)."""

    spec = "identity"


def is_hf_native(spec: str) -> bool:
    """Whether plain transformers can load a model with this connector (export requires it)."""
    return spec == HF_NATIVE


def _mlp_depth(spec: str) -> int | None:
    m = _MLP.match(spec)
    return int(m.group(1)) if m else None


def build_connector(spec: str, vision_dim: int, text_dim: int) -> nn.Module:
    """A freshly initialised connector mapping (…, vision_dim) features to (…, text_dim).

    Initialisation is PyTorch's default for nn.Linear, as in the reference (its projector is created outside
    the HF init path). Uses the caller's torch RNG, so seed around this call for reproducibility.
    """
    if spec == "auto":
        raise ValueError("connector 'auto' must be resolved by the sweep before the model is built")
    depth = _mlp_depth(spec)
    if spec == HF_NATIVE:
        # LlavaMultiModalProjector only reads these fields of a LlavaConfig.
        shim = SimpleNamespace(
            vision_feature_layer=-1,
            vision_config=SimpleNamespace(hidden_size=vision_dim),
            text_config=SimpleNamespace(hidden_size=text_dim),
            multimodal_projector_bias=True,
            projector_hidden_act="gelu",
        )
        return LlavaMultiModalProjector(shim)
    if spec == "linear":
        return SequentialConnector(spec, nn.Linear(vision_dim, text_dim))
    if depth is not None and depth >= 1:
        layers: list[nn.Module] = [nn.Linear(vision_dim, text_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(text_dim, text_dim)]
        return SequentialConnector(spec, *layers)
    if spec == "identity":
        if vision_dim != text_dim:
            raise ValueError(
                f"connector 'identity' needs equal widths, but the vision features are {vision_dim} wide and "
                f"the LLM hidden size is {text_dim}; pick linear or mlp{{N}}x_gelu"
            )
        return IdentityConnector()
    raise ValueError(f"unknown connector {spec!r}; valid: {VALID_SPECS}")


def unwrap_llava(model: nn.Module) -> LlavaForConditionalGeneration:
    """The LlavaForConditionalGeneration inside `model` (itself, or the base of a PEFT wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, LlavaForConditionalGeneration):
        raise TypeError(f"expected a LlavaForConditionalGeneration, got {type(base).__name__}")
    return base


def connector_of(model: nn.Module) -> nn.Module:
    """The projector module (`model.model.multi_modal_projector` in transformers 5)."""
    return unwrap_llava(model).model.multi_modal_projector


def connector_spec_of(model: nn.Module) -> str:
    """The spec string of the connector currently in the model."""
    module = connector_of(model)
    if isinstance(module, LlavaMultiModalProjector):
        return HF_NATIVE
    spec = getattr(module, "spec", None)
    if spec is None:
        raise TypeError(f"unrecognised connector module {type(module).__name__} in the projector slot")
    return spec


def set_connector(model: nn.Module, spec: str) -> nn.Module:
    """Put a fresh `spec` connector into the model's projector slot; records it as config.mm_projector_type."""
    llava = unwrap_llava(model)
    cfg = llava.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise ValueError("only a single vision_feature_layer is supported")
    ref = next(llava.model.language_model.parameters())
    module = build_connector(spec, cfg.vision_config.hidden_size, cfg.text_config.hidden_size)
    llava.model.multi_modal_projector = module.to(device=ref.device, dtype=ref.dtype)
    # Same key as the reference's config; lets loaders rebuild non-native connectors.
    cfg.mm_projector_type = spec
    return llava.model.multi_modal_projector


def connector_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Connector weights on CPU, keyed relative to the connector (e.g. `linear_1.weight`)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in connector_of(model).state_dict().items()}


def save_connector(model: nn.Module, path: str | Path) -> Path:
    """Write the connector weights as safetensors, with the spec in the file's metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(connector_state_dict(model), str(path), metadata={"connector": connector_spec_of(model)})
    return path


def load_connector(model: nn.Module, path: str | Path) -> nn.Module:
    """Load connector weights written by `save_connector`; the spec and shapes must match the model's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: connector file not found")
    with safe_open(str(path), framework="pt") as f:
        saved_spec = (f.metadata() or {}).get("connector")
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    spec = connector_spec_of(model)
    if saved_spec is not None and saved_spec != spec:
        raise ValueError(f"{path}: holds a {saved_spec!r} connector but the model's connector is {spec!r}")
    module = connector_of(model)
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [
        f"{k}: shape {tuple(weights[k].shape)} in file, {tuple(v.shape)} in model"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if problems:
        raise ValueError(f"{path}: does not fit the model's {spec!r} connector: " + "; ".join(problems))
    module.load_state_dict(weights)
    return module
