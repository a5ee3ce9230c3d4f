"""The background MLflow sender against a real `mlflow server` that is stopped and started again
(tests/faults/mlflow_server.py): logging goes on while the server is down, a flush waits a bounded time, and
after the restart every entry arrives with its own timestamp and step, a killed process's too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from components.core.mlflow_sender import BATCH_LINES, Sender

PROJECT = Path(__file__).resolve().parents[3]
KILLED = """
import os, signal, sys
from components.core.mlflow_sender import Sender
s = Sender(sys.argv[1])
for step in range(1000, 1050):
    s.put(sys.argv[2], sys.argv[3], metrics=[["loss", step / 7, 1_700_000_000_000 + step, step]])
os.kill(os.getpid(), signal.SIGKILL)  # with all 50 unsent: the server is down
"""


def test_logging_goes_on_through_an_outage_and_everything_arrives(mlflow_restartable, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_restartable.url)
    run_id = client.create_run(client.create_experiment("sender")).info.run_id
    spool = tmp_path / "spool"
    sender = Sender(str(spool))
    logged: dict[int, tuple[float, int]] = {}

    def log(step: int) -> None:
        value, ts = step / 3, 1_700_000_000_000 + step  # explicit timestamps: they must arrive as logged
        sender.put(mlflow_restartable.url, run_id, metrics=[["loss", value, ts, step], ["lr", 0.1, ts, step]])
        logged[step] = (value, ts)

    for step in range(1, 6):
        log(step)
    # an entry the server refuses (no such run) is kept aside with the reason, and does not hold back the rest
    sender.put(mlflow_restartable.url, "0" * 32, tags={"lost": "yes"})
    assert sender.flush(60) == 0
    rejected = [json.loads(x) for x in (spool / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and "0" * 32 in rejected[0]["entry"]

    mlflow_restartable.stop()
    killed = subprocess.run([sys.executable, "-c", KILLED, str(spool), mlflow_restartable.url, run_id], cwd=PROJECT,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    down_from = time.monotonic()
    sender.longest_put_s = 0.0
    for step in range(6, 6 + BATCH_LINES + 200):  # more than one batch: the rest waits on disk, not in memory
        log(step)
        time.sleep(0.002)
    artifact = tmp_path / "report.json"
    artifact.write_text('{"ok": true}')
    sender.put(mlflow_restartable.url, run_id, tags={"phase": "after"})
    sender.put(mlflow_restartable.url, run_id, artifact=str(artifact), artifact_path="eval")
    artifact.unlink()  # the journal holds its own copy
    print(f"longest log call while the server was down: {sender.longest_put_s * 1000:.2f} ms")
    assert sender.longest_put_s < 0.1
    assert sender.unsent() > BATCH_LINES
    t0 = time.monotonic()
    assert sender.flush(1.0) > 0  # bounded: the server is still down
    assert time.monotonic() - t0 < 3.0

    mlflow_restartable.start()  # same port, same store
    print(f"server down for {time.monotonic() - down_from:.1f} s")
    adopter = Sender(str(spool))  # the next sender on this host takes the killed process's journal
    adopter.start()
    assert sender.flush(120) == 0 and adopter.flush(120, adopted=True) == 0

    history = {m.step: (m.value, m.timestamp) for m in client.get_metric_history(run_id, "loss")}
    assert {s: v for s, v in history.items() if s < 1000} == logged
    assert {s: v for s, v in history.items() if s >= 1000} == {
        s: (s / 7, 1_700_000_000_000 + s) for s in range(1000, 1050)}
    assert len(client.get_metric_history(run_id, "lr")) == len(logged)
    run = client.get_run(run_id)
    assert run.data.tags["phase"] == "after"
    (listed,) = client.list_artifacts(run_id, "eval")
    assert listed.path == "eval/report.json"
    got = client.download_artifacts(run_id, "eval/report.json", str(tmp_path / "dl"))
    assert Path(got).read_text() == '{"ok": true}'
    # the killed process's journal was sent and removed; only this process's own is left
    assert [p.name for p in spool.iterdir() if p.is_dir()] == [sender._own.folder.name]
    assert os.path.getsize(sender._own.entries) > 0


def test_a_uri_with_credentials_is_sent_and_its_password_never_reaches_the_disk(mlflow_restartable, tmp_path,
                                                                                   caplog):
    """The journal keeps the URI without `user:password@`; the sender uses the full one it was given (in memory),
    and the health probe asks the server without them. While the server is down, the warning names it redacted."""
    from mlflow.tracking import MlflowClient

    password = "Sender-Passw0rd-31ab"
    client = MlflowClient(mlflow_restartable.url)
    run_id = client.create_run(client.create_experiment("credentials")).info.run_id
    uri = mlflow_restartable.url.replace("http://", f"http://alice:{password}@")
    spool = tmp_path / "spool"
    sender = Sender(str(spool))
    sender.put(uri, run_id, metrics=[["loss", 1.5, 1_700_000_000_000, 1]])
    assert sender.flush(30) == 0
    mlflow_restartable.stop()
    sender.put(uri, run_id, metrics=[["loss", 1.25, 1_700_000_000_001, 2]])
    with caplog.at_level("WARNING", logger="components.core.mlflow_sender"):
        assert sender.flush(3) == 1  # kept while the server is down
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    mlflow_restartable.start()
    assert sender.flush(60) == 0
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 1.5), (2, 1.25)]
    on_disk = [p.read_bytes() for p in spool.rglob("*") if p.is_file()]
    assert on_disk and not any(password.encode() in b for b in on_disk)
    assert not any(password in r.getMessage() for r in caplog.records)
