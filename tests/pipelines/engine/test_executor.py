"""The executor on a small DAG of real file-writing stages (no Ray needed)."""

import json
import os
from pathlib import Path

import pytest

from components.core.fingerprint import explain, fingerprint, stage_inputs
from components.core.stage_run import StageRun
from pipelines.config import load_config
from pipelines.engine.executor import MANIFEST, PipelineError, Stage, execute, make_plan

CALLS: list[str] = []


def body(name, fail=False):
    def stage_body(*, lr: float, inputs: dict[str, str], run: StageRun) -> dict:
        CALLS.append(name)
        if fail:
            raise RuntimeError(f"{name} broke")
        Path(run.out).mkdir(parents=True, exist_ok=True)
        upstream = {k: json.loads((Path(v) / "value.json").read_text()) for k, v in inputs.items()}
        (Path(run.out) / "value.json").write_text(json.dumps({"stage": name, "up": upstream, "lr": lr}))
        return {"n": len(upstream)}
    return stage_body


def dag(cfg, fail=()):
    def args(lr):
        return lambda up: {"lr": lr, "inputs": dict(up)}
    return [
        Stage("a", (), body("a", "a" in fail), args(cfg.pretrain.optim.lr)),
        Stage("b", ("a",), body("b", "b" in fail), args(cfg.finetune.optim.lr)),
        Stage("e1", ("b",), body("e1"), args(0.0), group="e", concurrency=2),
        Stage("e2", ("b",), body("e2"), args(0.0), group="e", concurrency=2),
    ]


def run(cfg, root, **kw):
    CALLS.clear()
    plan = make_plan(dag(cfg, kw.pop("fail", ())), str(root), **kw)
    return plan, execute(plan, str(root), None)


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
    assert not list(tmp_path.glob(f"artifacts/b/*/{MANIFEST}"))
    _, results = run(cfg, tmp_path)
    assert sorted(CALLS) == ["b", "e1", "e2"] and results["a"]["status"] == "cached"


def test_fingerprint_covers_config_upstream_and_code():
    base = stage_inputs("s", {"x": 1}, {"up": "f1"}, "c1")
    assert fingerprint(base) == fingerprint(stage_inputs("s", {"x": 1}, {"up": "f1"}, "c1"))
    for other in (stage_inputs("s", {"x": 2}, {"up": "f1"}, "c1"), stage_inputs("s", {"x": 1}, {"up": "f2"}, "c1"),
                  stage_inputs("s", {"x": 1}, {"up": "f1"}, "c2"), stage_inputs("t", {"x": 1}, {"up": "f1"}, "c1")):
        assert fingerprint(other) != fingerprint(base)
    assert explain(base, stage_inputs("s", {"x": 1}, {"up": "f1"}, "c2")) == ["code changed"]


def attempt_dag(seen, fail_once=None):
    def stage_body(*, lr: float, run: StageRun) -> dict:
        seen.append((run.attempt, run.out, sorted(p.name for p in Path(run.out).iterdir())))
        (Path(run.out) / "partial.txt").write_text(run.attempt)
        if fail_once is not None and not fail_once:
            fail_once.append(True)
            raise RuntimeError("interrupted")
        (Path(run.out) / "value.json").write_text(json.dumps({"attempt": run.attempt}))
        return {}
    return [Stage("a", (), stage_body, lambda up: {"lr": 0.002})]


def run_dag(stages, cfg, root, **kw):
    plan = make_plan(stages, str(root), **kw)
    return plan, execute(plan, str(root), None)


def test_force_runs_a_fresh_attempt_and_replaces_the_output(tmp_path):
    cfg, seen = load_config("tiny"), []
    plan, results = run_dag(attempt_dag(seen), cfg, tmp_path)
    _, again = run_dag(attempt_dag(seen), cfg, tmp_path, force=["a"])
    assert results["a"]["status"] == again["a"]["status"] == "ran" and len(seen) == 2
    assert seen[0][0] != seen[1][0] and seen[1][2] == []  # a fresh, empty attempt folder
    out = Path(plan[0].out)
    assert json.loads((out / "value.json").read_text())["attempt"] == seen[1][0]
    assert not list(out.parent.glob("*.lease")) and not list(out.parent.glob("*.attempt.json"))
    assert not list((out.parent / ".attempts").iterdir())  # committed by rename; the old output deleted


def test_an_interrupted_attempt_is_resumed_and_force_starts_afresh(tmp_path):
    cfg, seen, failed = load_config("tiny"), [], []
    _, results = run_dag(attempt_dag(seen, failed), cfg, tmp_path)
    assert results["a"]["status"] == "failed"
    _, results = run_dag(attempt_dag(seen), cfg, tmp_path)
    assert results["a"]["status"] == "ran"
    # The same attempt (its Ray Train run resumes), in a new, clean folder: no half-written file is taken up,
    # and a stalled earlier holder still writing cannot write into it.
    assert seen[1][0] == seen[0][0] and seen[1][1] != seen[0][1] and seen[1][2] == []
    assert not os.path.exists(seen[0][1])  # the interrupted attempt's folder is gone
    failed.clear()
    run_dag(attempt_dag(seen, failed), cfg, tmp_path, force=["a"])
    _, results = run_dag(attempt_dag(seen), cfg, tmp_path, force=["a"])
    assert results["a"]["status"] == "ran" and seen[3][0] != seen[2][0] and seen[3][2] == []


def test_a_second_run_waits_for_the_first_and_takes_its_output(tmp_path, monkeypatch):
    """Run 1's stage body starts run 2 and lets it finish its work only once run 2 found the lease held."""
    import threading

    from components.core.lease import Lease
    from pipelines.engine import attempts

    monkeypatch.setattr(attempts, "LEASE_POLL_S", 0.01)
    refused = threading.Event()
    real = Lease.try_acquire

    def try_acquire(self, attempt):
        got, holder = real(self, attempt)
        if not got:
            refused.set()
        return got, holder

    monkeypatch.setattr(Lease, "try_acquire", try_acquire)
    cfg, calls, second = load_config("tiny"), [], {}

    threads = []

    def stage_body(*, run: StageRun) -> dict:
        calls.append(run.attempt)
        if len(calls) == 1:
            thread = threading.Thread(target=lambda: second.update(run_dag(stages, cfg, tmp_path)[1]))
            thread.start()
            assert refused.wait(60)
            threads.append(thread)
        Path(run.out, "value.json").write_text("{}")
        return {"n": 1}

    stages = [Stage("a", (), stage_body, lambda up: {})]
    _, first = run_dag(stages, cfg, tmp_path)
    threads[0].join(60)
    assert len(calls) == 1 and first["a"]["status"] == "ran"
    assert second["a"]["status"] == "cached" and second["a"]["metrics"] == {"n": 1}


def test_force_synth_reruns_the_world(tmp_path):
    """The world's own manifest.json and the executor's manifest live side by side."""
    from pipelines.llava15 import build_stages

    cfg = load_config("tiny", ["data.synth.size=micro"])
    for force in ([], ["synth"]):
        plan = make_plan(build_stages(cfg), str(tmp_path), only=["synth"], force=force)
        results = execute(plan, str(tmp_path), None)
        assert results["synth"]["status"] == "ran", results["synth"].get("error")
    out = Path(plan[0].out)
    assert (out / "manifest.json").is_file() and (out / MANIFEST).is_file()


def test_a_stage_is_called_with_its_arguments_and_fingerprinted_on_them(tmp_path):
    """What `args` builds is what the stage gets (upstream paths as plain strings) and what its fingerprint
    covers: an upstream path by the upstream's name, never by where the storage root is."""
    seen = {}

    def produce(*, run: StageRun) -> dict:
        Path(run.out).mkdir(parents=True, exist_ok=True)
        return {}

    def consume(*, data: str, n: int, run: StageRun) -> dict:
        seen.update(data=data, type=type(data), n=n)
        return {}

    stages = [Stage("a", (), produce, lambda up: {}),
              Stage("b", ("a",), consume, lambda up: {"data": up["a"].join("x.json"), "n": 3})]
    plan = make_plan(stages, str(tmp_path / "one"))
    results = execute(plan, str(tmp_path / "one"))
    assert results["b"]["status"] == "ran"
    assert seen == {"data": str(tmp_path / "one" / "artifacts" / "a" / plan[0].fingerprint / "x.json"),
                    "type": str, "n": 3}
    assert plan[1].inputs["args"] == {"data": "<a/x.json>", "n": 3}
    moved = make_plan(stages, str(tmp_path / "elsewhere"))
    assert [p.fingerprint for p in moved] == [p.fingerprint for p in plan]
