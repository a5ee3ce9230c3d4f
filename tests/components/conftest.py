"""Tiny model configs and batches for the model and training tests (the session `tokenizer` fixture is in
tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from components.models.spec import LLMConfig, ModelConfig, RandomLLM, RandomVision, VisionConfig
from components.models.tokenizer import image_token_id


def _tiny_config(connector: str = "mlp2x_gelu", llm_hidden: int = 32, **vision: object) -> ModelConfig:
    """56 px / patch 14 → 16 image tokens; widths small enough for a whole test file in seconds."""
    tower = RandomVision(image_size=56, patch_size=14, hidden_size=32, num_layers=2, num_heads=2,
                         intermediate_size=64)
    llm = RandomLLM(hidden_size=llm_hidden, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=128)
    return ModelConfig(vision=VisionConfig(random_init=tower, **vision), llm=LLMConfig(random_init=llm),
                       connector=connector)


def _batch(tokenizer, n_image_tokens: int, image_size: int = 56, size: int = 2) -> dict[str, torch.Tensor]:
    """BOS, the image positions, a few text ids; labels mask the image part as training does."""
    text = tokenizer("what colour is the shape", add_special_tokens=False).input_ids
    ids = [tokenizer.bos_token_id] + [image_token_id(tokenizer)] * n_image_tokens + text
    input_ids = torch.tensor([ids] * size)
    labels = input_ids.clone()
    labels[:, : 1 + n_image_tokens] = -100
    gen = torch.Generator().manual_seed(0)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "pixel_values": torch.randn(size, 3, image_size, image_size, generator=gen)}


@pytest.fixture
def tiny_config():
    """Factory: tiny_config(connector=..., llm_hidden=..., **VisionConfig overrides) -> ModelConfig."""
    return _tiny_config


@pytest.fixture
def make_batch():
    """Factory: make_batch(tokenizer, n_image_tokens, image_size=56, size=2) -> model inputs with labels."""
    return _batch
