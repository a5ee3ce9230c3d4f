"""Runs left RUNNING by a killed driver are ended by the next `llava-pipeline run` on the same tracking store;
a live concurrent driver's runs are left alone (pipelines/engine/tracking.py::end_abandoned_runs).

Two real driver processes (a PipelineTracker with a parent run, a stage run and the stage's lease, as the
executor holds them) run at once; one is SIGKILLed. Runs of drivers on other hosts are judged by their stage's
lease: written here as such a driver's would be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from components.core.lease import Lease
from pipelines.config import load_config
from pipelines.engine.executor import artifact_dir
from pipelines.engine.tracking import PipelineTracker

PROJECT = Path(__file__).resolve().parents[3]
DRIVER = """
import json, sys, time, types
from pipelines.config import load_config
from pipelines.engine.attempts import take_lease
from pipelines.engine.executor import artifact_dir
from pipelines.engine.tracking import PipelineTracker

root, fingerprint = sys.argv[1], sys.argv[2]
tracker = PipelineTracker(load_config("tiny", [f"storage={root}"]), root, "run")
planned = types.SimpleNamespace(stage=types.SimpleNamespace(name="finetune"), fingerprint=fingerprint, action="run",
                                why=["test"], manifest=None)
stage_run = tracker.start_stage(planned)
lease, _ = take_lease(artifact_dir(root, "finetune", fingerprint), forced=False, stage="finetune")
with lease.keep_alive():
    print(json.dumps({"parent": tracker.parent, "stage": stage_run}), flush=True)
    time.sleep(600)
"""


def _remote_driver(client, experiment_id: str, root: str, host: str, fingerprint: str,
                   heartbeat_age_s: float | None) -> list[str]:
    """A parent and a stage run of a driver on `host`, and (unless None) its stage lease, last renewed
    `heartbeat_age_s` ago."""
    driver = {"driver.host": host, "driver.pid": "4242", "driver.started": "1700000000.00"}
    parent = client.create_run(experiment_id, tags=driver).info.run_id
    stage = client.create_run(experiment_id, tags={**driver, "mlflow.parentRunId": parent, "stage": "pretrain",
                                                   "fingerprint": fingerprint}).info.run_id
    trial = client.create_run(experiment_id, tags={"mlflow.parentRunId": stage}).info.run_id  # a sweep trial
    if heartbeat_age_s is not None:
        lease = Lease(artifact_dir(root, "pretrain", fingerprint) + ".lease", f"{host}:4242:beef",
                      clock=lambda: time.time() - heartbeat_age_s)
        assert lease.try_acquire("attempt-1")[0]
    return [parent, stage, trial]


def test_a_killed_drivers_runs_end_and_a_live_ones_stay(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = str(tmp_path / "store")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, root, fp], cwd=PROJECT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for fp in ("fp-dead", "fp-live")]
    try:
        dead, live = (json.loads(d.stdout.readline() or d.stderr.read()) for d in drivers)
        os.kill(drivers[0].pid, signal.SIGKILL)
        drivers[0].wait(timeout=60)

        client = MlflowClient(f"sqlite:///{Path(root).resolve() / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("llava-pipeline").experiment_id
        lapsed = _remote_driver(client, experiment, root, "node-b", "fp-lapsed", heartbeat_age_s=1000)
        renewed = _remote_driver(client, experiment, root, "node-c", "fp-renewed", heartbeat_age_s=5)
        waiting = _remote_driver(client, experiment, root, "node-d", "fp-none", heartbeat_age_s=None)

        tracker = PipelineTracker(load_config("tiny", [f"storage={root}"]), root, "run")  # the next run

        def status(run_id: str) -> str:
            return client.get_run(run_id).info.status

        for run_id in (dead["parent"], dead["stage"]):
            assert status(run_id) == "KILLED"
            reason = client.get_run(run_id).data.tags["ended_because"]
            assert f"process {drivers[0].pid} " in reason and "no longer running" in reason
        for run_id in lapsed:
            assert status(run_id) == "KILLED"
            assert "stopped renewing the lease of stage pretrain" in client.get_run(run_id).data.tags["ended_because"]
        for run_id in (live["parent"], live["stage"], *renewed, *waiting, tracker.parent):
            assert status(run_id) == "RUNNING", run_id
        assert drivers[1].poll() is None  # the live driver is untouched
        assert client.get_run(tracker.parent).data.tags["driver.pid"] == str(os.getpid())
    finally:
        for d in drivers:
            if d.poll() is None:
                os.kill(d.pid, signal.SIGKILL)
            d.wait(timeout=60)
