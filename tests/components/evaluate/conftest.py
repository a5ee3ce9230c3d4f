"""A tiny random-init LLaVA saved once per session: what the evaluation tests answer with."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.models.assembly import build_model
from components.models.spec import LLMConfig, ModelConfig, RandomLLM, RandomVision, VisionConfig

TINY_LLAVA = ModelConfig(
    vision=VisionConfig(random_init=RandomVision(image_size=28, patch_size=14, hidden_size=16, num_layers=1,
                                                 num_heads=2, intermediate_size=32)),
    llm=LLMConfig(random_init=RandomLLM(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                        max_position_embeddings=1024)),
)


@pytest.fixture(scope="session")
def model_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny-llava"
    build_model(TINY_LLAVA, tokenizer, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
