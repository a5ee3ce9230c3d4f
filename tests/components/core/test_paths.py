"""Local paths in a config are resolved once, against the directory the command was typed in."""

import os
from pathlib import Path

import pytest

from components.core.config import ConfigError, Strict, resolve_path, resolve_paths
from components.core.fields import DataFile, DeepSpeedFile, ModelPath, StoragePath, TrackingURI
from components.core.paths import CONFIG_DIR, PathError, absolute, resolve_local_paths
from components.train.spec import deepspeed_config_path
from pipelines.config import load_config


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


def test_data_sources_resolve_in_every_list_entry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", [
        "data.pretrain=[{annotations: ann/a.json, image_root: imgs}, {annotations: s3://b/c.json}, "
        "{annotations: '{synth}/pretrain/captions.json', image_root: '{synth}/images'}]",
        "data.finetune=[{annotations: ./mix.json, image_root: ../shared/images}]",
    ])
    first, remote, synth = cfg.data.pretrain
    assert (first.annotations, first.image_root) == (f"{tmp_path}/ann/a.json", f"{tmp_path}/imgs")
    assert (remote.annotations, remote.image_root) == ("s3://b/c.json", None)
    assert (synth.annotations, synth.image_root) == ("{synth}/pretrain/captions.json", "{synth}/images")
    [mix] = cfg.data.finetune
    assert (mix.annotations, mix.image_root) == (f"{tmp_path}/mix.json", str(tmp_path.parent / "shared" / "images"))


def test_sweep_resolution_towers_are_model_paths(tmp_path, monkeypatch):
    """A resolution's tower is a local checkpoint (made absolute) or a Hub name (kept)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "towers" / "clip224").mkdir(parents=True)
    cfg = load_config("llava15_7b", [
        "sweep.space.resolution=[{image_size: 224, name_or_path: towers/clip224}, "
        "{image_size: 336, name_or_path: openai/clip-vit-large-patch14-336}, 448]"])
    local, hub, plain = cfg.sweep.space.resolution
    assert local.name_or_path == f"{tmp_path}/towers/clip224"
    assert hub.name_or_path == "openai/clip-vit-large-patch14-336"
    assert (plain.image_size, plain.name_or_path) == (448, None)
    # a name that is neither a path nor an existing folder here stays a Hub name
    assert load_config("llava15_7b", ["model.vision.name_or_path=towers/clip999"]).model.vision.name_or_path == (
        "towers/clip999")
    assert load_config("llava15_7b", ["model.vision.name_or_path=towers/clip224"]).model.vision.name_or_path == (
        f"{tmp_path}/towers/clip224")


class _Leaf(Strict):
    data: DataFile
    ds: DeepSpeedFile | None = None
    tower: ModelPath | None = None
    label: str = "rel/not/a/path"  # a plain string: never touched


class _Tree(Strict):
    out: StoragePath
    uri: TrackingURI | None = None
    leaves: list[_Leaf] = []
    nested: dict[str, int] = {}


def test_generic_walk_resolves_any_model_by_field_types(tmp_path):
    """resolve_local_paths knows no config: it walks any pydantic model, nested lists of sections too."""
    (tmp_path / "local.json").write_text("{}")
    (tmp_path / "ckpt").mkdir()
    tree = _Tree(out="o", uri="sqlite:///db.sqlite", leaves=[
        _Leaf(data="a.json", ds="local.json", tower="ckpt"),
        _Leaf(data="s3://b/k", ds="deepspeed/zero2.json", tower="org/model"),
    ])
    got = resolve_local_paths(tree, tmp_path, CONFIG_DIR)
    assert got.out == f"{tmp_path}/o" and got.uri == f"sqlite:///{tmp_path}/db.sqlite"
    first, second = got.leaves
    assert (first.data, first.ds, first.tower) == (f"{tmp_path}/a.json", f"{tmp_path}/local.json", f"{tmp_path}/ckpt")
    assert (second.data, second.ds, second.tower) == ("s3://b/k", "deepspeed/zero2.json", "org/model")
    assert first.label == second.label == "rel/not/a/path"
    assert tree.leaves[0].data == "a.json"  # a copy: the input is unchanged
    plain = _Tree(out="/abs/o")
    assert resolve_local_paths(plain, tmp_path, CONFIG_DIR) == plain  # already absolute: unchanged


def test_an_unresolvable_path_names_its_key_path(tmp_path):
    tree = _Tree(out="o", leaves=[_Leaf(data="a"), _Leaf(data="b", ds="nope.json")])
    with pytest.raises(PathError, match=r"^leaves\.1\.ds: DeepSpeed config 'nope.json' not found"):
        resolve_local_paths(tree, tmp_path, CONFIG_DIR)
    with pytest.raises(ConfigError, match=r"^my\.yaml: leaves\.1\.ds: DeepSpeed config 'nope.json' not found"):
        resolve_paths(tree, "my.yaml", tmp_path)  # as load_config reports it: the file, then the key path


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
