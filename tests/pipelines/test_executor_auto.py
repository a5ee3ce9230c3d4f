"""`auto` in the executor: stages that wait for a sweep-like stage are fingerprinted with the values it chose.

A fake DAG (no Ray): `sweep` writes best.json naming a connector; `train` (after sweep) and `evaluate`
(downstream of train) record the config they ran with. The real resolver reads best.json.
"""

import json
from pathlib import Path

import pytest

from components.core.config import load_config
from pipelines.executor import MANIFEST, PENDING, PipelineError, Stage, execute, make_plan
from pipelines.llava15 import build_stages, resolve_from_sweep

BEST = {"connector": "linear"}
CALLS: list[tuple[str, str]] = []


def sweep_body(ctx):
    CALLS.append(("sweep", ""))
    Path(ctx.out).mkdir(parents=True, exist_ok=True)
    best = {"connector": BEST["connector"], "resolution": {"image_size": 84, "name_or_path": None}}
    (Path(ctx.out) / "best.json").write_text(json.dumps({"best": best}))
    return {"trials": 6}


def recorder(name):
    def run(ctx):
        CALLS.append((name, ctx.cfg.model.connector))
        Path(ctx.out).mkdir(parents=True, exist_ok=True)
        (Path(ctx.out) / "used.json").write_text(json.dumps({"connector": ctx.cfg.model.connector,
                                                             "image_size": ctx.cfg.model.vision.image_size}))
        return {}
    return run


def dag():
    return [
        Stage("prepare", (), (), recorder("prepare")),
        Stage("sweep", ("prepare",), ("sweep.space",), sweep_body, resolves=resolve_from_sweep),
        Stage("train", ("prepare",), ("model",), recorder("train"), after=("sweep",)),
        Stage("evaluate", ("train",), (), recorder("evaluate")),
    ]


def run(cfg, root, **kw):
    CALLS.clear()
    plan = make_plan(cfg, dag(), str(root), **kw)
    return plan, execute(cfg, plan, str(root), None)


@pytest.fixture
def cfg():
    BEST["connector"] = "linear"
    return load_config("tiny_sweep")


def test_plan_before_the_sweep_has_run_is_pending(cfg, tmp_path):
    plan = {p.stage.name: p for p in make_plan(cfg, dag(), str(tmp_path))}
    assert plan["sweep"].action == "run" and plan["sweep"].fingerprint != PENDING
    assert plan["train"].fingerprint == PENDING and plan["train"].action == "run"
    assert plan["train"].why == ["config takes values from sweep's output: fingerprint known once it has run"]
    assert plan["evaluate"].fingerprint == PENDING and plan["evaluate"].why == ["upstream train pending"]


def test_auto_is_resolved_before_the_waiting_stages_run_and_then_cached(cfg, tmp_path):
    plan, results = run(cfg, tmp_path)
    assert CALLS == [("prepare", "auto"), ("sweep", ""), ("train", "linear"), ("evaluate", "linear")]
    assert all(r["status"] == "ran" for r in results.values())
    train = next(p for p in plan if p.stage.name == "train")
    assert train.fingerprint == results["train"]["fingerprint"] != PENDING
    assert train.choices == {"model.connector": "linear", "model.vision.image_size": 84}
    assert train.choices_from == f"sweep {results['sweep']['fingerprint']}"
    used = json.loads((Path(train.out) / "used.json").read_text())
    assert used == {"connector": "linear", "image_size": 84}

    plan, again = run(cfg, tmp_path)  # a rerun: everything cached, and planned so without running anything
    assert CALLS == [] and all(r["status"] == "cached" for r in again.values())
    assert {k: r["fingerprint"] for k, r in again.items()} == {k: r["fingerprint"] for k, r in results.items()}
    assert next(p for p in plan if p.stage.name == "train").action == "cached"


def test_a_different_best_changes_the_waiting_fingerprints(cfg, tmp_path):
    plan, first = run(cfg, tmp_path)
    BEST["connector"] = "mlp3x_gelu"  # the sweep runs again (its output removed) and picks another connector
    (Path(next(p.out for p in plan if p.stage.name == "sweep")) / MANIFEST).unlink()
    _, second = run(cfg, tmp_path)
    assert [c for c in CALLS if c[0] != "sweep"] == [("train", "mlp3x_gelu"), ("evaluate", "mlp3x_gelu")]
    assert second["prepare"]["fingerprint"] == first["prepare"]["fingerprint"]
    assert second["sweep"]["fingerprint"] == first["sweep"]["fingerprint"]  # same inputs, new outcome
    assert second["train"]["fingerprint"] != first["train"]["fingerprint"]
    assert second["evaluate"]["fingerprint"] != first["evaluate"]["fingerprint"]
    assert second["train"]["why"] == ["model.connector changed ('linear' → 'mlp3x_gelu')"]
    # the same value written into the config: the same fingerprint (and a cache hit)
    fixed = load_config("tiny_sweep", ["model.connector=mlp3x_gelu"])
    plan = {p.stage.name: p for p in make_plan(fixed, dag(), str(tmp_path))}
    assert plan["train"].fingerprint == second["train"]["fingerprint"] and plan["train"].action == "cached"


def test_only_downstream_without_the_sweep_output_fails_clearly(cfg, tmp_path):
    run(cfg, tmp_path, only=["prepare"])
    with pytest.raises(PipelineError, match="stage train needs the output of sweep"):
        make_plan(cfg, dag(), str(tmp_path), only=["train"])


def test_force_and_from_the_sweep_cover_the_stages_waiting_for_it(cfg, tmp_path):
    run(cfg, tmp_path)
    plan = {p.stage.name: p for p in make_plan(cfg, dag(), str(tmp_path), force=["sweep"])}
    assert plan["prepare"].action == "cached" and plan["sweep"].action == "run"
    assert plan["train"].fingerprint == PENDING and plan["train"].forced
    _, results = run(cfg, tmp_path, from_=["sweep"])
    assert [c[0] for c in CALLS] == [] and results["prepare"]["status"] == "skipped"
    assert results["train"]["status"] == "cached"


def test_failed_sweep_blocks_everything_waiting_for_it(cfg, tmp_path):
    stages = dag()

    def broken(ctx):
        raise RuntimeError("no trial finished")

    stages[1] = Stage("sweep", ("prepare",), stages[1].reads, broken, resolves=resolve_from_sweep)
    CALLS.clear()
    plan = make_plan(cfg, stages, str(tmp_path))
    results = execute(cfg, plan, str(tmp_path), None)
    assert results["sweep"]["status"] == "failed"
    assert results["train"]["status"] == results["evaluate"]["status"] == "skipped"
    assert CALLS == [("prepare", "auto")]


def test_the_choice_is_recorded_on_the_stage_run(cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import PipelineTracker

    cfg = load_config("tiny_sweep", [f"storage={tmp_path}", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db"])
    plan = make_plan(cfg, dag(), str(tmp_path))
    tracker = PipelineTracker(cfg, str(tmp_path), "run")
    results = execute(cfg, plan, str(tmp_path), tracker)
    run = MlflowClient(tracker.uri).get_run(results["train"]["mlflow_run_id"])
    assert run.data.params["model.connector"] == "linear" and run.data.params["model.vision.image_size"] == "84"
    assert run.data.tags["auto_from"] == f"sweep {results['sweep']['fingerprint']}"
    assert run.data.tags["fingerprint"] == results["train"]["fingerprint"]
    evaluate = MlflowClient(tracker.uri).get_run(results["evaluate"]["mlflow_run_id"])
    assert "auto_from" not in evaluate.data.tags


def test_pipeline_dag_waits_only_when_something_is_auto():
    stages = {s.name: s for s in build_stages(load_config("tiny_sweep"))}
    assert list(stages)[:5] == ["synth", "prepare", "sweep", "pretrain", "finetune"]
    assert stages["pretrain"].after == stages["finetune"].after == ("sweep",)
    assert stages["sweep"].deps == ("prepare", "synth")
    fixed = {s.name: s for s in build_stages(load_config("tiny_sweep", ["model.connector=linear",
                                                                         "model.vision.image_size=56"]))}
    assert "sweep" in fixed and fixed["pretrain"].after == ()
    assert "sweep" not in {s.name for s in build_stages(load_config("tiny"))}
