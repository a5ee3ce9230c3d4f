"""Local paths in a config are resolved once, against the directory the command was typed in."""

import os
from pathlib import Path

import pytest

from components.core.config import CONFIG_DIR, ConfigError, deepspeed_config_path, load_config, resolve_path
from components.core.paths import absolute


def test_relative_paths_become_absolute_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    cfg = load_config("tiny", [
        "storage=./runs/{name}", "evaluate.root=evalsets", "sweep.dev.root=../dev",
        "model.tokenizer.name_or_path=./ckpt", "tracking.tracking_uri=sqlite:///mlflow.db",
        "pretrain.deepspeed=deepspeed/zero3.json", "evaluate.model=ckpt",
    ])
    assert cfg.storage == f"{tmp_path}/runs/{{name}}"
    assert cfg.evaluate.root == f"{tmp_path}/evalsets"
    assert cfg.sweep.dev.root == str(tmp_path.parent / "dev")
    assert cfg.model.tokenizer.name_or_path == cfg.evaluate.model == f"{tmp_path}/ckpt"
    assert cfg.tracking.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    # Not a local file: the packaged one, by the same lookup as config names, kept as its name (each node
    # finds it in its own copy of the code) and found here at use.
    assert cfg.pretrain.deepspeed == "deepspeed/zero3.json"
    assert deepspeed_config_path(cfg.pretrain) == (CONFIG_DIR / "deepspeed" / "zero3.json").resolve()
    # {synth} paths are filled from the synth stage's (absolute) output; URLs and Hub names stay.
    assert cfg.data.finetune[0].annotations == "{synth}/finetune/mix.json"
    remote = load_config("tiny", ["storage=s3://bucket/p", "model.llm.random_init=null",
                                  "model.llm.name_or_path=lmsys/vicuna-7b-v1.5", "evaluate.model=llava-hf/x"])
    assert remote.storage == "s3://bucket/p"
    assert remote.model.llm.name_or_path == "lmsys/vicuna-7b-v1.5" and remote.evaluate.model == "llava-hf/x"


def test_a_local_deepspeed_file_wins_and_a_missing_one_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deepspeed").mkdir()
    (tmp_path / "deepspeed" / "zero2.json").write_text("{}")
    assert load_config("tiny").pretrain.deepspeed == str(tmp_path / "deepspeed" / "zero2.json")
    with pytest.raises(ConfigError, match=r"finetune.deepspeed: DeepSpeed config 'nope.json' not found"):
        load_config("tiny", ["finetune.deepspeed=nope.json"])


def test_spelling_does_not_change_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = load_config("tiny", ["storage=./runs/tiny"])
    b = load_config("tiny", [f"storage={tmp_path}/runs/../runs/tiny"])
    c = load_config("tiny", ["storage=runs/tiny"], cwd=tmp_path)
    assert a.model_dump() == b.model_dump() == c.model_dump()


def test_packaged_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spelling in ("tiny_sweep", "tiny_sweep.yaml", "configs/tiny_sweep.yaml"):
        assert resolve_path(spelling) == CONFIG_DIR / "tiny_sweep.yaml"
    # A file of that name here wins: paths first, as typed.
    (tmp_path / "configs").mkdir()
    mine = tmp_path / "configs" / "tiny_sweep.yaml"
    mine.write_text("extends: tiny.yaml\nname: mine\n")
    assert resolve_path("configs/tiny_sweep.yaml") == mine
    assert load_config("configs/tiny_sweep.yaml").name == "mine"


def test_absolute_keeps_urls_and_placeholders():
    cwd = Path("/work/x")
    assert absolute("s3://b/k", cwd) == "s3://b/k"
    assert absolute("{synth}/eval", cwd) == "{synth}/eval"
    assert absolute("~/d", cwd) == os.path.expanduser("~/d")
    assert absolute("a/./b/../c", cwd) == "/work/x/a/c"
