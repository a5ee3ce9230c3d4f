"""Where a stage logs in MLflow: a tracking URI and a run id, passed down from the pipeline.

Stages (and their Ray workers) log through `MlflowClient` against an explicit run, so nested runs work
from any process and nothing depends on MLflow's thread-local "active run".

`background=True` (training steps, the evaluate stage) only appends the entry to this process's journal and
returns; the process's sender (mlflow_sender.py) delivers it, through outages of the server, and `flush()` waits
for it a bounded time at a stage's end. Without it a call goes to the server at once, as callers that read the
run back right away (the sweep, the export's registration) expect.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from components.core.mlflow_sender import FLUSH_TIMEOUT_S, sender
from components.core.redact import redact


@dataclass(frozen=True)
class MlflowTarget:
    tracking_uri: str
    run_id: str
    spool: str | None = None  # where this node keeps unsent background entries (None: the sender's default)

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *, background: bool = False) -> None:
        now = int(time.time() * 1000)  # the time of the call, however late the entry is sent
        batch = [[k, float(v), now, step or 0] for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if not batch:
            return
        if background:
            sender(self.spool).put(self.tracking_uri, self.run_id, metrics=batch)
            return
        from mlflow.entities import Metric

        self.client().log_batch(self.run_id, metrics=[Metric(*m) for m in batch])

    def set_tags(self, tags: dict[str, Any], *, background: bool = False) -> None:
        clean = {k: redact(str(v)) for k, v in tags.items()}
        if background:
            if clean:
                sender(self.spool).put(self.tracking_uri, self.run_id, tags=clean)
            return
        client = self.client()
        for k, v in clean.items():
            client.set_tag(self.run_id, k, v)

    def log_artifact(self, local_path: str, artifact_path: str | None = None, *, background: bool = False) -> None:
        if background:  # the file is copied into the journal now: the caller may remove it
            sender(self.spool).put(self.tracking_uri, self.run_id, artifact=local_path, artifact_path=artifact_path)
            return
        self.client().log_artifact(self.run_id, local_path, artifact_path)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> int:
        """Wait up to `timeout_s` for this process's background entries to reach the server; how many did not
        (they stay kept on this node and are sent later: mlflow_sender.py)."""
        return sender(self.spool).flush(timeout_s)
