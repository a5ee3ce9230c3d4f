"""`submit | status | logs | stop`: the job spec (fast), then a real two-node Ray cluster on this machine (e2e).

The cluster (tests/cluster/two_node.py) is a `ray start --head --block` subprocess with its own temp dir and
ports plus a worker node in a private mount namespace (its own /tmp and home), so it never meets
the session's `ray_local` (that one is started in-process with the default temp dir; `ray.init()` only
auto-joins the cluster named in its own temp dir's `ray_current_cluster`). These tests never call
`ray.init` themselves: they talk HTTP to the dashboard, as a user's laptop would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from components.core.paths import CONFIG_DIR
from components.core.redact import redact
from pipelines.engine.cli import build_parser, main
from pipelines.engine.job_client import JobError, find_token
from pipelines.engine.jobs import PROJECT_ROOT, build_job_spec, resolve_tracking_uri
from pipelines.engine.tracking import ray_job_id

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAJOBSPECKEYID0001", "AWS_SECRET_ACCESS_KEY": "jobspec-secret-9f3a7c1e",
           "AWS_SESSION_TOKEN": "jobspec-session-5d2b", "MLFLOW_TRACKING_PASSWORD": "jobspec-mlflow-pw-77"}


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No ambient Ray address, MLflow URI or token; HOME without ~/.ray/auth_token."""
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN",
                "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "LLAVA_PIPELINE_JOB_ID", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


# ---------------------------------------------------------------- the job spec (no cluster)


def test_job_spec_carries_settings_not_secrets(clean_env, monkeypatch, tmp_path):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.chdir(tmp_path)
    spec = build_job_spec("tiny", ["storage=relative/runs", "pretrain.max_steps=2"], only=["synth"])
    root = str(tmp_path / "relative" / "runs")
    assert spec.storage == root  # a relative root would land in the job's temporary working dir

    argv = shlex.split(spec.entrypoint)
    assert argv[:4] == ["python", "-m", "pipelines.engine.cli", "run"]
    args = build_parser().parse_args(argv[3:])
    assert args.config == "configs/tiny.yaml" and (PROJECT_ROOT / args.config).is_file()
    assert args.set == ["pretrain.max_steps=2", f"storage={root}"] and args.only == ["synth"]

    env = spec.runtime_env["env_vars"]
    assert env == {"AWS_ENDPOINT_URL": "http://minio.internal:9000", "AWS_DEFAULT_REGION": "eu-west-1",
                   "MLFLOW_S3_ENDPOINT_URL": "http://minio.internal:9000",
                   "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "LLAVA_PIPELINE_JOB_ID": spec.submission_id}
    assert spec.runtime_env["working_dir"] == str(PROJECT_ROOT)
    assert {".?*", "/runs", "__pycache__", "*.egg-info", "*.whl"} <= set(spec.runtime_env["excludes"])
    assert spec.metadata["config"] == "configs/tiny.yaml" and spec.metadata["user"]
    text = json.dumps(asdict(spec))
    for name, secret in SECRETS.items():
        assert secret not in text, name

    assert re.fullmatch(r"llava-tiny-\d{8}-\d{6}-[0-9a-f]{6}", spec.submission_id)
    assert build_job_spec("tiny", []).submission_id != spec.submission_id


def test_tracking_uri_rules(clean_env, monkeypatch):
    with pytest.raises(JobError, match="no MLflow tracking URI is set.*MLFLOW_TRACKING_URI"):
        resolve_tracking_uri(None, "s3://bucket/run")
    assert resolve_tracking_uri("http://mlflow:5000", "s3://bucket/run") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-mlflow:5000")
    assert resolve_tracking_uri(None, "s3://bucket/run") == "http://env-mlflow:5000"
    with pytest.raises(JobError, match="carries a password") as e:
        resolve_tracking_uri("http://alice:hunter2@mlflow:5000", "/tmp/x")
    assert "hunter2" not in str(e.value)


def test_config_outside_project_is_refused(clean_env, tmp_path):
    outside = tmp_path / "mine.yaml"
    shutil.copy(CONFIG_DIR / "tiny.yaml", outside)
    with pytest.raises(JobError, match="outside the project folder.*copy it into configs/"):
        build_job_spec(str(outside), [])


def test_an_installed_copy_is_not_uploaded(clean_env, monkeypatch, tmp_path):
    """A non-editable install's folder is site-packages: submit refuses instead of uploading it."""
    import pipelines.engine.jobs as jobs

    monkeypatch.setattr(jobs, "PROJECT_ROOT", tmp_path)
    with pytest.raises(JobError, match="run submit from a checkout installed with `pip install -e .`"):
        build_job_spec("tiny", [])


def test_token_lookup_follows_ray(clean_env, monkeypatch, tmp_path):
    assert find_token() == (None, "no token found")
    (clean_env / ".ray").mkdir()
    (clean_env / ".ray" / "auth_token").write_text("from-home\n")
    assert find_token() == ("from-home", str(clean_env / ".ray" / "auth_token"))
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert find_token()[0] == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_token()[0] == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert find_token()[0] is None
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(JobError, match="RAY_AUTH_TOKEN_PATH=.*missing: cannot read the token file"):
        find_token()


def test_job_id_from_ray_job_config(clean_env, monkeypatch):
    assert ray_job_id() is None
    # What Ray 2.60 passes to a job's entrypoint (it sets no RAY_JOB_SUBMISSION_ID variable).
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc", "job_name": "raysubmit_abc"}}))
    assert ray_job_id() == "raysubmit_abc"
    monkeypatch.setenv("LLAVA_PIPELINE_JOB_ID", "llava-tiny-1")
    assert ray_job_id() == "llava-tiny-1"


def test_url_passwords_never_reach_mlflow():
    assert redact("run --set tracking.tracking_uri=http://alice:hunter2@mlflow:5000") == (
        "run --set tracking.tracking_uri=http://***@mlflow:5000")
    assert redact("postgresql://u:pw@db/mlflow s3://bucket/run") == "postgresql://***@db/mlflow s3://bucket/run"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_wrong_address_is_one_clear_line(clean_env, tmp_path, capsys):
    argv = ["submit", "tiny", "--set", f"storage={tmp_path}/runs", "--address", "http://127.0.0.1:1"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert err == "llava-pipeline submit: error: cannot reach the Ray dashboard at http://127.0.0.1:1: connection refused"
    assert main(["status", "some-job", "--address", "127.0.0.1:1"]) == 2
    assert "cannot reach the Ray dashboard at http://127.0.0.1:1" in _one_line_error(capsys)


def test_plain_http_to_another_machine_is_refused_before_contacting_it(clean_env, monkeypatch, tmp_path, capsys):
    """The token (and the job spec) would cross the network readable: refused unless --allow-plain-http; https://
    and http:// to this machine (a port-forward or tunnel) are fine. The token is never printed."""
    token, said = "RayToken-6c1e0f9a", []
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)

    def error() -> str:
        said.append(_one_line_error(capsys))
        return said[-1]

    # 0.0.0.0 is not loopback by name, and a connection to it is refused at once (nothing is sent off this machine)
    for argv in (["submit", "tiny", "--set", f"storage={tmp_path}/runs"], ["status", "some-job"],
                 ["logs", "some-job"], ["stop", "some-job"]):
        assert main([*argv, "--address", "http://0.0.0.0:1"]) == 2
        err = error()
        assert "is plain http to another machine" in err and "--allow-plain-http" in err, err
        assert main([*argv, "--address", "http://0.0.0.0:1", "--allow-plain-http"]) == 2
        assert "cannot reach the Ray dashboard at http://0.0.0.0:1" in error()
    assert main(["status", "some-job", "--address", "https://0.0.0.0:1"]) == 2
    assert "cannot reach the Ray dashboard at https://0.0.0.0:1" in error()
    for loopback in ("http://127.0.0.3:1", "http://localhost:1", "http://[::1]:1"):
        assert main(["status", "some-job", "--address", loopback]) == 2
        assert "cannot reach the Ray dashboard" in error()
    assert len(said) == 12 and not any(token in line for line in said)


def test_missing_bucket_is_one_clear_line(clean_env, s3_server, tmp_path, capsys):
    argv = ["submit", "tiny", *_sets(["storage=s3://no-such-bucket/run",
                                      f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]),
            "--address", "http://127.0.0.1:1"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "storage s3://no-such-bucket/run: S3 bucket 'no-such-bucket' does not exist" in err
    assert s3_server in err  # names the endpoint it asked


# ---------------------------------------------------------------- a real two-node cluster (e2e)


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """A head like a user's `ray start --head` (token auth on, the 2.60 default; no CPUs: only the job's
    entrypoint runs there) and a worker node that shares no /tmp or home with it (tests/cluster/two_node.py).
    Started after the S3 server, so both nodes have the AWS environment, as a real cluster's nodes would."""
    from components.train.env import DELAY_ENV
    from tests.cluster.two_node import two_node_cluster

    # Training steps take at least a second on this cluster's nodes (they read the knob from the environment
    # they start with): a node loss then lands mid-training however fast this machine is.
    with pytest.MonkeyPatch.context() as env:
        env.setenv(DELAY_ENV, "1")
        with two_node_cluster(worker_cpus=4) as cluster:
            yield cluster


def _submitted_id(out: str) -> str:
    m = re.search(r"^submitted (\S+) to ", out, re.M)
    assert m, out
    return m.group(1)


@pytest.mark.e2e
def test_the_nodes_share_no_disk(ray_cluster):
    """What the driver writes under /tmp is not there for a task, which runs on the other node."""
    from pipelines.engine.job_client import connect
    from pipelines.engine.jobs import wait_for

    marker = f"/tmp/driver-only-{os.getpid()}-{time.time_ns()}"
    code = "\n".join([
        "import os, ray", "ray.init()", f"open({marker!r}, 'w').close()",
        "def node(): return ray.get_runtime_context().get_node_id()",
        f"seen, where = ray.get(ray.remote(num_cpus=1)(lambda: (os.path.exists({marker!r}), node())).remote())",
        "print('task saw', seen, 'on another node', where != node())"])
    client = connect(ray_cluster.url)
    job_id = client.submit_job(entrypoint=f"python -c {shlex.quote(code)}")
    assert wait_for(client, job_id, poll_s=0.5, timeout_s=300) == 0, client.get_job_logs(job_id)[-3000:]
    assert "task saw False on another node True" in client.get_job_logs(job_id)
    assert os.path.exists(marker)  # the driver (head) shares this machine's /tmp; the worker does not
    os.unlink(marker)


@pytest.mark.e2e
def _lose_the_worker_after_a_checkpoint(cluster, fs, train_root: str, done: threading.Event, log: list) -> None:
    """Once pretrain's first checkpoint is registered (Ray Train's snapshot names it), the worker node dies
    (SIGKILL of all its processes), and a replacement node joins."""
    while not done.is_set():
        with contextlib.suppress(OSError, ValueError):
            fs.invalidate_cache()
            snapshots = [p for p in fs.find(train_root) if p.endswith("checkpoint_manager_snapshot.json")
                         and "/pretrain" in p]
            if any(json.loads(fs.cat(p)).get("latest_checkpoint_result") for p in snapshots):
                break
        time.sleep(0.3)
    else:
        return
    started = time.monotonic()
    cluster.lose_worker()
    log.append(f"worker node lost at +{time.monotonic() - started:.1f} s")
    ip = cluster.join_replacement()
    log.append(f"replacement node {ip} joined after {time.monotonic() - started:.1f} s")


def test_submit_wait_runs_the_pipeline_on_two_nodes(ray_cluster, mlflow_server, tmp_path, capsys, monkeypatch):
    """`submit --wait` of the tiny pipeline (every stage, every benchmark, export) to a cluster whose nodes share
    only the S3 storage root and the MLflow server. A stage that handed a driver path to the worker fails here:
    its images would be missing there. Training is cut to a few steps: what two nodes can break is where
    things are read and written, not what a model learns (the learning check runs in CI's default run,
    `.ci/run`).

    Mid-pretrain the worker node is lost (every process of it SIGKILLed) and a replacement joins: the job goes
    on by itself. Ray Train sees its workers die, restarts the worker group once the new node has room (its
    controller runs on the head, with the driver) and resumes from the last checkpoint in S3; the stages after
    it run on the new node. Work lost: the steps since that checkpoint (at most pretrain.checkpoint_every)."""
    import s3fs
    from mlflow.tracking import MlflowClient

    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "LLAVA_PIPELINE_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    bucket = f"two-node-{tmp_path.name.lower().replace('_', '-')}"[:60]
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(bucket)
    storage, experiment = f"s3://{bucket}/run", f"two-node-{tmp_path.name}"
    started, done, faults = time.monotonic(), threading.Event(), []
    fault = threading.Thread(target=_lose_the_worker_after_a_checkpoint,
                             args=(ray_cluster, fs, f"{bucket}/run/ray_train", done, faults), daemon=True)
    fault.start()
    try:
        rc = main(["submit", "tiny", *_sets([f"storage={storage}", f"tracking.experiment={experiment}",
                                             "data.synth.size=micro",  # every benchmark, a tenth of the data
                                             "pretrain.epochs=4", "pretrain.max_steps=10",
                                             "pretrain.checkpoint_every=2",
                                             "finetune.max_steps=4"]),
                   "--address", ray_cluster.url, "--wait", "--poll", "2", "--timeout", "1800"])
    finally:
        done.set()
        fault.join(timeout=300)
    wall = time.monotonic() - started
    out = capsys.readouterr().out
    print(f"\n[two-node submit --wait] the tiny pipeline as a Ray job: {wall:.0f} s; " + "; ".join(faults))
    assert len(faults) == 2, faults  # the node was lost mid-pretrain and replaced
    job_id = _submitted_id(out)
    assert rc == 0, out[-5000:]
    assert f"job {job_id} SUCCEEDED" in out and "evaluate.gqa" in out  # the job's own log, streamed

    # Ray's own CLI agrees (it needs RAY_AUTH_MODE=token to send the token; ours found it by itself).
    ray_cli = str(Path(sys.executable).parent / "ray")
    status = subprocess.run([ray_cli, "job", "status", job_id, "--address", ray_cluster.url], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "token"})
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    assert exp.artifact_location == f"{storage}/mlartifacts"  # the client uploads straight to S3
    (parent,) = client.search_runs([exp.experiment_id], f"tags.ray_job_id = '{job_id}'")
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline"] == "tiny"
    stages = {r.data.tags["stage"]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=100)}
    assert {"synth", "prepare", "pretrain", "finetune", "export"} <= set(stages), sorted(stages)
    assert all(r.info.status == "FINISHED" for r in stages.values()), {k: r.info.status for k, r in stages.items()}
    gqa = stages["evaluate.gqa"].data.metrics
    assert {"accuracy", "blank_images_accuracy"} <= set(gqa), gqa  # scored, blank-image pass included
    assert stages["finetune"].data.metrics["steps"] == 4
    # pretrain went on from its last checkpoint: every step done, the lost ones (≤ checkpoint_every) redone
    pretrain = stages["pretrain"].data
    assert pretrain.metrics["steps"] == 10 and pretrain.metrics["resumed_from_step"] in (2, 4, 6, 8), pretrain.metrics
    assert int(pretrain.tags["pretrain.restarts"]) >= 1

    # Every question was asked: a generation actor on the worker opened every image (a driver path would
    # leave them missing there, each rejected with a reason).
    fs.invalidate_cache()
    evaluated = [p for p in fs.find(f"{bucket}/run/artifacts") if p.endswith("/metrics.json") and "/evaluate." in p]
    results = [json.loads(fs.cat(p)) for p in evaluated]
    generated = [r for r in results if r.get("status") != "skipped"]
    assert len(generated) >= 10, [p for p in evaluated]
    assert all(r["n_rejected"] == 0 and r["n_missing"] == 0 for r in generated), [
        (r["benchmark"], r["n_rejected"], r.get("rejected_by_reason")) for r in generated if r["n_rejected"]]
    # Export's parity prompts came from the benchmark folders (with their images), not the fallback.
    (parity,) = [json.loads(fs.cat(p)) for p in fs.find(f"{bucket}/run/artifacts") if p.endswith("/parity.json")]
    assert parity["ok"] is True, parity
    assert {it["source"] for it in parity["items"]} & {"gqa", "pope", "mme"}, parity["items"]
    assert not any(it["source"].endswith(":answers") for it in parity["items"]), parity["items"]
    assert fs.find(f"{bucket}/run/mlartifacts"), "no MLflow artifact reached S3"


@pytest.mark.e2e
def test_status_logs_stop_and_clear_errors(ray_cluster, clean_env, capsys, monkeypatch):
    from pipelines.engine.job_client import connect
    from pipelines.engine.jobs import wait_for

    url = ray_cluster.url
    assert main(["status", "whatever", "--address", url]) == 2  # clean_env: no token anywhere
    err = _one_line_error(capsys)
    assert f"the Ray cluster at {url} requires an auth token and none was found" in err
    assert "RAY_AUTH_TOKEN" in err and "~/.ray/auth_token" in err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert main(["status", "whatever", "--address", url]) == 2
    assert "rejected the auth token from RAY_AUTH_TOKEN" in _one_line_error(capsys)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_cluster.token_file))

    assert main(["status", "nope", "--address", url]) == 2
    assert f"no job 'nope' on the Ray cluster at {url}" in _one_line_error(capsys)

    client = connect(url)
    job_id = client.submit_job(entrypoint="echo hello-from-job; sleep 300")
    for _ in range(240):
        if "hello-from-job" in client.get_job_logs(job_id):
            break
        time.sleep(0.5)
    assert main(["logs", job_id, "--address", url]) == 0
    assert "hello-from-job" in capsys.readouterr().out
    assert main(["stop", job_id, "--address", url]) == 0
    assert f"stop requested for job {job_id}" in capsys.readouterr().out
    assert wait_for(client, job_id, poll_s=0.5, timeout_s=120) == 1  # stopped is not success
    assert f"job {job_id} STOPPED" in capsys.readouterr().err
    assert main(["status", job_id, "--address", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "STOPPED"


def test_the_judge_settings_travel_with_the_job_but_not_its_key(clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv("LLAVA_JUDGE_BASE_URL", "http://judge.internal:8000/v1")
    monkeypatch.setenv("LLAVA_JUDGE_MODEL", "gpt-4-0613")
    monkeypatch.setenv("LLAVA_JUDGE_API_KEY", "sk-judge-never-in-the-spec")
    spec = build_job_spec("tiny", [f"storage={tmp_path}/runs"])
    env = spec.runtime_env["env_vars"]
    assert env["LLAVA_JUDGE_BASE_URL"] == "http://judge.internal:8000/v1"
    assert env["LLAVA_JUDGE_MODEL"] == "gpt-4-0613" and "LLAVA_JUDGE_API_KEY" not in env
    assert "sk-judge" not in json.dumps(asdict(spec))
    assert any("LLAVA_JUDGE_API_KEY is not sent" in w for w in spec.warnings)
    monkeypatch.setenv("LLAVA_JUDGE_BASE_URL", "http://user:pw@judge.internal:8000/v1")
    with pytest.raises(JobError, match="judge endpoint judge.internal carries a password"):
        build_job_spec("tiny", [f"storage={tmp_path}/runs"])
