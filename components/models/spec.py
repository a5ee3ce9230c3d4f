"""The `model:` section of a config: the vision tower, the LLM, the connector (what `build_model` builds) and
the tokenizer (what `prepare` tokenizes with). Training gets the `ModelSpec` part only: the tokenizer reaches
it through the prepared data, so a tokenizer setting reruns prepare and, through its output, what follows.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.core.config import Strict
from components.core.fields import ModelPath

AUTO = "auto"  # a value the sweep chooses (model.connector, model.vision.image_size)
CONNECTOR_SPEC = re.compile(r"^(linear|identity|mlp[1-9]\d*x_gelu)$")


class RandomVision(Strict):
    """A randomly initialised CLIP vision tower (the embedded default; real runs name a checkpoint)."""

    image_size: int = Field(56, gt=0)
    patch_size: int = Field(14, gt=0)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128


class VisionConfig(Strict):
    name_or_path: ModelPath | None = None  # HF name, local path or s3:// path of a CLIPVisionModel checkpoint
    random_init: RandomVision | None = None
    # Resolution fed to the tower; defaults to the checkpoint's own. `auto`: the sweep's best resolution
    # (its image_size, and its tower when the sweep entry names one).
    image_size: int | Literal["auto"] | None = None
    feature_layer: int = -2  # hidden state taken from the tower (LLaVA-1.5: penultimate)
    feature_select: Literal["patch", "cls_patch"] = "patch"  # patch drops CLS (LLaVA-1.5)

    @model_validator(mode="after")
    def _one_source(self) -> VisionConfig:
        if (self.name_or_path is None) == (self.random_init is None):
            raise ValueError("set exactly one of name_or_path or random_init")
        return self


class RandomLLM(Strict):
    """A randomly initialised Llama-architecture LLM."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 256
    max_position_embeddings: int = 2048


class LLMConfig(Strict):
    name_or_path: ModelPath | None = None  # e.g. lmsys/vicuna-7b-v1.5
    random_init: RandomLLM | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LLMConfig:
        if (self.name_or_path is None) == (self.random_init is None):
            raise ValueError("set exactly one of name_or_path or random_init")
        return self


class TokenizerConfig(Strict):
    name_or_path: ModelPath | None = None  # None: train a Llama-style SentencePiece tokenizer on the corpus
    vocab_size: int = 512  # only for a locally trained tokenizer


class ModelSpec(Strict):
    """What `build_model` builds: tower, LLM and connector."""

    vision: VisionConfig
    llm: LLMConfig
    connector: str = "mlp2x_gelu"  # linear | mlp{N}x_gelu | identity | auto (from the sweep)

    @field_validator("connector")
    @classmethod
    def _connector(cls, value: str) -> str:
        if value != AUTO and not CONNECTOR_SPEC.match(value):
            raise ValueError(f"{value!r} is not a connector (linear, mlp{{N}}x_gelu, identity, or auto)")
        return value


class ModelConfig(ModelSpec):
    """The config's `model:` section: the model, plus the tokenizer prepare builds."""

    tokenizer: TokenizerConfig = TokenizerConfig()

    def spec(self) -> ModelSpec:
        """The model alone (what training reads), without the tokenizer (what prepare reads)."""
        return ModelSpec(vision=self.vision, llm=self.llm, connector=self.connector)
