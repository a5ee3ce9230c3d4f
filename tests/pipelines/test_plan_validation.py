"""A config a stage would fail on hours later fails `plan` instead, naming the key."""

import json

import pytest

from components.core.config import ConfigError
from components.models.spec import CONNECTOR_SPEC
from pipelines.config import load_config
from pipelines.engine.cli import main
from pipelines.llava15 import build_stages, config_problems


def test_a_benchmark_typo_fails_plan_with_one_clear_line(tmp_path, capsys):
    rc = main(["plan", "--set", f"storage={tmp_path}", "--set", "evaluate.benchmarks=[gqa,gqa2]",
               "--set", "evaluate.blank_image_check=[gqa]"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "evaluate.benchmarks: unknown benchmark 'gqa2'" in err and "Did you mean 'gqa'" in err


def test_blank_image_checks_must_be_evaluated_benchmarks():
    cfg = load_config("tiny", ["evaluate.benchmarks=[pope]", "evaluate.blank_image_check=[gqa]"])
    assert config_problems(cfg) == ["evaluate.blank_image_check: gqa not in evaluate.benchmarks"]
    with pytest.raises(ConfigError, match="blank_image_check"):
        build_stages(cfg)


def test_the_sweeps_dev_benchmark_and_repeated_benchmarks_are_checked():
    cfg = load_config("tiny_sweep", ["sweep.dev.benchmark=gqa_dev", "evaluate.benchmarks=[gqa,gqa]"])
    problems = config_problems(cfg)
    assert any(p.startswith("sweep.dev.benchmark: unknown benchmark 'gqa_dev'") for p in problems)
    assert "evaluate.benchmarks: listed more than once: gqa" in problems


def test_a_missing_deepspeed_file_is_a_plan_error(tmp_path):
    cfg = load_config("tiny")
    broken = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(
        update={"deepspeed": str(tmp_path / "gone.json")})})
    assert [p.split(":")[0] for p in config_problems(broken)] == ["finetune.deepspeed"]
    assert config_problems(cfg) == []


def test_connector_names_are_those_the_registry_builds():
    from components.models.connectors import build_connector

    for spec in ("linear", "identity", "mlp1x_gelu", "mlp2x_gelu", "mlp4x_gelu"):
        assert CONNECTOR_SPEC.match(spec)
        build_connector(spec, 8, 8)
    for spec in ("mlp0x_gelu", "mlp2x_gelo", "Linear", "mlp"):
        assert not CONNECTOR_SPEC.match(spec)
        with pytest.raises(ValueError):
            build_connector(spec, 8, 8)
    with pytest.raises(ConfigError, match="model.connector: 'mlp2x_gelo' is not a connector"):
        load_config("tiny", ["model.connector=mlp2x_gelo"])


def test_missing_data_fails_plan_and_run_before_anything_starts(tmp_path, monkeypatch, capsys):
    """The paper config in an empty folder: its data is not there. Every stage that would read a missing
    file or folder is named with its key and path, and `run` stops before Ray starts (no storage root made)."""
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "llava15_7b"]) == 2
    err = capsys.readouterr().err
    pretrain = tmp_path / "playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    assert f"prepare: datasets.pretrain.sources.0.annotations = {pretrain} does not exist" in err
    assert f"evaluate.gqa: folder = {tmp_path / 'playground/data/eval/gqa'} does not exist" in err
    assert "--only" not in err  # every stage depends on prepare: nothing to run without it
    assert main(["run", "llava15_7b"]) == 2
    assert "inputs missing" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_missing_eval_root_names_the_stages_that_can_still_run(tmp_path, capsys):
    sets = ["--set", f"storage={tmp_path / 'runs'}", "--set", f"evaluate.root={tmp_path / 'eval'}",
            "--set", "evaluate.benchmarks=[gqa,pope]", "--set", "evaluate.blank_image_check=[]"]
    assert main(["plan", *sets]) == 2
    err = capsys.readouterr().err
    assert f"evaluate.pope: folder = {tmp_path / 'eval' / 'pope'} does not exist" in err
    assert "(--only synth --only prepare --only pretrain --only finetune)" in err
    assert main(["run", *sets, "--only", "synth", "--only", "prepare", "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["missing_inputs"] == [] and planned["stages"]["evaluate.pope"]["action"] == "skip"
    (tmp_path / "eval" / "gqa").mkdir(parents=True)
    (tmp_path / "eval" / "pope").mkdir()
    assert main(["plan", *sets]) == 0


def test_a_sweep_has_nothing_to_choose_for_a_given_model():
    cfg = load_config("tiny_sweep", ["evaluate.model=llava-hf/llava-1.5-7b-hf"])
    assert [p.split(":")[0] for p in config_problems(cfg)] == ["sweep.enabled"]
