"""Shared fixtures: a small Llama-style tokenizer trained once per session."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WORDS = ("red green blue yellow purple orange circle square triangle what colour color is the shape left "
         "right top bottom how many yes no there a an of in image picture describe answer question").split()


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from components.core.templates import VICUNA_SYSTEM
    from components.models.tokenizer import train_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(10)) + rng.choice(".?!") for _ in range(800)]
    texts += [VICUNA_SYSTEM, "USER: ASSISTANT:", "Answer the question using a single word or phrase."]
    return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tokenizer"))
