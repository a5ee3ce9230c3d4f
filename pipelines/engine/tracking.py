"""MLflow for a pipeline invocation: one parent run, one nested run per stage.

Tracking URI: config `tracking.tracking_uri`, else MLFLOW_TRACKING_URI, else a sqlite file under a local
storage root (`{storage}/mlflow.db`, artifacts in `{storage}/mlartifacts`).

Every run this driver creates carries `driver.host`, `driver.pid` and `driver.started` (the process's start
time), so that a later run can end the runs a killed driver left RUNNING (`end_abandoned_runs`). The driver
also runs this node's background MLflow sender (components/core/mlflow_sender.py), which takes over and sends
what killed processes on this node (a training worker, an earlier driver) kept but had not sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml

from components.core import mlflow_sender, storage
from components.core.fingerprint import flatten
from components.core.lease import Lease
from components.core.mlflow_target import MlflowTarget
from components.core.node_lock import node_lock
from components.core.redact import redact, redact_json
from components.train.spec import deepspeed_config_path
from pipelines.config import PipelineConfig

from .attempts import LEASE_TTL_S
from .console import display_status
from .executor import artifact_dir

log = logging.getLogger(__name__)


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


def driver_tags() -> dict[str, str]:
    """Who runs this pipeline, as tags on its runs: what tells a later run whether this driver is gone."""
    me = psutil.Process()
    return {"driver.host": socket.gethostname(), "driver.pid": str(me.pid), "driver.started": f"{me.create_time():.2f}"}


def _driver_gone(tags: dict[str, str]) -> bool | None:
    """True when the driver named by `tags` no longer runs; None when this host cannot see it (another host)."""
    if tags.get("driver.host") != socket.gethostname():
        return None
    try:
        return f"{psutil.Process(int(tags['driver.pid'])).create_time():.2f}" != tags.get("driver.started")
    except psutil.NoSuchProcess:
        return True
    except (psutil.AccessDenied, ValueError, KeyError):  # another user's live process; malformed tags
        return False


def _stage_lease_lapsed(tags: dict[str, str], driver: dict[str, str], root: str) -> bool:
    """Whether the lease of this stage run's output (under `root`) still names its driver and was not renewed
    for its ttl: the driver stopped while running the stage (a live driver renews it every ttl/4)."""
    if not tags.get("stage") or not tags.get("fingerprint"):
        return False
    lease = Lease(artifact_dir(root, tags["stage"], tags["fingerprint"]).rstrip("/") + ".lease", "reader",
                  ttl_s=LEASE_TTL_S)
    state = lease.current()
    holder = f"{driver.get('driver.host')}:{driver.get('driver.pid')}:"
    return state is not None and str(state.get("holder", "")).startswith(holder) and lease.expired(state)


def end_abandoned_runs(client: Any, experiment_id: str, root: str) -> list[str]:
    """End as KILLED (tag `ended_because`) the runs of the experiment left RUNNING by a driver that is gone;
    the ids ended.

    How a driver is known to be gone. On this host: its pid no longer runs, or runs a process started later
    (`driver.pid`, `driver.started`, read with psutil) — a live concurrent run on this host is never touched.
    Another host's processes are out of sight; there the stage lease is the witness (pipelines/engine/
    attempts.py): a stage run whose output lease (under this run's storage root) still names its driver and
    has not been renewed for the lease's ttl belongs to a driver that stopped, and its parent run and siblings
    go with it. A driver of another host that holds no lease (killed while planning, or while waiting for
    another run's lease) cannot be told from a live one: its runs stay RUNNING, as do runs without driver tags
    (created before these tags existed). A nested run without tags of its own (a sweep trial) is its nearest
    ancestor's driver's.
    """
    running: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000,
                                  page_token=token)
        running.update({r.info.run_id: r for r in page})
        token = page.token
        if not token:
            break
    tags_of: dict[str, dict[str, str]] = {k: dict(r.data.tags) for k, r in running.items()}

    def driver_of(run_id: str) -> dict[str, str] | None:
        for _ in range(4):  # parent -> stage -> trial: a short chain
            tags = tags_of.get(run_id)
            if tags is None:
                try:
                    tags = tags_of[run_id] = dict(client.get_run(run_id).data.tags)
                except Exception:  # noqa: BLE001 - a parent deleted meanwhile: nothing to attribute
                    return None
            if "driver.pid" in tags:
                return {k: tags[k] for k in ("driver.host", "driver.pid", "driver.started") if k in tags}
            if not tags.get("mlflow.parentRunId"):
                return None
            run_id = tags["mlflow.parentRunId"]
        return None

    drivers = {run_id: driver_of(run_id) for run_id in running}
    gone: dict[tuple[str, ...], str] = {}
    for run_id, driver in drivers.items():
        if driver is None:
            continue
        key = tuple(driver.values())
        verdict = _driver_gone(driver)
        if verdict:
            gone[key] = (f"its driver, process {driver['driver.pid']} on {driver['driver.host']}, is no longer "
                         "running")
        elif verdict is None and _stage_lease_lapsed(tags_of[run_id], driver, root):
            gone[key] = (f"its driver on {driver['driver.host']} (pid {driver['driver.pid']}) stopped renewing "
                         f"the lease of stage {tags_of[run_id]['stage']} more than {LEASE_TTL_S:.0f} s ago")
    ended = []
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    for run_id, driver in drivers.items():
        if driver is not None and tuple(driver.values()) in gone:
            client.set_tag(run_id, "ended_because", f"{gone[tuple(driver.values())]} (seen {when} by "
                                                    f"{socket.gethostname()}:{os.getpid()})")
            client.set_terminated(run_id, "KILLED")
            ended.append(run_id)
    return ended


@contextlib.contextmanager
def _store_setup_lock(uri: str) -> Iterator[None]:
    """Two runs started together on a fresh sqlite store would both create its tables and the experiment:
    the first to hold this lock does, the other then finds them."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with node_lock(uri.removeprefix("sqlite:///") + ".lock"):
        yield


class PipelineTracker:
    """Parent run + nested stage runs through MlflowClient (thread-safe, no active-run globals)."""

    def __init__(self, cfg: PipelineConfig, root: str, command: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg, root)
        # MLflow prints "View run ... at: <tracking URI>" as runs end, credentials included; `where` says it
        # once, redacted.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        with _store_setup_lock(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(cfg.tracking.experiment, root)
        mlflow_sender.sender().start()  # sends what killed processes on this node kept (a no-op when none)
        try:
            ended = end_abandoned_runs(self.client, self.experiment_id, root)
        except Exception as e:  # noqa: BLE001 - tidying up after an earlier run must not stop this one
            log.warning("could not check for runs left RUNNING by a killed driver: %s", e)
            ended = []
        if ended:
            log.warning("MLflow: ended %d run(s) left RUNNING by a driver that is gone (see their tag "
                        "ended_because)", len(ended))
        self.driver = driver_tags()
        tags = {"pipeline": cfg.name, "command": redact(command), "storage": redact(root), **self.driver}
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

    def run_url(self, base: str) -> str:
        """The parent run's page under an MLflow UI at `base` (the runs list, not MLflow 3's GenAI view)."""
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.parent}"

    def where(self) -> str:
        """Where a person finds this run: the server's page, or the `mlflow ui` command for a local store."""
        if self.uri.startswith(("http://", "https://")):
            return f"parent run {self.run_url(redact(self.uri))}"
        return (f"open the UI with `mlflow ui --backend-store-uri {redact(self.uri)}`, then "
                f"{self.run_url('http://127.0.0.1:5000')} (one nested run per stage under the parent run)")

    def log_file(self, path: str) -> None:
        """The run's log (what Ray, DeepSpeed and transformers printed) as an artifact of the parent run; the
        caller hands it over redacted (`console.publish_log`)."""
        self.client.log_artifact(self.parent, path, "logs")

    def _experiment(self, name: str, root: str) -> str:
        """The experiment's id, created if needed; a run that created it first (another process) wins."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp:
            return str(exp.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=artifact_location(root)))
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def target(self, run_id: str | None) -> MlflowTarget | None:
        return MlflowTarget(self.uri, run_id) if run_id else None

    def start_stage(self, p: Any) -> str:
        tags = {"mlflow.parentRunId": self.parent, "stage": p.stage.name, "fingerprint": p.fingerprint,
                "cache": "hit" if p.action == "cached" else "miss", "why": "; ".join(p.why)[:5000], **self.driver}
        if p.action == "cached" and p.manifest:
            tags["source_run_id"] = str(p.manifest.get("mlflow_run_id"))
        choices = getattr(p, "choices", None) or {}
        if choices:  # `auto` values this stage took from an upstream output (the sweep's best)
            tags["auto_from"] = p.choices_from
            tags.update({f"auto.{k}": str(v) for k, v in choices.items()})
        tags = {k: redact(v) for k, v in tags.items()}
        run_id = self.client.create_run(self.experiment_id, run_name=p.stage.name, tags=tags).info.run_id
        if choices:
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, redact(str(v))) for k, v in choices.items()])
        return run_id

    def end_stage(self, run_id: str, p: Any, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        metrics = _numeric(result.get("metrics", {}))
        metrics["duration_s"] = float(result["duration_s"])
        batch = [Metric(k, v, 0, 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])
        status = display_status(result)
        self.client.set_tag(run_id, "status", status)
        if p.action == "run" and result["status"] == "cached":  # another run committed it while this one waited
            self.client.set_tag(run_id, "cache", "hit")
            self.client.set_tag(run_id, "source_run_id", str(result.get("source_run_id")))
        if status == "skipped" and result.get("metrics", {}).get("reason"):
            self.client.set_tag(run_id, "skipped_reason", str(result["metrics"]["reason"])[:5000])
        if result.get("error"):
            self.client.set_tag(run_id, "error", redact(result["error"])[:5000])
        self.client.set_terminated(run_id, "FAILED" if result["status"] == "failed" else "FINISHED")

    def finish(self, results: dict[str, dict[str, Any]], diagram_png: bytes | None) -> None:
        from mlflow.entities import Metric

        with tempfile.TemporaryDirectory() as tmp:
            # Round-trip through JSON first so that every string (exception texts included) is redacted.
            stages = redact_json(json.loads(json.dumps(results, default=str)))
            (Path(tmp) / "stages.json").write_text(json.dumps(stages, indent=2))
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
        mlflow_sender.flush_all()  # what stages logged in the background here (evaluate); bounded, the rest kept
