"""Fingerprint parts derived, not listed: a stage's import closure, data files by content, and a stage's
arguments walked by the types its signature declares."""

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest

from components.core import fingerprint as fp
from components.core.config import Strict
from components.core.fields import NOT_CONFIGURED, SCHEDULING, SECRET, DataFile, ModelPath, NotConfigured
from components.core.fingerprint import (
    OutputPath,
    code_closure,
    describe_args,
    explain,
    import_closure,
    materialize,
    path_digest,
    stage_inputs,
)


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_import_closure_follows_lazy_relative_and_submodule_imports_within_the_project(tmp_path):
    _write(tmp_path, "components/__init__.py", "")
    _write(tmp_path, "components/a.py", "import json\n\ndef f():\n    from .b import g\n    return g()\n")
    _write(tmp_path, "components/b.py", "import components.c\n\ndef g():\n    return 1\n")
    _write(tmp_path, "components/c.py", "from components.pkg import mod\n")
    _write(tmp_path, "components/pkg/__init__.py", "")
    _write(tmp_path, "components/pkg/mod.py", "import numpy\n")
    _write(tmp_path, "components/unused.py", "")
    _write(tmp_path, "other/x.py", "")
    found = {str(p.relative_to(tmp_path)) for p in import_closure(["components.a"], tmp_path)}
    assert found == {"components/__init__.py", "components/a.py", "components/b.py", "components/c.py",
                     "components/pkg/__init__.py", "components/pkg/mod.py"}


def test_a_stage_closure_is_its_own_code_not_its_neighbours():
    from components.evaluate.stage import run_evaluate
    from components.prepare.stage import run_prepare
    from components.train.stage import run_pretrain

    def rel(run):
        return {str(p.relative_to(fp.REPO_ROOT)) for p in code_closure(run)}

    train, prepare, evaluate = rel(run_pretrain), rel(run_prepare), rel(run_evaluate)
    # The recipe and its pixel map are imported lazily, when the stage runs: still part of what it runs.
    assert {"components/train/stage.py", "components/train/recipe.py", "components/train/pixels.py"} <= train
    assert not {f for f in train if f.startswith(("components/evaluate/", "pipelines/"))}
    assert "components/prepare/stage.py" in prepare and "components/train/stage.py" not in prepare
    assert "components/evaluate/harness.py" in evaluate and "components/train/stage.py" not in evaluate


def test_local_files_are_hashed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = tmp_path / "data" / "a.json"
    f.parent.mkdir()
    f.write_text('[{"id": 1}]')
    first = path_digest(str(f))
    os.utime(f, ns=(1, 1))  # touched, same bytes: same digest
    assert path_digest(str(f)) == first
    f.write_text('[{"id": 2}]')  # same size, other bytes
    assert path_digest(str(f)) != first
    # Hashed once per version of the file: the next plan takes the cached digest (a large file is not reread).
    cache_file = tmp_path / "cache" / "llava-pipeline" / "digests.json"
    cache = json.loads(cache_file.read_text())
    assert cache[str(f.resolve())]["digest"] == path_digest(str(f))
    cache[str(f.resolve())]["digest"] = "sha256:from-the-cache"
    cache_file.write_text(json.dumps(cache))
    assert path_digest(str(f)) == "sha256:from-the-cache"
    f.write_text('[{"id": 3}]')
    assert path_digest(str(f)) not in ("sha256:from-the-cache", first)
    folder = path_digest(str(f.parent))
    (f.parent / "b.txt").write_text("x")
    assert path_digest(str(f.parent)) != folder
    assert path_digest(str(tmp_path / "nope")) == "missing"


def test_remote_files_are_identified_by_size_and_etag(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("digests")
    fs.pipe("digests/a.json", b"one")
    first = path_digest("s3://digests/a.json")
    fs.pipe("digests/a.json", b"one")
    assert path_digest("s3://digests/a.json") == first
    fs.pipe("digests/a.json", b"two")
    assert path_digest("s3://digests/a.json") != first
    assert path_digest("s3://digests") != path_digest("s3://digests/a.json")
    assert path_digest("s3://digests/gone.json") == path_digest("s3://digests/gone/") == "missing"


@pytest.mark.parametrize("part,old,new,reason", [
    ("files", {"data.pretrain.0.annotations": "sha256:1"}, {"data.pretrain.0.annotations": "sha256:2"},
     "file data.pretrain.0.annotations changed"),
    ("args", {"judge": "not configured"}, {"judge.model": "m"}, "judge changed ('not configured' → '<unset>')"),
])
def test_explain_names_changed_files_and_settings(part, old, new, reason):
    a, b = _inputs(part, old), _inputs(part, new)
    assert reason in explain(a, b) and fp.fingerprint(a) != fp.fingerprint(b)


def _inputs(part, value):
    return stage_inputs("s", value if part == "args" else {}, {}, "c", value if part == "files" else {})


def test_an_output_of_an_older_version_is_explained_as_such():
    assert explain({"config": {"x": 1}, "upstream": {}, "code": "c"}, stage_inputs("s", {"x": 1}, {}, "c")) == [
        "the earlier output was made by an older version of the pipeline"]


# ---------------------------------------------------------------- a stage's arguments, by their types


class _Section(Strict):
    lr: float
    workers: Annotated[int, SCHEDULING] = 1
    data: DataFile | None = None
    checkpoint: ModelPath | None = None


@dataclass(frozen=True)
class _Endpoint:
    url: str
    key: Annotated[str | None, SECRET] = None
    retries: Annotated[int, SCHEDULING] = 3


class _Absent(NotConfigured):
    pass


def _stage(*, section: _Section, items: list[_Section], by_name: dict[str, DataFile], endpoint: _Endpoint | None,
           judge: object, replicas: Annotated[int, SCHEDULING], prepared: str, run: object) -> None:
    """A stage signature: what the walker reads its argument types from."""


def test_arguments_are_walked_by_the_types_the_stage_declares(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "a.json"
    data.write_text("[1]")
    weights = tmp_path / "ckpt"
    weights.mkdir()
    (weights / "w.bin").write_bytes(b"w")
    prepared = OutputPath(str(tmp_path / "store" / "artifacts" / "prepare" / "f1"), "prepare").join("shards")
    args = {"section": _Section(lr=0.1, workers=8, data=str(data), checkpoint=str(weights)),
            "items": [_Section(lr=0.2, checkpoint="lmsys/vicuna-7b-v1.5")], "by_name": {"gqa": str(data)},
            "endpoint": _Endpoint("https://h/v1?key=abc", key="sk-secret-value", retries=9),
            "judge": _Absent(), "replicas": 4, "prepared": prepared}
    d = describe_args(_stage, args)
    assert d.values == {
        "section.lr": 0.1, "section.data": str(data), "section.checkpoint": str(weights),
        "items.0.lr": 0.2, "items.0.data": None, "items.0.checkpoint": "lmsys/vicuna-7b-v1.5",
        "by_name.gqa": str(data), "endpoint.url": "https://h/v1?key=***", "judge": NOT_CONFIGURED,
        "prepared": "<prepare/shards>"}  # no workers, retries, replicas (scheduling) nor key (secret)
    # Local paths by content; a Hub name by its name only.
    assert set(d.files) == {"section.data", "section.checkpoint", "by_name.gqa"}
    assert d.files["section.data"] == path_digest(str(data))
    assert "sk-secret" not in json.dumps([d.values, d.files])
    with pytest.raises(TypeError, match="takes no argument 'extra'"):
        describe_args(_stage, {**args, "extra": 1})


def test_what_a_stage_is_called_with_holds_no_engine_types():
    up = OutputPath("/store/artifacts/synth/f", "synth")
    section = _Section(lr=0.1, data=up.join("a.json"))
    plain = materialize({"s": section, "l": [up], "d": {"k": up.join("x")}})
    assert type(plain["s"].data) is str and plain["s"].data == "/store/artifacts/synth/f/a.json"
    assert type(plain["l"][0]) is str and type(plain["d"]["k"]) is str
    assert pickle.loads(pickle.dumps(up.join("x"))).ref == "synth/x"
