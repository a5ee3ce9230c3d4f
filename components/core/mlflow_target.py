"""Where a stage logs in MLflow: a tracking URI and a run id, passed down from the pipeline.

Stages (and their Ray workers) log through `MlflowClient` against an explicit run, so nested runs work
from any process and nothing depends on MLflow's thread-local "active run".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from components.core.redact import redact


@dataclass(frozen=True)
class MlflowTarget:
    tracking_uri: str
    run_id: str

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if batch:
            self.client().log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        client = self.client()
        for k, v in tags.items():
            client.set_tag(self.run_id, k, redact(str(v)))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.client().log_artifact(self.run_id, local_path, artifact_path)
