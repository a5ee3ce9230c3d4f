"""The executor on a small DAG of real file-writing stages (no Ray needed)."""

import json
from pathlib import Path

import pytest

from components.core.config import load_config
from components.core.fingerprint import explain, fingerprint, stage_inputs
from pipelines.executor import PipelineError, Stage, execute, make_plan

CALLS: list[str] = []


def body(name, fail=False):
    def run(ctx):
        CALLS.append(name)
        if fail:
            raise RuntimeError(f"{name} broke")
        Path(ctx.out).mkdir(parents=True, exist_ok=True)
        upstream = {k: json.loads((Path(v) / "value.json").read_text()) for k, v in ctx.inputs.items()}
        (Path(ctx.out) / "value.json").write_text(json.dumps({"stage": name, "up": upstream}))
        return {"n": len(upstream)}
    return run


def dag(fail=()):
    return [
        Stage("a", (), lambda c: {"lr": c.pretrain.optim.lr}, ("components/core",), body("a", "a" in fail)),
        Stage("b", ("a",), lambda c: {"lr": c.finetune.optim.lr}, ("components/core",), body("b", "b" in fail)),
        Stage("e1", ("b",), lambda c: {"k": 1}, ("components/core",), body("e1"), group="e"),
        Stage("e2", ("b",), lambda c: {"k": 2}, ("components/core",), body("e2"), group="e"),
    ]


def run(cfg, root, **kw):
    CALLS.clear()
    plan = make_plan(cfg, dag(kw.pop("fail", ())), str(root), **kw)
    return plan, execute(cfg, plan, str(root), None, concurrency=2)


def test_cache_hits_and_reasons(tmp_path):
    cfg = load_config("tiny")
    _, results = run(cfg, tmp_path)
    assert sorted(CALLS) == ["a", "b", "e1", "e2"] and all(r["status"] == "ran" for r in results.values())
    _, results = run(cfg, tmp_path)
    assert CALLS == [] and all(r["status"] == "cached" for r in results.values())
    cfg2 = load_config("tiny", ["finetune.optim.lr=1e-5"])
    plan, results = run(cfg2, tmp_path)
    assert sorted(CALLS) == ["b", "e1", "e2"]
    why = {p.stage.name: p.why for p in plan}
    assert why["a"] == [f"output {plan[0].fingerprint} exists"]
    assert why["b"] == ["lr changed (0.002 → 1e-05)"]
    assert why["e1"] == ["upstream b changed"]


def test_force_and_from(tmp_path):
    cfg = load_config("tiny")
    run(cfg, tmp_path)
    _, results = run(cfg, tmp_path, force=["b"])
    assert sorted(CALLS) == ["b", "e1", "e2"] and results["a"]["status"] == "cached"
    _, results = run(cfg, tmp_path, only=["e"])
    assert CALLS == [] and results["a"]["status"] == "skipped"


def test_only_without_upstream_fails_clearly(tmp_path):
    with pytest.raises(PipelineError) as e:
        run(load_config("tiny"), tmp_path, only=["e1"])
    assert "stage e1 needs the output of b" in str(e.value) and "--from b" in str(e.value)
    with pytest.raises(PipelineError, match="unknown stage 'nope'; stages are: a, b, e, e1, e2"):
        run(load_config("tiny"), tmp_path, only=["nope"])


def test_failed_stage_commits_nothing_and_reruns(tmp_path):
    cfg = load_config("tiny")
    _, results = run(cfg, tmp_path, fail=("b",))
    assert results["b"]["status"] == "failed" and "b broke" in results["b"]["error"]
    assert results["e1"]["status"] == "skipped"
    assert not list(tmp_path.glob("artifacts/b/*/manifest.json"))
    _, results = run(cfg, tmp_path)
    assert sorted(CALLS) == ["b", "e1", "e2"] and results["a"]["status"] == "cached"


def test_fingerprint_covers_config_upstream_and_code():
    base = stage_inputs("s", {"x": 1}, {"up": "f1"}, "c1")
    assert fingerprint(base) == fingerprint(stage_inputs("s", {"x": 1}, {"up": "f1"}, "c1"))
    for other in (stage_inputs("s", {"x": 2}, {"up": "f1"}, "c1"), stage_inputs("s", {"x": 1}, {"up": "f2"}, "c1"),
                  stage_inputs("s", {"x": 1}, {"up": "f1"}, "c2"), stage_inputs("t", {"x": 1}, {"up": "f1"}, "c1")):
        assert fingerprint(other) != fingerprint(base)
    assert explain(base, stage_inputs("s", {"x": 1}, {"up": "f1"}, "c2")) == ["code changed"]
