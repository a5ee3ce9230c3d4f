"""The tiny pipeline with an `s3://` storage root (moto): every output lands in the bucket, a rerun is all
cache hits, and the S3 credentials appear in no MLflow param or tag, manifest or logged config."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time

import pytest

from pipelines.engine.cli import main
from pipelines.engine.executor import MANIFEST

pytestmark = pytest.mark.e2e

BUCKET = "llava-s3-run"
SMALL = ["data.synth.size=micro", "pretrain.max_steps=2", "finetune.max_steps=2", "evaluate.benchmarks=[gqa]",
         "evaluate.limit=8", "evaluate.blank_image_check=[]", "evaluate.parity_sample=0", "export.enabled=false"]


def run_json(*overrides: str) -> tuple[int, dict, float]:
    """`llava-pipeline run --json` in-process (the session's Ray, started with the AWS environment)."""
    argv = ["run", "tiny", "--json"]
    for item in [*SMALL, *overrides]:
        argv += ["--set", item]
    buf = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    lines = buf.getvalue().strip().splitlines()
    return rc, json.loads(lines[-1]) if lines else {}, time.monotonic() - started


def test_s3_storage_root(ray_local, s3_server, tmp_path, monkeypatch):
    import s3fs
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]]
    assert all(len(s) >= 6 for s in secrets)  # long enough that a match means a leak
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = (f"storage=s3://{BUCKET}/run", f"tracking.tracking_uri={tracking}", "finetune.keep_checkpoints=1")

    rc, first, wall_first = run_json(*overrides)
    assert rc == 0, json.dumps(first, indent=1)[-4000:]
    assert {r["status"] for r in first["stages"].values()} == {"ran"}, first["stages"]
    rc, second, wall_second = run_json(*overrides)
    assert rc == 0 and {r["status"] for r in second["stages"].values()} == {"cached"}, second["stages"]
    print(f"\n[s3 run] first {wall_first:.0f} s, cached rerun {wall_second:.0f} s")

    fs.invalidate_cache()
    manifests = {stage: f"{BUCKET}/run/artifacts/{stage}/{r['fingerprint']}/{MANIFEST}"
                 for stage, r in first["stages"].items()}
    assert all(fs.exists(m) for m in manifests.values()), manifests
    evaluate_out = manifests["evaluate.gqa"].rsplit("/", 1)[0]
    assert any(p.endswith("answers.jsonl") for p in fs.find(evaluate_out))
    # Committed stages keep `keep_checkpoints` Ray Train checkpoints: pretrain none, finetune its last one.
    kept = {p.split("/ray_train/")[1].split("/")[0].split("-")[0] + "/" + p.split("/checkpoint_")[1].split("/")[0]
            for p in fs.find(f"{BUCKET}/run/ray_train") if "/checkpoint_" in p}
    assert [k.split("/")[0] for k in kept] == ["finetune"], kept
    for stage in ("pretrain", "finetune"):
        assert fs.find(manifests[stage].rsplit("/", 1)[0]), stage
    logged = fs.find(f"{BUCKET}/run/mlartifacts")
    assert any(p.endswith("config/config.yaml") for p in logged) and any(p.endswith("stages.json") for p in logged)

    # Credentials: nowhere in what the runs recorded.
    texts = [fs.cat(m).decode() for m in manifests.values()]
    texts += [fs.cat(p).decode("utf-8", "replace") for p in logged if p.endswith((".yaml", ".json", ".txt"))]
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("llava-pipeline")
    assert exp.artifact_location == f"s3://{BUCKET}/run/mlartifacts"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) >= 2 * (len(first["stages"]) + 1)
    for r in runs:
        texts.append(json.dumps({"params": r.data.params, "tags": r.data.tags}))
    for text in texts:
        for secret in secrets:
            assert secret not in text
