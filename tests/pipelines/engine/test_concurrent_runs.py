"""Two `llava-pipeline run` of one config on one fresh storage root, started together (two terminals, a retried
job): both succeed, every stage runs once — the second run waits on the first's lease and takes its output —
and every output is readable. Local and s3:// roots; a fresh sqlite MLflow store shared by both runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.engine.executor import MANIFEST, read_manifest

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[3]
SMALL = ["data.synth.size=micro", "pretrain.max_steps=2", "finetune.max_steps=2", "evaluate.benchmarks=[gqa]",
         "evaluate.limit=8", "evaluate.blank_image_check=[]", "evaluate.parity_sample=0", "export.enabled=false"]


def start_run(ray_local, *overrides: str, flags: tuple[str, ...] = ()) -> subprocess.Popen:
    args = [sys.executable, "-m", "pipelines.engine.cli", "run", "tiny", "--json", *flags]
    for item in [*SMALL, *overrides]:
        args += ["--set", item]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT)


def run_twice_together(ray_local, *overrides: str) -> list[dict]:
    procs = [start_run(ray_local, *overrides) for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=1200)
        assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def check_each_stage_ran_once(outs: list[dict]) -> None:
    assert outs[0]["stages"].keys() == outs[1]["stages"].keys()
    for stage in outs[0]["stages"]:
        statuses = sorted(o["stages"][stage]["status"] for o in outs)
        assert statuses == ["cached", "ran"], (stage, statuses)
        assert outs[0]["stages"][stage]["fingerprint"] == outs[1]["stages"][stage]["fingerprint"]


def test_two_runs_on_one_local_root(ray_local, tmp_path):
    root = tmp_path / "store"
    outs = run_twice_together(ray_local, f"storage={root}")
    check_each_stage_ran_once(outs)
    for stage, r in outs[0]["stages"].items():
        out = root / "artifacts" / stage / r["fingerprint"]
        assert read_manifest(str(out))["fingerprint"] == r["fingerprint"]
    gqa = root / "artifacts" / "evaluate.gqa" / outs[0]["stages"]["evaluate.gqa"]["fingerprint"]
    answers = list(gqa.rglob("answers.jsonl"))
    assert len(answers) == 1 and len(answers[0].read_text().splitlines()) == 8
    assert not list(root.glob("artifacts/*/*.lease")) and not list(root.glob("artifacts/*/.attempts/*"))
    assert not list(root.glob("ray_train/*"))  # committed training stages keep no checkpoints (keep 0)
    # One MLflow store created by two runs at once; each stage's work is one run there, the other a cache hit.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("llava-pipeline").experiment_id], max_results=1000)
    misses = sorted(r.data.tags["stage"] for r in runs if r.data.tags.get("cache") == "miss")
    assert misses == sorted(outs[0]["stages"])

    # --force finetune trains all its steps again, in a fresh Ray Train run, and replaces the output.
    forced = start_run(ray_local, f"storage={root}", flags=("--force", "finetune"))
    stdout, stderr = forced.communicate(timeout=1200)
    assert forced.returncode == 0, stdout[-3000:] + stderr[-3000:]
    again = json.loads(stdout.strip().splitlines()[-1])["stages"]
    first = next(o for o in outs if o["stages"]["finetune"]["status"] == "ran")["stages"]["finetune"]
    assert again["finetune"]["status"] == "ran" and again["prepare"]["status"] == "cached"
    assert again["finetune"]["metrics"]["steps"] == first["metrics"]["steps"] == 2
    assert not again["finetune"]["metrics"].get("resumed_from_step")
    assert again["finetune"]["mlflow_run_id"] != first["mlflow_run_id"]


def test_two_runs_on_one_s3_root(ray_local, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("concurrent-runs")
    outs = run_twice_together(ray_local, "storage=s3://concurrent-runs/run",
                              f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    check_each_stage_ran_once(outs)
    fs.invalidate_cache()
    for stage, r in outs[0]["stages"].items():
        manifest = json.loads(fs.cat(f"concurrent-runs/run/artifacts/{stage}/{r['fingerprint']}/{MANIFEST}"))
        assert manifest["fingerprint"] == r["fingerprint"]
    assert not [p for p in fs.find("concurrent-runs/run/artifacts") if p.endswith(".lease")]
