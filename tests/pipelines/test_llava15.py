"""The LLaVA-1.5 DAG's own helpers (no Ray): where the sweep's dev benchmark and the evaluation read from."""

import pytest

from components.core.config import load_config
from pipelines.engine.executor import config_slice
from pipelines.llava15 import build_stages, dev_root, eval_root

INPUTS = {"synth": "/store/artifacts/synth/abc"}


def test_tiny_sweep_selects_on_the_worlds_dev_copy_not_the_eval_set():
    cfg = load_config("tiny_sweep")
    assert dev_root(cfg, INPUTS) == "/store/artifacts/synth/abc/dev"
    assert eval_root(cfg, INPUTS) == "/store/artifacts/synth/abc/eval"


def test_dev_root_defaults_to_the_evaluation_root():
    cfg = load_config("tiny_sweep", ["sweep.dev.root=null"])
    assert dev_root(cfg, INPUTS) == eval_root(cfg, INPUTS)
    assert dev_root(load_config("tiny_sweep", ["sweep.dev.root=s3://b/dev"]), INPUTS) == "s3://b/dev"


def test_dev_root_with_synth_but_no_synth_stage_names_the_key():
    cfg = load_config("tiny_sweep", ["data.synth=null"])
    with pytest.raises(ValueError, match=r"sweep.dev.root uses \{synth\}"):
        dev_root(cfg, {})


def test_the_dev_root_is_part_of_the_sweeps_fingerprint_input():
    def sweep_inputs(*overrides):
        cfg = load_config("tiny_sweep", list(overrides))
        return config_slice(cfg, next(s for s in build_stages(cfg) if s.name == "sweep").reads)

    assert sweep_inputs()["sweep.dev.root"] == "{synth}/dev"
    assert sweep_inputs("sweep.dev.root=null") != sweep_inputs()
