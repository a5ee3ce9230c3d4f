"""The LLaVA-1.5 DAG's argument builders (no Ray): where each stage reads from, and what it is given."""

import pytest

from components.core.config import ConfigError
from components.core.fingerprint import OutputPath
from pipelines.config import load_config
from pipelines.llava15 import (
    evaluate_args,
    export_args,
    finetune_args,
    prepare_args,
    prepared_vision,
    sweep_args,
)

UP = {name: OutputPath(f"/store/artifacts/{name}/abc", name) for name in ("synth", "prepare", "pretrain", "finetune")}


def test_tiny_sweep_selects_on_the_worlds_dev_copy_not_the_eval_set():
    cfg = load_config("tiny_sweep")
    dev = sweep_args(cfg, UP)["dev_folder"]
    assert dev == "/store/artifacts/synth/abc/dev/gqa" and dev.ref == "synth/dev/gqa"
    assert evaluate_args(cfg, UP, bench="gqa")["folder"].ref == "synth/eval/gqa"


def test_dev_root_defaults_to_the_evaluation_root():
    cfg = load_config("tiny_sweep", ["sweep.dev.root=null"])
    assert sweep_args(cfg, UP)["dev_folder"] == evaluate_args(cfg, UP, bench="gqa")["folder"]
    remote = load_config("tiny_sweep", ["sweep.dev.root=s3://b/dev"])
    assert sweep_args(remote, UP)["dev_folder"] == "s3://b/dev/gqa"


def test_a_synth_path_without_a_synth_stage_names_the_key():
    cfg = load_config("tiny_sweep", ["data.synth=null"])
    with pytest.raises(ConfigError, match=r"sweep.dev.root uses \{synth\}"):
        sweep_args(cfg, {k: v for k, v in UP.items() if k != "synth"})


def test_the_searched_dimensions_are_the_sweeps_own():
    """The model goes to the sweep with what it searches `auto`: `auto` or a fixed value there is one sweep."""
    auto = sweep_args(load_config("tiny_sweep"), UP)["model"]
    fixed = sweep_args(load_config("tiny_sweep", ["model.connector=linear", "model.vision.image_size=56"]), UP)
    assert auto == fixed["model"] and auto.connector == "auto" and auto.vision.image_size == "auto"


def test_prepare_cuts_rows_for_the_largest_resolution_the_sweep_may_choose():
    cfg = load_config("tiny_sweep")
    assert cfg.model.vision.image_size == "auto"
    largest = max(r.image_size for r in cfg.sweep.space.resolution)
    assert prepared_vision(cfg).image_size == largest == prepare_args(cfg, UP)["vision"].image_size
    assert prepared_vision(load_config("tiny")) == load_config("tiny").model.vision


def test_each_stage_gets_only_what_it_computes_from():
    cfg = load_config("tiny")
    prepare = prepare_args(cfg, UP)
    assert set(prepare) == {"datasets", "prepare", "tokenizer", "vision"}
    assert prepare["datasets"]["finetune"].sources[0].annotations.ref == "synth/finetune/mix.json"
    finetune = finetune_args(cfg, UP)
    assert not hasattr(finetune["model"], "tokenizer")  # training reads the tokenizer prepare wrote
    assert finetune["connector"].ref == "pretrain/connector.safetensors"
    gqa, pope = evaluate_args(cfg, UP, bench="gqa"), evaluate_args(cfg, UP, bench="pope")
    assert gqa["blank_images"] and not pope["blank_images"]  # the blank-image check is gqa's own setting
    assert gqa["judge"] is None and evaluate_args(cfg, UP, bench="mmvet")["judge"] is not None
    ups = {**UP, **{f"evaluate.{b}": OutputPath(f"/e/{b}", f"evaluate.{b}") for b in cfg.evaluate.benchmarks}}
    export = export_args(cfg, ups)
    assert set(export["evaluations"]) == set(cfg.evaluate.benchmarks) == set(export["benchmark_folders"])
    assert export["registered_name"] == export["pipeline"] == "tiny"
