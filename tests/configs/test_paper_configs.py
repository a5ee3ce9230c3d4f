"""The paper variants extend llava15_7b.yaml with only their differences and still resolve to the recipe they
spelled out in full before (before_extends/: the files as they were, every key written out)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.core.paths import CONFIG_DIR
from pipelines.config import load_config

BEFORE = Path(__file__).parent / "before_extends"


@pytest.mark.parametrize("name", ["llava15_7b", "llava15_13b", "llava15_7b_lora"])
def test_resolves_to_the_recipe_written_out_in_full(name: str, tmp_path: Path) -> None:
    # Both loaded from one working directory, so their relative storage and data paths resolve alike.
    now = load_config(name, cwd=tmp_path).model_dump()
    before = load_config(BEFORE / f"{name}.yaml", cwd=tmp_path).model_dump()
    assert now == before


@pytest.mark.parametrize("name", ["llava15_13b", "llava15_7b_lora"])
def test_variants_extend_the_7b_recipe(name: str) -> None:
    text = (CONFIG_DIR / f"{name}.yaml").read_text()
    assert yaml.safe_load(text)["extends"] == "llava15_7b.yaml"
    # The opening comment (command, hardware, time, expected scores) stays with the variant.
    assert text.splitlines()[:5] == (BEFORE / f"{name}.yaml").read_text().splitlines()[:5]
    assert len(text.splitlines()) < 20


def test_the_released_model_config_evaluates_it_without_training(tmp_path: Path) -> None:
    from pipelines.llava15 import build_stages

    cfg = load_config("llava15_7b_eval", cwd=tmp_path)
    paper = load_config("llava15_7b", cwd=tmp_path)
    assert cfg.evaluate.model == "llava-hf/llava-1.5-7b-hf"
    assert cfg.evaluate.model_dump(exclude={"model"}) == paper.evaluate.model_dump(exclude={"model"})
    assert [s.name for s in build_stages(cfg)] == [f"evaluate.{b}" for b in paper.evaluate.benchmarks]
