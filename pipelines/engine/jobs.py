"""`llava-pipeline submit | status | logs | stop`: run the pipeline as a Ray Job on a cluster.

`submit` uploads this project folder as the job's `working_dir` and runs
`python -m pipelines.engine.cli run <config> --set ...` there, so the cluster needs the project's dependencies
(the image in cluster/Dockerfile) but not the project itself, and the code that runs is the code uploaded.
`python` is whatever the PATH of the cluster's `ray start` finds.

Secrets never travel in the job spec: S3 and MLflow credentials come from the cluster's own environment
(instance role, Kubernetes secret); only endpoints, regions, the tracking URI and the storage root are sent.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from components.core import storage
from components.core.config import resolve_path
from components.core.paths import CONFIG_DIR
from components.core.redact import is_loopback, redact, redact_json
from pipelines.config import load_config

from .artifacts import storage_root
from .job_client import JobError, connect, follow, job_errors

PROJECT_ROOT = CONFIG_DIR.parent
# Not uploaded (gitignore syntax, relative to the project folder): hidden files and folders (.git, .venv,
# .env, caches; `.?*` because `.*` would also match the root "."), run outputs, build products, weights
# and data files.
EXCLUDES = [".?*", "/runs", "__pycache__", "*.egg-info", "/build", "/dist", "/mlruns", "/mlartifacts", "/data",
            "*.db", "*.whl", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.parquet", "*.arrow",
            "*.tar", "*.tar.gz", "*.zip"]
# Non-secret settings that tell the job where S3 is; credentials stay with the cluster.
PASS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "MLFLOW_S3_ENDPOINT_URL")
AGENT_RETRIES = 20  # a freshly started head answers "No available agent" for a few seconds


@dataclass
class JobSpec:
    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    storage: str
    tracking_uri: str
    warnings: list[str] = field(default_factory=list)


def _project_config(config: str) -> str:
    """The config's path relative to the uploaded project folder (the job reads it from there)."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():  # an installed copy: its folder is site-packages
        raise JobError(f"submit uploads your project checkout as the job's code, but llava-pipeline is installed "
                       f"(from {PROJECT_ROOT}); run submit from a checkout installed with `pip install -e .`")
    path = resolve_path(config).resolve()
    try:
        return path.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        raise JobError(f"config {path} is outside the project folder {PROJECT_ROOT}, the folder the job gets; "
                       "copy it into configs/") from None


def _judge_env(warnings: list[str]) -> dict[str, str]:
    """The GPT judge's settings for the job (they are part of the judged benchmarks' fingerprints). Its key is
    a secret: like the S3 and MLflow credentials it comes from the cluster's own environment."""
    from components.evaluate.judge import ENV_API_KEY, ENV_BASE_URL, ENV_MAX_RETRIES, ENV_MODEL, ENV_TIMEOUT

    env = {k: os.environ[k] for k in (ENV_BASE_URL, ENV_MODEL, ENV_TIMEOUT, ENV_MAX_RETRIES) if os.environ.get(k)}
    if ENV_BASE_URL in env:
        _no_password("judge endpoint", env[ENV_BASE_URL], f"give the cluster {ENV_API_KEY} instead")
    if os.environ.get(ENV_API_KEY):
        warnings.append(f"{ENV_API_KEY} is not sent with the job: set it in the cluster's environment "
                        "(e.g. a Kubernetes secret on the Ray pods)")
    return env


def _no_password(what: str, uri: str, fix: str) -> None:
    try:
        has_password = urlsplit(uri).password is not None
    except ValueError:
        has_password = False
    if has_password:
        raise JobError(f"{what} {urlsplit(uri).hostname or ''} carries a password; credentials must not travel in "
                       f"the job spec: {fix}")


def resolve_tracking_uri(tracking_uri: str | None, root: str) -> str:
    """The MLflow URI the job will use: config, else MLFLOW_TRACKING_URI, else sqlite under a local root."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        if storage.is_remote(root):
            raise JobError(
                f"storage is {root} but no MLflow tracking URI is set, so the job would log to a sqlite file on "
                "whichever node runs it; set MLFLOW_TRACKING_URI=http://MLFLOW-HOST:5000 (or --set "
                "tracking.tracking_uri=...), or sqlite:////PATH/mlflow.db on a filesystem the head node keeps")
        uri = f"sqlite:///{Path(root) / 'mlflow.db'}"
    _no_password("MLflow tracking URI", uri,
                 "give the cluster MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    return uri


def check_bucket(root: str) -> str | None:
    """Fail now if an s3:// storage root's bucket does not exist; a warning when it cannot be checked here."""
    if not root.startswith("s3://"):
        return None
    fs, inner = storage.filesystem(root)
    bucket = inner.split("/", 1)[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f" at {endpoint}" if endpoint else ""
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise JobError(f"storage {root}: S3 bucket {bucket!r} does not exist{where}; create it "
                       f"(aws s3 mb s3://{bucket}) or change `storage`") from None
    except Exception as e:  # no local credentials, access denied, endpoint unreachable from here
        return (f"could not check S3 bucket {bucket!r} from here ({type(e).__name__}: {str(e)[:120]}); "
                "the cluster's own credentials decide")
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # containers without a passwd entry
        return os.environ.get("USER", "unknown")


def build_job_spec(config: str, overrides: list[str], *, only: list[str] | None = None,
                   from_: list[str] | None = None, force: list[str] | None = None) -> JobSpec:
    """Everything `submit` sends, checked locally first (config, storage bucket, tracking URI)."""
    cfg = load_config(config, overrides)  # a bad config fails here, not minutes later on the cluster
    rel_config = _project_config(config)
    root = storage_root(cfg)
    warnings = []
    if storage.is_remote(root):
        _no_password("storage root", root, "give the cluster its credentials through its environment")
        warning = check_bucket(root)
        if warning:
            warnings.append(warning)
    else:  # the job runs in a temporary folder; a relative root would vanish with it
        root = str(Path(root).expanduser().resolve())
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, root)
    submission_id = f"llava-{_slug(cfg.name)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"

    args = ["python", "-m", "pipelines.engine.cli", "run", rel_config]
    kept = [o for o in overrides if o.split("=", 1)[0].strip() != "storage"]  # replaced by the resolved root
    for item in [*kept, f"storage={root}"]:
        args += ["--set", item]
    for flag, names in (("--only", only), ("--from", from_), ("--force", force)):
        for name in names or []:
            args += [flag, name]

    env = {k: os.environ[k] for k in PASS_ENV if os.environ.get(k)}
    env.update(_judge_env(warnings))
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:  # MLflow's S3 artifact store has its own endpoint setting
        env.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)
    env.update(MLFLOW_TRACKING_URI=uri, LLAVA_PIPELINE_JOB_ID=submission_id)
    return JobSpec(
        submission_id=submission_id,
        entrypoint=shlex.join(args),
        runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": list(EXCLUDES), "env_vars": env},
        metadata={"config": rel_config, "user": _user(), "pipeline": cfg.name, "storage": root},
        storage=root, tracking_uri=uri, warnings=warnings,
    )


def _submit(client: Any, spec: JobSpec) -> None:
    for attempt in range(AGENT_RETRIES):
        try:
            with job_errors(client, spec.submission_id):
                client.submit_job(entrypoint=spec.entrypoint, submission_id=spec.submission_id,
                                  runtime_env=spec.runtime_env, metadata=spec.metadata)
            return
        except JobError as e:
            if "No available agent" not in str(e) or attempt == AGENT_RETRIES - 1:
                raise JobError(f"submitting to {client.get_address()} failed: {e}") from None
            time.sleep(1.5)


def _address_flag(client: Any) -> str:
    return f" --address {redact(client.get_address())}"


def _interrupted(client: Any, job_id: str) -> int:
    print(f"\nstopped following job {job_id}; it keeps running (`llava-pipeline stop {job_id}"
          f"{_address_flag(client)}` stops it)", file=sys.stderr)
    return 130


def wait_for(client: Any, job_id: str, *, poll_s: float, timeout_s: float) -> int:
    """Stream logs until the job ends; 0 when it succeeded, 1 when it failed, stopped or is still running."""
    started = time.monotonic()
    try:
        status = follow(client, job_id, poll_s=poll_s, timeout_s=timeout_s)
    except KeyboardInterrupt:
        return _interrupted(client, job_id)
    took = time.monotonic() - started
    if not status.is_terminal():
        print(f"job {job_id} still {status.value} after {took:.0f} s (not stopped); follow it with "
              f"`llava-pipeline logs {job_id} --follow{_address_flag(client)}`", file=sys.stderr)
        return 1
    with job_errors(client, job_id):
        info = client.get_job_info(job_id)
    line = f"job {job_id} {status.value} after {took:.0f} s"
    if status.value != "SUCCEEDED":
        message = (info.message or "").strip()
        print(redact(f"{line}: {message.splitlines()[0] if message else 'no message'}"), file=sys.stderr)
        return 1
    print(line)
    return 0


def submit(config: str, overrides: list[str], *, address: str | None, wait: bool, only: list[str] | None = None,
           from_: list[str] | None = None, force: list[str] | None = None, poll_s: float = 5.0,
           timeout_s: float = 48 * 3600, allow_plain_http: bool = False) -> int:
    spec = build_job_spec(config, overrides, only=only, from_=from_, force=force)
    client = connect(address, allow_plain_http=allow_plain_http)
    for w in spec.warnings:
        print(f"warning: {redact(w)}", file=sys.stderr)
    host = urlsplit(client.get_address()).hostname or ""
    if not storage.is_remote(spec.storage) and not is_loopback(host):
        print(f"warning: storage {spec.storage} is a local path; every node of the cluster must see it "
              "(a shared filesystem), else use s3://", file=sys.stderr)
    _submit(client, spec)
    print(f"submitted {spec.submission_id} to {redact(client.get_address())}")
    print(f"  entrypoint: {redact(spec.entrypoint)}")
    print(f"  storage:    {redact(spec.storage)}")
    print(f"  MLflow:     {redact(spec.tracking_uri)}")
    print(f"  follow:     llava-pipeline logs {spec.submission_id} --follow{_address_flag(client)}", flush=True)
    if not wait:
        return 0
    return wait_for(client, spec.submission_id, poll_s=poll_s, timeout_s=timeout_s)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def show_status(job_id: str, *, address: str | None, as_json: bool, allow_plain_http: bool = False) -> int:
    client = connect(address, allow_plain_http=allow_plain_http)
    with job_errors(client, job_id):
        info = client.get_job_info(job_id)
    fields = {"submission_id": info.submission_id or job_id, "status": info.status.value, "message": info.message,
              "entrypoint": info.entrypoint, "metadata": info.metadata or {}, "start_time": info.start_time,
              "end_time": info.end_time, "driver_exit_code": info.driver_exit_code}
    if as_json:
        print(json.dumps(redact_json(fields)))
        return 0
    print(f"job {fields['submission_id']}: {fields['status']}")
    for key in ("message", "entrypoint"):
        if fields[key]:
            print(redact(f"  {key + ':':12s}{fields[key]}"))
    for key, value in sorted(fields["metadata"].items()):
        print(redact(f"  {key + ':':12s}{value}"))
    print(f"  {'started:':12s}{_when(info.start_time)}   ended: {_when(info.end_time)}")
    return 0


def show_logs(job_id: str, *, address: str | None, follow_logs: bool, poll_s: float = 5.0,
              allow_plain_http: bool = False) -> int:
    client = connect(address, allow_plain_http=allow_plain_http)
    if follow_logs:
        try:
            follow(client, job_id, poll_s=poll_s)
        except KeyboardInterrupt:
            return _interrupted(client, job_id)
        return 0
    with job_errors(client, job_id):
        sys.stdout.write(redact(client.get_job_logs(job_id)))
    return 0


def stop(job_id: str, *, address: str | None, allow_plain_http: bool = False) -> int:
    client = connect(address, allow_plain_http=allow_plain_http)
    with job_errors(client, job_id):
        stopped = client.stop_job(job_id)
        status = client.get_job_status(job_id).value
    print(f"stop requested for job {job_id}" if stopped else f"job {job_id} already ended ({status})")
    return 0
