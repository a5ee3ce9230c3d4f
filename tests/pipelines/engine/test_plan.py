"""`auto` resolved in a pre-pass: the stages after the sweep are planned with the values it chose.

A fake DAG (no Ray): `sweep` writes best.json naming a connector; `train` and `evaluate` (downstream of
train) record the config they ran with. The real resolver reads best.json; the executor stays a plain DAG.
"""

import json
from pathlib import Path

import pytest

from components.core.stage_run import StageRun
from components.models.spec import ModelSpec, VisionConfig
from pipelines.config import load_config
from pipelines.engine.executor import MANIFEST, PipelineError, Stage
from pipelines.engine.plan import PENDING, Pipeline, plan_pipeline, run_plan
from pipelines.llava15 import LLAVA15, auto_keys, build_stages, resolve_from_sweep

BEST = {"connector": "linear"}
CALLS: list[tuple[str, str]] = []


def sweep_body(*, space: list[str], run: StageRun) -> dict:
    CALLS.append(("sweep", ""))
    Path(run.out).mkdir(parents=True, exist_ok=True)
    best = {"connector": BEST["connector"], "resolution": {"image_size": 84, "name_or_path": None}}
    (Path(run.out) / "best.json").write_text(json.dumps({"best": best}))
    return {"trials": 6}


def recorder(name):
    def stage_body(*, model: ModelSpec, run: StageRun) -> dict:
        CALLS.append((name, model.connector))
        Path(run.out).mkdir(parents=True, exist_ok=True)
        (Path(run.out) / "used.json").write_text(json.dumps({"connector": model.connector,
                                                             "image_size": model.vision.image_size}))
        return {}
    return stage_body


SWEEP = sweep_body


def sweep(*, space: list[str], run: StageRun) -> dict:
    return SWEEP(space=space, run=run)


def prepare_body(*, vision: VisionConfig, run: StageRun) -> dict:
    CALLS.append(("prepare", vision.image_size))
    Path(run.out).mkdir(parents=True, exist_ok=True)
    return {}


def dag(cfg):
    return [
        Stage("prepare", (), prepare_body, lambda up: {"vision": cfg.model.vision}),
        Stage("sweep", ("prepare",), sweep, lambda up: {"space": cfg.sweep.space.connector}),
        Stage("train", ("prepare",), recorder("train"), lambda up: {"model": cfg.model.spec()}),
        Stage("evaluate", ("train",), recorder("evaluate"), lambda up: {"model": cfg.model.spec()}),
    ]


def plan_of(cfg, root, **kw):
    return plan_pipeline(Pipeline(dag, auto_keys, "sweep", resolve_from_sweep), cfg, str(root), **kw)


def run(cfg, root, tracker=None, **kw):
    CALLS.clear()
    pipeline = plan_of(cfg, root, **kw)
    results = run_plan(pipeline, tracker)
    return pipeline.planned, results  # the tail as planned once the sweep had run


@pytest.fixture
def cfg():
    BEST["connector"] = "linear"
    return load_config("tiny_sweep")


def test_plan_before_the_sweep_has_run_is_pending(cfg, tmp_path):
    pipeline = plan_of(cfg, tmp_path)
    assert [p.stage.name for p in pipeline.head] == ["prepare", "sweep"]
    plan = {p.stage.name: p for p in pipeline.planned}
    assert plan["sweep"].action == "run" and plan["sweep"].fingerprint != PENDING
    assert plan["train"].fingerprint == PENDING and plan["train"].action == "run"
    why = ["model.connector, model.vision.image_size auto: fingerprint known once the sweep has run"]
    assert plan["train"].why == why and plan["evaluate"].fingerprint == PENDING


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
    plan = {p.stage.name: p for p in plan_of(fixed, tmp_path).planned}
    assert plan["train"].fingerprint == second["train"]["fingerprint"] and plan["train"].action == "cached"


def test_only_downstream_without_the_sweep_output_fails_clearly(cfg, tmp_path):
    run(cfg, tmp_path, only=["prepare"])
    with pytest.raises(PipelineError, match="auto: it takes the sweep's best value, but the sweep's output"):
        plan_of(cfg, tmp_path, only=["train"])


def test_force_and_from_the_sweep_cover_the_stages_waiting_for_it(cfg, tmp_path):
    run(cfg, tmp_path)
    plan = {p.stage.name: p for p in plan_of(cfg, tmp_path, force=["sweep"]).planned}
    assert plan["prepare"].action == "cached" and plan["sweep"].action == "run"
    assert plan["train"].fingerprint == PENDING and plan["train"].forced  # downstream of the sweep's choice
    _, results = run(cfg, tmp_path, from_=["sweep"])
    assert [c[0] for c in CALLS] == [] and results["prepare"]["status"] == "skipped"
    assert results["train"]["status"] == results["evaluate"]["status"] == "cached"
    BEST["connector"] = "mlp3x_gelu"
    _, results = run(cfg, tmp_path, force=["sweep"])
    assert CALLS == [("sweep", ""), ("train", "mlp3x_gelu"), ("evaluate", "mlp3x_gelu")]


def test_failed_sweep_blocks_everything_waiting_for_it(cfg, tmp_path, monkeypatch):
    def broken(**kw):
        raise RuntimeError("no trial finished")

    monkeypatch.setitem(globals(), "SWEEP", broken)
    _, results = run(cfg, tmp_path)
    assert results["sweep"]["status"] == "failed"
    assert results["train"]["status"] == results["evaluate"]["status"] == "skipped"
    assert "no trial finished" in results["train"]["why"][0]
    assert CALLS == [("prepare", "auto")]


def test_the_choice_is_recorded_on_the_stage_run(cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.engine.tracking import PipelineTracker

    cfg = load_config("tiny_sweep", [f"storage={tmp_path}", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db"])
    tracker = PipelineTracker(cfg, str(tmp_path), "run")
    _, results = run(cfg, tmp_path, tracker)
    train = MlflowClient(tracker.uri).get_run(results["train"]["mlflow_run_id"])
    assert train.data.params["model.connector"] == "linear" and train.data.params["model.vision.image_size"] == "84"
    assert train.data.tags["auto_from"] == f"sweep {results['sweep']['fingerprint']}"
    assert train.data.tags["fingerprint"] == results["train"]["fingerprint"]
    evaluate = MlflowClient(tracker.uri).get_run(results["evaluate"]["mlflow_run_id"])
    assert evaluate.data.tags["auto_from"] == train.data.tags["auto_from"]  # it runs with the choice too
    prepare = MlflowClient(tracker.uri).get_run(results["prepare"]["mlflow_run_id"])
    assert "auto_from" not in prepare.data.tags


def test_the_pipeline_has_a_head_only_when_something_is_auto(tmp_path):
    stages = {s.name: s for s in build_stages(load_config("tiny_sweep"))}
    assert list(stages)[:5] == ["synth", "prepare", "sweep", "pretrain", "finetune"]
    assert stages["sweep"].deps == ("prepare", "synth")
    auto = plan_pipeline(LLAVA15, load_config("tiny_sweep"), str(tmp_path))
    assert [p.stage.name for p in auto.head] == ["synth", "prepare", "sweep"] and auto.pending
    fixed = plan_pipeline(LLAVA15, load_config("tiny_sweep", ["model.connector=linear", "model.vision.image_size=56"]),
                          str(tmp_path))
    assert "sweep" in {p.stage.name for p in fixed.head} and fixed.tail == [] and not fixed.pending
