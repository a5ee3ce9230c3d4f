"""Two `llava-pipeline run` of one config on one fresh s3:// storage root (moto), started together (two terminals,
a retried job): both succeed, every stage runs once — the second run waits on the first's lease and takes its
output — every output lands in the bucket, a rerun is all cache hits, and the S3 credentials appear in no MLflow
param or tag, manifest or logged config. A fresh sqlite MLflow store shared by the runs. The same on a local
root, typed from an empty directory: tests/pipelines/engine/test_front_door.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.engine.executor import MANIFEST

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[3]
BUCKET = "concurrent-runs"
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


def test_two_runs_on_one_s3_root(ray_local, s3_server, tmp_path):
    import s3fs
    from mlflow.tracking import MlflowClient

    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]]
    assert all(len(s) >= 6 for s in secrets)  # long enough that a match means a leak
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = (f"storage=s3://{BUCKET}/run", f"tracking.tracking_uri={tracking}", "finetune.keep_checkpoints=1")
    outs = run_twice_together(ray_local, *overrides)
    check_each_stage_ran_once(outs)
    rerun = start_run(ray_local, *overrides)
    stdout, stderr = rerun.communicate(timeout=1200)
    assert rerun.returncode == 0, stdout[-3000:] + stderr[-3000:]
    again = json.loads(stdout.strip().splitlines()[-1])["stages"]
    assert {r["status"] for r in again.values()} == {"cached"}, again

    fs.invalidate_cache()
    manifests = {stage: f"{BUCKET}/run/artifacts/{stage}/{r['fingerprint']}/{MANIFEST}"
                 for stage, r in outs[0]["stages"].items()}
    for stage, path in manifests.items():
        assert json.loads(fs.cat(path))["fingerprint"] == outs[0]["stages"][stage]["fingerprint"]
        assert fs.find(path.rsplit("/", 1)[0]), stage
    assert not [p for p in fs.find(f"{BUCKET}/run/artifacts") if p.endswith(".lease")]
    assert any(p.endswith("answers.jsonl") for p in fs.find(manifests["evaluate.gqa"].rsplit("/", 1)[0]))
    # Committed stages keep `keep_checkpoints` Ray Train checkpoints: pretrain none, finetune its last one.
    kept = {p.split("/ray_train/")[1].split("/")[0].split("-")[0] + "/" + p.split("/checkpoint_")[1].split("/")[0]
            for p in fs.find(f"{BUCKET}/run/ray_train") if "/checkpoint_" in p}
    assert [k.split("/")[0] for k in kept] == ["finetune"], kept
    logged = fs.find(f"{BUCKET}/run/mlartifacts")
    assert any(p.endswith("config/config.yaml") for p in logged) and any(p.endswith("stages.json") for p in logged)

    # Credentials: nowhere in what the runs recorded.
    texts = [fs.cat(m).decode() for m in manifests.values()]
    texts += [fs.cat(p).decode("utf-8", "replace") for p in logged if p.endswith((".yaml", ".json", ".txt"))]
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("llava-pipeline")
    assert exp.artifact_location == f"s3://{BUCKET}/run/mlartifacts"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) >= 3 * (len(outs[0]["stages"]) + 1)
    texts += [json.dumps({"params": r.data.params, "tags": r.data.tags}) for r in runs]
    for text in texts:
        for secret in secrets:
            assert secret not in text
