"""Fingerprint parts derived, not listed: a stage body's import closure and data files by content."""

import json
import os
from pathlib import Path

import pytest

from components.core import fingerprint as fp
from components.core.fingerprint import code_closure, explain, import_closure, path_digest, stage_inputs


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


def test_a_stage_body_closure_is_its_own_code_not_its_neighbours():
    from pipelines.llava15 import evaluate_body, prepare_body, pretrain_body

    def rel(body):
        return {str(p.relative_to(fp.REPO_ROOT)) for p in code_closure(body)}

    train, prepare = rel(pretrain_body), rel(prepare_body)
    # train/data.py imports the pixel code: training depends on it, though it lives in prepare/.
    assert {"components/train/stage.py", "components/train/data.py", "components/prepare/pixels.py"} <= train
    assert "components/evaluate/stage.py" not in train and "pipelines/engine/executor.py" not in train
    assert "components/prepare/stage.py" in prepare and "components/train/stage.py" not in prepare
    import functools

    evaluate = rel(functools.partial(evaluate_body, bench="gqa"))
    assert "components/evaluate/stage.py" in evaluate and "components/train/stage.py" not in evaluate


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
    ("env", {"judge": "not configured"}, {"judge.model": "m"}, "judge changed ('not configured' → '<unset>')"),
])
def test_explain_names_changed_files_and_settings(part, old, new, reason):
    a = stage_inputs("s", {}, {}, "c", **{part: old})
    b = stage_inputs("s", {}, {}, "c", **{part: new})
    assert reason in explain(a, b) and fp.fingerprint(a) != fp.fingerprint(b)
