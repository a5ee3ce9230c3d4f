"""A real pipeline run configured with secret-bearing URIs: a tracking URI with user:password, a judge endpoint
with ?key= and an API key. No secret appears in anything the run printed, logged, tagged or wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

TRACK_PASSWORD = "TrackPassw0rd-9f2c"
JUDGE_QUERY_KEY = "JudgeQueryKey-77ab"
JUDGE_API_KEY = "sk-JudgeApiKey-5e1d0c"
SECRETS = (TRACK_PASSWORD, JUDGE_QUERY_KEY, JUDGE_API_KEY)
SMALL = ["data.synth.size=micro", "pretrain.max_steps=2", "finetune.max_steps=2",
         "evaluate.benchmarks=[gqa,llava_bench]", "evaluate.limit=4", "evaluate.blank_image_check=[]",
         "evaluate.parity_sample=0", "export.enabled=false"]


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


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_no_secret_reaches_any_output(mlflow_server, judge_server, tmp_path):
    from mlflow.tracking import MlflowClient

    judge_url, judge_paths = judge_server
    host = mlflow_server.removeprefix("http://")
    tracking = f"http://alice:{TRACK_PASSWORD}@{host}"
    storage = tmp_path / "store"
    env = {**os.environ, "LLAVA_JUDGE_BASE_URL": f"{judge_url}?key={JUDGE_QUERY_KEY}",
           "LLAVA_JUDGE_MODEL": "fake-judge", "LLAVA_JUDGE_API_KEY": JUDGE_API_KEY}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = [sys.executable, "-m", "pipelines.engine.cli", "run", "tiny", "--set", f"storage={storage}",
            "--set", f"tracking.tracking_uri={tracking}"]
    for item in SMALL:
        argv += ["--set", item]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1500,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert judge_paths and all(p.endswith(f"?key={JUDGE_QUERY_KEY}") for p in judge_paths)  # the judge was used

    leaks: dict[str, list[str]] = {}
    # The same command again with --json (every stage cached): the JSON names the tracking URI and the log.
    as_json = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=600,
                             cwd=Path(__file__).resolve().parents[2])
    assert as_json.returncode == 0, as_json.stderr[-4000:]
    assert json.loads(as_json.stdout)["tracking_uri"] == f"http://***@{host}"
    outputs = {"stdout": proc.stdout, "stderr": proc.stderr, "json stdout": as_json.stdout,
               "json stderr": as_json.stderr}
    # Every file the run wrote under its storage root: manifests, stats, rejected.jsonl, metrics, logs, weights.
    for path in storage.rglob("*"):
        if path.is_file():
            outputs[str(path)] = path.read_bytes().decode("utf-8", "replace")
    # Every MLflow param, tag and artifact of every run (the server's own copy, fetched through its API).
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("llava-pipeline")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) >= 2
    for run in runs:
        rid = run.info.run_id
        outputs[f"run {rid} params+tags"] = json.dumps({"params": run.data.params, "tags": run.data.tags})
        local = Path(client.download_artifacts(rid, "", str(tmp_path / "artifacts" / rid)))
        for path in local.rglob("*"):
            if path.is_file():
                outputs[f"run {rid} artifact {path.relative_to(local)}"] = path.read_bytes().decode("utf-8", "replace")
    assert any(name.endswith("stages.json") for name in outputs)
    assert any(name.endswith("manifest.json") for name in outputs)
    assert any("metrics.json" in name and "llava_bench" in name for name in outputs)
    for name, text in outputs.items():
        found = _leaks(text)
        if found:
            leaks[name] = found
    assert not leaks, leaks
