"""A model's exact parameter counts, from its configs alone: the LLaVA model built on the meta device.

The model is assembled as `build_model` assembles it (the same LlavaConfig, connector and LLaVA tokens), but
on `torch.device("meta")`: no weights are read or allocated, so sizing a 13B model takes a second and no
memory. Architectures come from `arch.py` (local folder, HF cache or the shipped configs).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import AutoConfig, CLIPConfig, CLIPModel, CLIPVisionConfig, LlavaForConditionalGeneration

from .arch import Arch, ArchNotFound, arch
from .assembly import llava_config, num_image_tokens, random_llm_config, vision_config
from .connectors import connector_of, set_connector
from .spec import AUTO, ModelSpec, TokenizerConfig

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
LLAVA_TOKENS_WITHOUT_PAD = 2  # add_llava_tokens: <image>, plus <pad> when the tokenizer has none


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts (elements) and the shapes memory estimates need."""

    vision: int  # the CLIP vision tower
    connector: int
    llm: int  # the language model with its embeddings and lm_head
    vocab: int  # embedding rows: len(tokenizer) with the LLaVA tokens
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_positions: int  # the tower's sequence per image: patches + CLS
    image_tokens: int  # positions one image takes in the LLM sequence
    download_bytes: int  # checkpoint files a node fetches to build the model (0 for random_init parts)
    sources: tuple[str, ...]  # where each architecture was read

    @property
    def total(self) -> int:
        return self.vision + self.connector + self.llm


def _dtype_bytes(config: dict) -> int:
    return DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "float32"), 4)


def _meta_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tokenizer_size(tok: TokenizerConfig, key: str = "model.tokenizer.name_or_path") -> int:
    """len(tokenizer) once `add_llava_tokens` ran: what the embeddings are resized to."""
    if tok.name_or_path is None:
        return tok.vocab_size + LLAVA_TOKENS_WITHOUT_PAD  # trained locally: SentencePiece has no pad piece
    a = arch(tok.name_or_path, key)
    if a.tokenizer:
        return int(a.tokenizer["vocab_size"]) + (1 if a.tokenizer.get("pad_token") else LLAVA_TOKENS_WITHOUT_PAD)
    if a.folder is None:
        raise ArchNotFound(f"{key}={tok.name_or_path!r}: {a.source} has no tokenizer to count")
    from transformers import AutoTokenizer

    from .tokenizer import add_llava_tokens

    try:
        loaded = AutoTokenizer.from_pretrained(a.folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ArchNotFound(f"{key}={tok.name_or_path!r}: cannot read its tokenizer in {a.folder}: {e}") from None
    return len(add_llava_tokens(loaded))


def _vision_checkpoint(a: Arch) -> tuple[CLIPVisionConfig, int]:
    """The tower's config and the checkpoint's download size (a full CLIPModel checkpoint ships both towers)."""
    cfg = dict(a.config)
    if cfg.get("model_type") == "clip" or "vision_config" in cfg:
        full = CLIPConfig.from_dict(cfg)
        with torch.device("meta"):
            params = _meta_params(CLIPModel(full))
        return CLIPVisionConfig.from_dict(full.vision_config.to_dict()), params * _dtype_bytes(cfg)
    vc = CLIPVisionConfig.from_dict(cfg)
    from transformers import CLIPVisionModel

    with torch.device("meta"):
        params = _meta_params(CLIPVisionModel(vc))
    return vc, params * _dtype_bytes(cfg)


def meta_model(spec: ModelSpec, tokenizer: TokenizerConfig) -> tuple[LlavaForConditionalGeneration, int, tuple]:
    """The LLaVA model of `spec` on the meta device, the bytes its checkpoints download, and the sources."""
    if spec.connector == AUTO or spec.vision.image_size == AUTO:
        raise ValueError("model: 'auto' values are the sweep's to choose; size a config with them resolved")
    vocab = tokenizer_size(tokenizer)
    download, sources = 0, []
    checkpoint = None
    if spec.vision.name_or_path is not None:
        a = arch(spec.vision.name_or_path, "model.vision.name_or_path")
        checkpoint, nbytes = _vision_checkpoint(a)
        download, sources = download + nbytes, [*sources, a.source]
    vc = vision_config(spec.vision, checkpoint)
    if spec.llm.random_init is not None:
        text = random_llm_config(spec.llm.random_init, vocab)
    else:
        a = arch(spec.llm.name_or_path or "", "model.llm.name_or_path")
        text = AutoConfig.for_model(**a.config)
        with torch.device("meta"):
            from transformers import AutoModelForCausalLM

            download += _meta_params(AutoModelForCausalLM.from_config(text)) * _dtype_bytes(a.config)
        sources.append(a.source)
    base_vocab = int(text.vocab_size)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config(spec, vc, text, image_token_index=base_vocab))
        set_connector(model, spec.connector)
        if vocab > base_vocab:  # as build_model: the LLaVA tokens grow the embeddings and lm_head
            model.resize_token_embeddings(vocab, mean_resizing=False)
    return model, download, tuple(sources)


@functools.cache
def _sizes(spec_json: str, tokenizer_json: str) -> ModelSizes:
    spec, tok = ModelSpec.model_validate_json(spec_json), TokenizerConfig.model_validate_json(tokenizer_json)
    model, download, sources = meta_model(spec, tok)
    vc, tc = model.config.vision_config, model.config.text_config
    vision, connector = _meta_params(model.model.vision_tower), _meta_params(connector_of(model))
    return ModelSizes(
        vision=vision, connector=connector, llm=_meta_params(model) - vision - connector,
        vocab=model.get_input_embeddings().num_embeddings, hidden=tc.hidden_size, layers=tc.num_hidden_layers,
        heads=tc.num_attention_heads, kv_heads=getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads,
        intermediate=tc.intermediate_size, vision_hidden=vc.hidden_size,
        vision_layers=vc.num_hidden_layers, vision_positions=(vc.image_size // vc.patch_size) ** 2 + 1,
        image_tokens=num_image_tokens(spec.vision, vc), download_bytes=download, sources=sources)


def model_sizes(spec: ModelSpec, tokenizer: TokenizerConfig) -> ModelSizes:
    """Exact parameter counts of the model `build_model` would build for `spec` with this tokenizer."""
    return _sizes(spec.model_dump_json(), tokenizer.model_dump_json())
