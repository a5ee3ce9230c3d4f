"""The whole tiny pipeline end to end: real Ray, DeepSpeed, a real MLflow server on 127.0.0.1.

One run is shared by the tests that need it (module fixture); reruns reuse its storage. It is the micro world
with a few training steps: these tests check stages, caching, MLflow and outputs. That the embedded default
learns (GQA >= 70, blank images <= 35) is checked on the default unshortened, by `.ci/run`'s Quick start run,
the run a user types (the suite's time: the default's training is 4 of the suite's 30 minutes).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import load_config
from pipelines.engine.cli import main
from pipelines.engine.run_cmd import run_pipeline

pytestmark = pytest.mark.e2e

BENCHMARKS = "[gqa,pope,llava_bench]"
PRETRAIN_STEPS, FINETUNE_STEPS = 4, 8
SHARED = ["data.synth.size=micro", f"pretrain.max_steps={PRETRAIN_STEPS}", f"finetune.max_steps={FINETUNE_STEPS}",
          "evaluate.limit=16", "evaluate.parity_sample=4", "export.parity_sample=2"]
# A rerun that only checks which stages run uses fewer steps.
SHORT_FINETUNE = "finetune.max_steps=4"


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
    assert 0 <= gqa["accuracy"] <= 100 and 0 <= gqa["blank_images_accuracy"] <= 100, gqa
    assert gqa["parity_mismatches"] == 0  # batched answers equal batch-1 answers
    pretrain, train = out["stages"]["pretrain"]["metrics"], out["stages"]["finetune"]["metrics"]
    assert pretrain["steps"] == PRETRAIN_STEPS and train["steps"] == FINETUNE_STEPS
    assert train["final_loss"] < train["initial_loss"]
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
    assert gqa["accuracy"] == first["stages"]["evaluate.gqa"]["metrics"]["accuracy"]
    assert gqa["blank_images_accuracy"] == first["stages"]["evaluate.gqa"]["metrics"]["blank_images_accuracy"]
    def answers(o: dict) -> list[list[tuple[str, str]]]:  # the pass's and its blank-image pass's
        return [[(a["question_id"], a["text"]) for a in map(json.loads, path.read_text().splitlines())]
                for path in sorted(Path(o["outputs"]["evaluate.gqa"]).rglob("answers.jsonl"))]

    assert len(answers(out)) == 2 and answers(out) == answers(first)


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


@pytest.fixture
def judge_server() -> Iterator[tuple[str, list[str]]]:
    """An OpenAI-compatible judge on 127.0.0.1 that scores every review "8 6"; yields (url, paths asked)."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            paths.append(self.path)
            body = json.dumps({"model": "fake-judge",
                               "choices": [{"message": {"role": "assistant", "content": "8 6\nfine"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", paths
    httpd.shutdown()
    httpd.server_close()


TRACK_PASSWORD = "TrackPassw0rd-9f2c"
JUDGE_QUERY_KEY = "JudgeQueryKey-77ab"
JUDGE_API_KEY = "sk-JudgeApiKey-5e1d0c"
SECRETS = (TRACK_PASSWORD, JUDGE_QUERY_KEY, JUDGE_API_KEY)


def test_interrupted_driver_resumes_and_no_secret_reaches_any_output(ray_local, mlflow_server, judge_server,
                                                                     tmp_path):
    """Kill the driver during finetune (after a checkpoint); the same command resumes from it. The run is configured
    with secret-bearing URIs (a tracking URI with user:password, a judge endpoint with ?key=, a judge API key): no
    secret appears in anything the killed run, the resumed run or a cached plain rerun printed, logged, tagged or
    wrote. One run serves both checks (the suite's time)."""
    from mlflow.tracking import MlflowClient

    from components.core.mlflow_sender import default_spool

    judge_url, judge_paths = judge_server
    host = mlflow_server.removeprefix("http://")
    storage = tmp_path / "store"
    args = [sys.executable, "-m", "pipelines.engine.cli", "run", "--set", f"storage={storage}",
            "--set", f"tracking.tracking_uri=http://alice:{TRACK_PASSWORD}@{host}"]
    for item in ["data.synth.size=micro", "evaluate.benchmarks=[gqa,llava_bench]", "evaluate.limit=4",
                 "evaluate.blank_image_check=[]", "evaluate.parity_sample=0", "export.enabled=false",
                 "pretrain.max_steps=2", "finetune.max_steps=6", "finetune.checkpoint_every=2"]:
        args += ["--set", item]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "LLAVA_JUDGE_BASE_URL": f"{judge_url}?key={JUDGE_QUERY_KEY}", "LLAVA_JUDGE_MODEL": "fake-judge",
           "LLAVA_JUDGE_API_KEY": JUDGE_API_KEY, "LLAVA_TRAIN_STEP_DELAY_S": "1.5"}  # slow steps: the kill lands mid-run
    env.pop("MLFLOW_TRACKING_URI", None)
    project = Path(__file__).resolve().parents[2]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, cwd=project)
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
    killed_output = first.communicate(timeout=60)[0]
    env.pop("LLAVA_TRAIN_STEP_DELAY_S")
    second = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True, timeout=900, cwd=project)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = json.loads(second.stdout)  # stdout is exactly one JSON object
    status = {k: v["status"] for k, v in out["stages"].items()}
    assert status["synth"] == status["prepare"] == status["pretrain"] == "cached"
    assert status["finetune"] == "ran"
    assert out["stages"]["finetune"]["metrics"]["resumed_from_step"] >= 2
    assert out["tracking_uri"] == f"http://***@{host}"
    assert judge_paths and all(p.endswith(f"?key={JUDGE_QUERY_KEY}") for p in judge_paths)  # the judge was used
    assert out["stages"]["evaluate.llava_bench"]["status"] == "ran"
    # The killed driver's MLflow runs (its parent and the finetune it was in) did not stay RUNNING: the second
    # run ended them KILLED, saying why.
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("llava-pipeline")
    runs = client.search_runs([exp.experiment_id], f"tags.`driver.pid` = '{first.pid}'", max_results=100)
    ended = {r.data.tags.get("stage", "parent"): r.info.status for r in runs}
    assert ended["parent"] == ended["finetune"] == "KILLED" and ended["pretrain"] == "FINISHED", ended
    assert all(r.data.tags.get("ended_because") for r in runs if r.info.status == "KILLED")
    # A person's plain output of the same command (every stage cached) names the tracking URI and the log.
    plain = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=project)
    assert plain.returncode == 0 and "key metrics" in plain.stdout, plain.stderr[-3000:]

    outputs = {"killed run output": killed_output, "resumed stdout": second.stdout, "resumed stderr": second.stderr,
               "plain stdout": plain.stdout, "plain stderr": plain.stderr}
    # Every file the runs wrote under the storage root: manifests, stats, rejected.jsonl, metrics, logs, weights.
    for path in storage.rglob("*"):
        if path.is_file():
            outputs[str(path)] = path.read_bytes().decode("utf-8", "replace")
    # What this node keeps for MLflow while it is unreachable (the sender's journals): URIs without credentials.
    for path in Path(default_spool()).rglob("*"):
        if path.is_file():
            outputs[str(path)] = path.read_bytes().decode("utf-8", "replace")
    # Every MLflow param, tag and artifact of every run (the server's own copy, fetched through its API).
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        rid = run.info.run_id
        outputs[f"run {rid} params+tags"] = json.dumps({"params": run.data.params, "tags": run.data.tags})
        local = Path(client.download_artifacts(rid, "", str(tmp_path / "artifacts" / rid)))
        for path in local.rglob("*"):
            if path.is_file():
                outputs[f"run {rid} artifact {path.relative_to(local)}"] = path.read_bytes().decode("utf-8", "replace")
    assert any(name.endswith("stages.json") for name in outputs)
    assert any(name.endswith("manifest.json") for name in outputs)
    assert any("metrics.json" in name and "llava_bench" in name for name in outputs)
    leaks = {name: found for name, text in outputs.items() if (found := [s for s in SECRETS if s in text])}
    assert not leaks, leaks
