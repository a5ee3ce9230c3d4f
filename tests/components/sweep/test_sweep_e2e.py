"""The sweep stage end to end on a local Ray: Ray Tune over 2 connectors × 2 resolutions (4 trials), each one
Ray Train run (a proxy pretrain, then a finetune in 2 segments with a dev evaluation after each), ASHA stopping
a run mid-way without leaving its placement group behind (this Ray has no dashboard, so no cleaner would).

One sweep (module fixture) serves every test: it runs through the pipeline (prepare → sweep) on a subset of the
tiny synthetic world, with `auto` connector and resolution, against a real MLflow server. Budgets are tiny: these
tests check the mechanics (trials, ASHA, outputs, auto, cache), not which connector is better. At 3 + 4 steps the
dev accuracy of a random-init model is a tie (0) everywhere, so this configured case ranks by the proxy finetune
loss (mode min), which separates the trials and makes ASHA stop the ones behind the median at rung 1.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time

import pytest

from pipelines.config import load_config
from pipelines.engine.run_cmd import run_pipeline

pytestmark = pytest.mark.e2e

PRETRAIN_ROWS, FINETUNE_ROWS = 320, 320


@pytest.fixture(scope="module")
def world(tmp_path_factory, subset_world):
    """A tiny synthetic world and config overrides training on a subset of it (no synth stage)."""
    root = tmp_path_factory.mktemp("sweep")
    synth, data = subset_world(root, PRETRAIN_ROWS, FINETUNE_ROWS)
    overrides = [
        f"storage={root / 'store'}", "data.synth=null", *data,
        f"evaluate.root={synth / 'eval'}", "evaluate.benchmarks=[gqa]", f"sweep.dev.root={synth / 'dev'}",
        "sweep.space.connector=[linear, mlp2x_gelu]", "sweep.space.resolution=[28, 56]",
        "sweep.proxy.data_fraction=1.0", "sweep.proxy.pretrain_steps=3", "sweep.proxy.finetune_steps=4",
        "sweep.dev.limit=16", "sweep.dev.batch_size=16", "sweep.rungs=2",
        "sweep.metric=train_loss", "sweep.mode=min",
    ]
    return root, overrides


def run_json(overrides, only):
    cfg = load_config("tiny_sweep", overrides)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_pipeline(cfg, only=only, from_=[], force=[], dry_run=False, as_json=True)
    return rc, json.loads(buf.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def swept(world, ray_local, mlflow_server):
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    root, overrides = world
    started = time.time()
    rc, out = run_json(overrides, ["prepare", "sweep"])
    wall = time.time() - started
    assert rc == 0, json.dumps(out, indent=1)[-4000:]
    sweep_dir = root / "store" / "artifacts" / "sweep" / out["stages"]["sweep"]["fingerprint"]
    best = json.loads((sweep_dir / "best.json").read_text())
    print(f"\nsweep: {out['stages']['sweep']['duration_s']:.0f} s (prepare + sweep {wall:.0f} s); "
          f"{json.dumps(out['stages']['sweep']['metrics'])}")
    for t in best["trials"]:
        print(f"  {t['key']:18s} {t['status']:9s} rungs={len(t['rungs'])} "
              f"{[(r['train_loss'], r['accuracy'], round(r['wall_s'])) for r in t['rungs']]}")
    yield root, overrides, out, sweep_dir, best
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_sweep_runs_every_trial_and_writes_its_report(swept):
    _, _, out, sweep_dir, best = swept
    assert out["stages"]["sweep"]["status"] == "ran"
    assert len(best["trials"]) == 4
    assert {t["key"] for t in best["trials"]} == {"linear-28px", "linear-56px", "mlp2x_gelu-28px", "mlp2x_gelu-56px"}
    assert all(t["status"] in ("completed", "stopped") and t["rungs"] for t in best["trials"])
    for name in ("best.json", "ablation.csv", "ablation.md", "heatmap.png"):
        assert (sweep_dir / name).stat().st_size > 0
    assert (sweep_dir / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_asha_stopped_a_trial_early(swept):
    import ray
    from ray.tune import ExperimentAnalysis

    _, _, out, _, best = swept
    analysis = ExperimentAnalysis(best["tune_experiment"])  # Tune's own record of the experiment
    iterations = {tuple(t.config.values()): int(analysis.trial_dataframes[t.trial_id]["training_iteration"].max())
                  for t in analysis.trials}
    assert len(iterations) == 4 and all(1 <= n <= 2 for n in iterations.values())
    stopped = [k for k, n in iterations.items() if n < 2]
    assert stopped, iterations
    live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
    assert not live, live  # every trial's Train run ended itself, the stopped ones included
    assert sum(n == 2 for n in iterations.values()) >= 1
    assert out["stages"]["sweep"]["metrics"]["stopped_early"] == len(stopped) == best["counts"]["stopped_early"]
    by_key = {(t["connector"], t["resolution"]["image_size"]): t for t in best["trials"]}
    for key, n in iterations.items():
        assert len(by_key[key]["rungs"]) == n
        assert by_key[key]["status"] == ("stopped" if n < 2 else "completed")


def test_best_is_the_lowest_loss_at_the_last_rung(swept):
    _, _, _, _, best = swept
    finalists = [t for t in best["trials"] if t["status"] == "completed"]
    winner = min(finalists, key=lambda t: t["rungs"][-1]["train_loss"])
    assert best["best"]["key"] == winner["key"] and best["best"]["value"] == winner["rungs"][-1]["train_loss"]
    assert best["metric"] == "train_loss" and best["mode"] == "min"
    for t in best["trials"]:  # cost is recorded per rung
        assert all(r["wall_s"] > 0 and r["pretrain_steps"] == 3 for r in t["rungs"])
        assert [r["finetune_steps"] for r in t["rungs"]] == [2, 4][: len(t["rungs"])]


def test_trials_are_nested_mlflow_runs_with_the_report(swept, mlflow_server):
    from mlflow.tracking import MlflowClient

    _, _, out, _, best = swept
    client = MlflowClient(mlflow_server)
    stage_run = client.get_run(out["stages"]["sweep"]["mlflow_run_id"])
    trials = client.search_runs([stage_run.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{stage_run.info.run_id}'", max_results=50)
    assert len(trials) == 4
    by_run = {t["mlflow_run_id"]: t for t in best["trials"]}
    for run in trials:
        t = by_run[run.info.run_id]
        assert run.data.params["connector"] == t["connector"] and run.data.params["resolution"] == t["label"]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == t["status"]
        assert run.data.metrics["cost/wall_s"] > 0 and run.data.metrics["rungs_done"] == len(t["rungs"])
        assert len(client.get_metric_history(run.info.run_id, "sweep/train_loss")) == len(t["rungs"])
    artifacts = {a.path for a in client.list_artifacts(stage_run.info.run_id, "sweep")}
    assert {"sweep/best.json", "sweep/ablation.csv", "sweep/ablation.md", "sweep/heatmap.png"} <= artifacts
    assert stage_run.data.params["best.connector"] == best["best"]["connector"]


def _plan(overrides):
    from pipelines.engine.artifacts import storage_root
    from pipelines.engine.plan import plan_pipeline
    from pipelines.llava15 import LLAVA15

    cfg = load_config("tiny_sweep", overrides)
    return {p.stage.name: p for p in plan_pipeline(LLAVA15, cfg, storage_root(cfg)).planned}


def test_auto_takes_the_best_trial_and_downstream_fingerprints_follow(swept):
    _, overrides, _, sweep_dir, best = swept
    plan = _plan(overrides)
    assert plan["sweep"].action == "cached"
    chosen = best["best"]
    size = chosen["resolution"]["image_size"]
    for stage in ("pretrain", "finetune"):
        assert plan[stage].fingerprint != "pending"
        assert plan[stage].args["model"].connector == chosen["connector"]
        assert plan[stage].args["model"].vision.image_size == size
        assert plan[stage].inputs["args"]["model.connector"] == chosen["connector"]
        assert plan[stage].inputs["args"]["model.vision.image_size"] == size
        assert plan[stage].choices == {"model.connector": chosen["connector"], "model.vision.image_size": size}
    assert plan["evaluate.gqa"].fingerprint != "pending"

    def fixed_connector(connector):  # the choice written into the config gives the same fingerprints
        return _plan([*overrides, f"model.connector={connector}"])

    same = fixed_connector(chosen["connector"])
    assert same["sweep"].fingerprint == plan["sweep"].fingerprint  # the searched key is not a sweep input
    for stage in ("pretrain", "finetune", "evaluate.gqa"):
        assert plan[stage].fingerprint == same[stage].fingerprint

    # A different best (best.json edited as another sweep outcome would write it) changes pretrain and after.
    path = sweep_dir / "best.json"
    original = path.read_text()
    other = "linear" if chosen["connector"] != "linear" else "mlp2x_gelu"
    edited = json.loads(original)
    edited["best"]["connector"] = other
    try:
        path.write_text(json.dumps(edited))
        changed = _plan(overrides)
    finally:
        path.write_text(original)
    assert changed["sweep"].fingerprint == plan["sweep"].fingerprint
    for stage in ("pretrain", "finetune", "evaluate.gqa", "export"):
        assert changed[stage].fingerprint != plan[stage].fingerprint
    assert changed["pretrain"].fingerprint == fixed_connector(other)["pretrain"].fingerprint


def test_rerun_is_a_cache_hit(swept):
    _, overrides, first, _, _ = swept
    started = time.time()
    rc, out = run_json(overrides, ["prepare", "sweep"])
    assert rc == 0
    assert out["stages"]["sweep"]["status"] == out["stages"]["prepare"]["status"] == "cached"
    assert out["stages"]["sweep"]["fingerprint"] == first["stages"]["sweep"]["fingerprint"]
    assert time.time() - started < 60
