"""The whole tiny pipeline end to end: real Ray, DeepSpeed, a real MLflow server on 127.0.0.1.

One full run is shared by the tests that need it (session fixture); reruns reuse its storage.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.engine.cli import main
from pipelines.engine.run_cmd import run_pipeline

pytestmark = pytest.mark.e2e

BENCHMARKS = "[gqa,pope,llava_bench]"
# The shared run is the embedded default's training, unshortened: it is also the proof that the tiny model
# learns (GQA-style learning check >= 70, blank images <= 35). Only the benchmark list is cut.
SHARED = ["evaluate.parity_sample=4", "export.parity_sample=2"]
# Reruns that only check which stages run use a few steps.
SHORT_FINETUNE = "finetune.max_steps=6"


def run_json(storage: Path, *extra: str) -> tuple[int, dict]:
    """`llava-pipeline run --json` in-process (shares the session's Ray); returns (exit code, JSON)."""
    overrides = [f"storage={storage}", f"evaluate.benchmarks={BENCHMARKS}", *SHARED, *extra]
    cfg = load_config("tiny", overrides)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_pipeline(cfg, only=[], from_=[], force=[], dry_run=False, as_json=True)
    return rc, json.loads(buf.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_run(ray_local, mlflow_server, tmp_path_factory):
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    storage = tmp_path_factory.mktemp("pipeline") / "store"
    started = time.time()
    rc, out = run_json(storage)
    out["wall_s"] = time.time() - started
    assert rc == 0, json.dumps(out, indent=1)[-3000:]
    yield storage, out
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_first_run_runs_every_stage(tiny_run):
    _, out = tiny_run
    names = list(out["stages"])
    assert names[:4] == ["synth", "prepare", "pretrain", "finetune"] and names[-1] == "export"
    assert {n for n in names if n.startswith("evaluate.")} == {f"evaluate.{b}" for b in BENCHMARKS[1:-1].split(",")}
    # llava_bench is judged and no judge is configured: it generates nothing and reads as skipped.
    assert {k: s["status"] for k, s in out["stages"].items()} == {
        k: "skipped" if k == "evaluate.llava_bench" else "ran" for k in out["stages"]}


def test_stage_metrics_reach_the_result(tiny_run):
    _, out = tiny_run
    gqa = out["stages"]["evaluate.gqa"]["metrics"]
    print(f"learning check: gqa {gqa['accuracy']} blank images {gqa['blank_images_accuracy']}")
    # The tiny model learns: it reads the image (chance <= 25) and needs it (blank images near chance).
    assert gqa["accuracy"] >= 70.0 and gqa["blank_images_accuracy"] <= 35.0, gqa
    assert gqa["parity_mismatches"] == 0  # batched answers equal batch-1 answers
    train = out["stages"]["finetune"]["metrics"]
    steps = load_config("tiny").finetune
    assert train["steps"] == math.ceil(6000 * steps.epochs / steps.global_batch)
    assert train["final_loss"] < train["initial_loss"] - 4.0
    assert train["world_size"] == 1 and train["threads_per_worker"] == 2
    assert out["stages"]["evaluate.llava_bench"]["metrics"]["status"] == "skipped"  # no judge configured
    assert out["stages"]["export"]["metrics"]["parity_ok"]
    # export.json (and the registered model's export_path tag) name the committed folder, not the attempt's
    export = out["stages"]["export"]["output"]
    assert json.loads((Path(export) / "export.json").read_text())["model"] == f"{export}/model"
    assert (Path(export) / "model" / "config.json").is_file()


def test_mlflow_run_tree(tiny_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    _, out = tiny_run
    client = MlflowClient(mlflow_server)
    parent = client.get_run(out["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=100)
    by_stage = {r.data.tags["stage"]: r for r in children}
    assert set(by_stage) == set(out["stages"])
    for name, r in by_stage.items():
        assert r.data.tags["fingerprint"] == out["stages"][name]["fingerprint"]
        skipped = name == "evaluate.llava_bench"
        assert r.data.tags["cache"] == "miss" and r.data.tags["status"] == ("skipped" if skipped else "ran")
        assert ("skipped_reason" in r.data.tags) == skipped
        assert r.info.run_id == out["stages"][name]["mlflow_run_id"]
    ft = by_stage["finetune"]
    steps = out["stages"]["finetune"]["metrics"]["steps"]
    assert len(client.get_metric_history(ft.info.run_id, "finetune/loss")) == steps  # per-step training metrics
    assert by_stage["evaluate.gqa"].data.metrics["accuracy"] == out["stages"]["evaluate.gqa"]["metrics"]["accuracy"]
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config", "dag.png", "stages.json"} <= top
    cfg_files = {a.path for a in client.list_artifacts(parent.info.run_id, "config")}
    assert "config/config.yaml" in cfg_files
    ds_files = {a.path for a in client.list_artifacts(parent.info.run_id, "config/deepspeed")}
    assert "config/deepspeed/zero2.json" in ds_files
    assert client.list_artifacts(by_stage["evaluate.gqa"].info.run_id)


def test_cached_rerun_executes_nothing(tiny_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    storage, first = tiny_run
    started = time.time()
    rc, out = run_json(storage)
    assert rc == 0
    # A judged benchmark without a judge is not a result to cache: it is skipped again.
    assert {k: s["status"] for k, s in out["stages"].items()} == {
        k: "skipped" if k == "evaluate.llava_bench" else "cached" for k in out["stages"]}
    assert {k: v["fingerprint"] for k, v in out["stages"].items()} == \
        {k: v["fingerprint"] for k, v in first["stages"].items()}
    run = MlflowClient(mlflow_server).get_run(out["stages"]["finetune"]["mlflow_run_id"])
    assert run.data.tags["cache"] == "hit"
    assert run.data.tags["source_run_id"] == first["stages"]["finetune"]["mlflow_run_id"]
    print(f"cached rerun: {time.time() - started:.1f} s")


def test_config_change_reruns_downstream_only(tiny_run):
    storage, _ = tiny_run
    rc, out = run_json(storage, "finetune.optim.lr=1.0e-3", SHORT_FINETUNE)
    assert rc == 0
    status = {k: v["status"] for k, v in out["stages"].items()}
    assert status["synth"] == status["prepare"] == status["pretrain"] == "cached"
    assert status["finetune"] == "ran" and status["export"] == "ran"
    assert all(v == ("skipped" if k == "evaluate.llava_bench" else "ran")
               for k, v in status.items() if k.startswith("evaluate."))


def test_a_given_model_is_evaluated_without_training(tiny_run):
    """`evaluate.model`: the evaluate jobs read that model and nothing is trained. Given the shared run's own
    finetuned model, GQA scores exactly what the run's evaluate job scored."""
    storage, first = tiny_run
    model = first["outputs"]["finetune"] + "/model"
    rc, out = run_json(storage, f"evaluate.model={model}", "evaluate.benchmarks=[gqa]")
    assert rc == 0, json.dumps(out, indent=1)[-3000:]
    assert {k: v["status"] for k, v in out["stages"].items()} == {"synth": "cached", "evaluate.gqa": "ran"}
    gqa = out["stages"]["evaluate.gqa"]["metrics"]
    assert gqa["accuracy"] == first["stages"]["evaluate.gqa"]["metrics"]["accuracy"] >= 70
    assert gqa["blank_images_accuracy"] == first["stages"]["evaluate.gqa"]["metrics"]["blank_images_accuracy"]


def test_force_plans_stage_and_downstream(tiny_run, capsys):
    storage, _ = tiny_run
    sets = [x for o in [f"storage={storage}", f"evaluate.benchmarks={BENCHMARKS}", *SHARED] for x in ("--set", o)]
    assert main(["plan", *sets, "--force", "pretrain", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["stages"]
    assert plan["synth"]["action"] == plan["prepare"]["action"] == "cached"
    assert all(v["action"] == "run" for k, v in plan.items() if k not in ("synth", "prepare"))
    assert plan["pretrain"]["why"] == ["forced (--force)"]


def test_only_evaluate_without_upstream_fails_clearly(tmp_path, capsys):
    rc = main(["run", "--set", f"storage={tmp_path}", "--only", "evaluate"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs the output of finetune" in err and "--from finetune" in err


def test_interrupted_driver_resumes(ray_local, mlflow_server, tmp_path):
    """Kill the driver during finetune (after a checkpoint); the same command resumes from it."""
    storage = tmp_path / "store"
    address = ray_local.get_runtime_context().gcs_address
    args = [sys.executable, "-m", "pipelines.engine.cli", "run", "--json", "--set", f"storage={storage}",
            "--set", "data.synth.size=micro", "--set", "evaluate.benchmarks=[gqa]", "--set", "evaluate.limit=8", "--set", "export.enabled=false",
            "--set", "pretrain.max_steps=4", "--set", "finetune.max_steps=12", "--set", "finetune.checkpoint_every=2"]
    env = {**os.environ, "RAY_ADDRESS": address, "MLFLOW_TRACKING_URI": mlflow_server,
           "LLAVA_TRAIN_STEP_DELAY_S": "1.5"}  # slow steps so the kill lands mid-run
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=Path(__file__).resolve().parents[2])
    deadline = time.time() + 900
    snapshots: list[Path] = []
    while time.time() < deadline and first.poll() is None:
        # Ray Train resumes from its snapshot file, written once a reported checkpoint is registered.
        snapshots = list(storage.glob("ray_train/finetune-*/checkpoint_manager_snapshot.json"))
        if snapshots:
            break
        time.sleep(0.5)
    assert snapshots, "finetune never registered a checkpoint"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    env.pop("LLAVA_TRAIN_STEP_DELAY_S")
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900,
                            cwd=Path(__file__).resolve().parents[2])
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    status = {k: v["status"] for k, v in out["stages"].items()}
    assert status["synth"] == status["prepare"] == status["pretrain"] == "cached"
    assert status["finetune"] == "ran"
    assert out["stages"]["finetune"]["metrics"]["resumed_from_step"] >= 2
    # The killed driver's MLflow runs (its parent and the finetune it was in) did not stay RUNNING: the second
    # run ended them KILLED, saying why.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("llava-pipeline")
    runs = client.search_runs([exp.experiment_id], f"tags.`driver.pid` = '{first.pid}'", max_results=100)
    status = {r.data.tags.get("stage", "parent"): r.info.status for r in runs}
    assert status["parent"] == status["finetune"] == "KILLED" and status["pretrain"] == "FINISHED", status
    assert all(r.data.tags.get("ended_because") for r in runs if r.info.status == "KILLED")
