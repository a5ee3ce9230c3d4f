"""MLflow for a pipeline invocation: one parent run, one nested run per stage.

Tracking URI: config `tracking.tracking_uri`, else MLFLOW_TRACKING_URI, else a sqlite file under a local
storage root (`{storage}/mlflow.db`, artifacts in `{storage}/mlartifacts`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from components.core import storage
from components.core.config import PipelineConfig, deepspeed_config_path
from components.core.fingerprint import flatten
from components.tracking import MlflowTarget


def tracking_uri(cfg: PipelineConfig, root: str) -> str:
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_remote(root):
        local = Path.home() / ".llava-pipeline" / "mlflow.db"
        local.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{local}"
    Path(root).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*):[^/@\s]*@")


def redact(text: str) -> str:
    """`scheme://user:password@host` loses its password before it reaches MLflow (params, tags, config)."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def ray_job_id() -> str | None:
    """The Ray Jobs submission id of this process, if it is a job's entrypoint.

    `llava-pipeline submit` sets LLAVA_PIPELINE_JOB_ID. Ray itself sets no id variable in the entrypoint's
    environment (2.60); the id is in the job config it passes, RAY_JOB_CONFIG_JSON_ENV_VAR's
    metadata.job_submission_id, which also covers `ray job submit` and KubeRay RayJobs.
    """
    if os.environ.get("LLAVA_PIPELINE_JOB_ID"):
        return os.environ["LLAVA_PIPELINE_JOB_ID"]
    try:
        job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return None
    job_id = (job_config.get("metadata") or {}).get("job_submission_id") if isinstance(job_config, dict) else None
    return str(job_id) if job_id else None


def artifact_location(root: str) -> str:
    return storage.join(root, "mlartifacts") if storage.is_remote(root) else str(Path(root).resolve() / "mlartifacts")


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in flatten(metrics).items():
        if isinstance(v, int | float):  # bool is an int: logged as 0/1
            out[k] = float(v)
    return out


class PipelineTracker:
    """Parent run + nested stage runs through MlflowClient (thread-safe, no active-run globals)."""

    def __init__(self, cfg: PipelineConfig, root: str, command: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg, root)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(cfg.tracking.experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            cfg.tracking.experiment, artifact_location=artifact_location(root))
        tags = {"pipeline": cfg.name, "command": redact(command), "storage": redact(root)}
        job = ray_job_id()
        if job:
            tags["ray_job_id"] = job
        self.parent = self.client.create_run(self.experiment_id, run_name=f"{cfg.name}", tags=tags).info.run_id
        params = {k: redact(str(v))[:500] for k, v in flatten(cfg.model_dump(mode="json")).items()}
        items = list(params.items())
        from mlflow.entities import Param

        for i in range(0, len(items), 100):
            self.client.log_batch(self.parent, params=[Param(k, v) for k, v in items[i:i + 100]])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.yaml").write_text(redact(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)))
            for stage in (cfg.pretrain, cfg.finetune):
                src = deepspeed_config_path(stage)
                dst = Path(tmp) / "deepspeed" / src.name
                dst.parent.mkdir(exist_ok=True)
                dst.write_text(src.read_text())
            self.client.log_artifacts(self.parent, tmp, "config")

    def target(self, run_id: str | None) -> MlflowTarget | None:
        return MlflowTarget(self.uri, run_id) if run_id else None

    def start_stage(self, p: Any) -> str:
        tags = {"mlflow.parentRunId": self.parent, "stage": p.stage.name, "fingerprint": p.fingerprint,
                "cache": "hit" if p.action == "cached" else "miss", "why": "; ".join(p.why)[:5000]}
        if p.action == "cached" and p.manifest:
            tags["source_run_id"] = str(p.manifest.get("mlflow_run_id"))
        choices = getattr(p, "choices", None) or {}
        if choices:  # `auto` values this stage took from an upstream output (the sweep's best)
            tags["auto_from"] = p.choices_from
            tags.update({f"auto.{k}": str(v) for k, v in choices.items()})
        run_id = self.client.create_run(self.experiment_id, run_name=p.stage.name, tags=tags).info.run_id
        if choices:
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in choices.items()])
        return run_id

    def end_stage(self, run_id: str, p: Any, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        metrics = _numeric(result.get("metrics", {}))
        metrics["duration_s"] = float(result["duration_s"])
        batch = [Metric(k, v, 0, 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])
        self.client.set_tag(run_id, "status", result["status"])
        if result.get("error"):
            self.client.set_tag(run_id, "error", result["error"][:5000])
        self.client.set_terminated(run_id, "FAILED" if result["status"] == "failed" else "FINISHED")

    def finish(self, results: dict[str, dict[str, Any]], diagram_png: bytes | None) -> None:
        from mlflow.entities import Metric

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "stages.json").write_text(json.dumps(results, indent=2, default=str))
            if diagram_png:
                (Path(tmp) / "dag.png").write_bytes(diagram_png)
            self.client.log_artifacts(self.parent, tmp)
        metrics = []
        for name, r in results.items():
            for k, v in _numeric(r.get("metrics", {})).items():
                metrics.append(Metric(f"{name}/{k}", v, 0, 0))
        for i in range(0, len(metrics), 500):
            self.client.log_batch(self.parent, metrics=metrics[i:i + 500])
        failed = any(r["status"] == "failed" for r in results.values())
        self.client.set_terminated(self.parent, "FAILED" if failed else "FINISHED")
