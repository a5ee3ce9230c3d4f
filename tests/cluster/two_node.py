"""A two-node Ray cluster on one machine whose nodes share no local disk (root only; Linux mount namespaces).

The head (`--num-cpus 0`: the job's entrypoint, hence the pipeline's driver, runs there, and no task or actor
that needs a CPU can) runs in this machine's namespaces. The worker node runs inside its own mount namespace
(`unshare --mount --propagation private`) with private tmpfs mounts over /tmp and $HOME: nothing the driver
writes under /tmp or ~ (caches, temporary copies) is visible to the worker, and the other way round. The
project's code, venv and Python installation stay shared (bound back in where they live under $HOME), as a
cluster image would have them; so does a DeepSpeed op cache in `TORCH_EXTENSIONS_DIR` (an image would bake
the built ops). Each node binds and advertises its own loopback address (HEAD_IP, WORKER_IP); the dashboard
listens on 127.0.0.1. The only storage the nodes share is what the caller passes (an `s3://` root). Stopped
by PID (the worker's leftovers by mount namespace), never `ray stop`.

    with two_node_cluster() as cluster:   # cluster.url: the dashboard / job API
        ...
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Loopback addresses, one per node. Not the literal 127.0.0.1: `ray start` swaps that (and "localhost") for
# the machine's network address, and a worker node cannot opt out (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 would
# keep it, but refuses to start non-head nodes). Every address in 127.0.0.0/8 is this machine's loopback.
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
REPLACEMENT_IPS = ("127.0.0.4", "127.0.0.5", "127.0.0.6")  # a node that replaces a lost one: a new machine
# Shared by both nodes, outside /tmp and $HOME: what a cluster image would bake in (built once, then reused).
DEFAULT_TORCH_EXTENSIONS_DIR = "/var/tmp/llava-pipeline-torch-extensions"


@dataclass(frozen=True)
class Cluster:
    url: str  # the head's dashboard: job submission
    token_file: Path  # where `ray start` keeps the token: ~/.ray/auth_token of the user who started it
    worker_mount_ns: str = ""  # the worker node's mount namespace (/proc/<pid>/ns/mnt), "" for a single node
    # lose_worker(): SIGKILL everything of the worker node (raylet, its workers, `ray start`), as a machine that
    # dies; join_replacement(): a new worker node (another address, fresh /tmp and ~) joins; returns its IP.
    lose_worker: Callable[[], None] | None = None
    join_replacement: Callable[[], str] | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray() -> str:
    return str(Path(sys.executable).parent / "ray")


def _node_env(extensions_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the entrypoint's `python`
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["TORCH_EXTENSIONS_DIR"] = extensions_dir
    return env


def _processes(match) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if match(proc):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def _kill(procs: list) -> None:
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=20)


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM `ray start --block` (it drains the node and stops its daemons; signalling them too breaks that)."""
    try:
        proc.terminate()
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def stop_node(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop one `ray start --block` node, then SIGKILL what is left of *this* node only (processes naming its
    temp dir: daemons that left its process group) — never `ray stop`, which kills every Ray on the host."""
    _terminate(proc)
    _kill(_processes(lambda p: any(temp_dir in part for part in p.info["cmdline"] or [])))


def _alive_node_ips(url: str, token: str) -> set[str]:
    import json

    request = urllib.request.Request(url + "/api/v0/nodes?limit=100",
                                     headers={"Authorization": f"Bearer {token}"})
    nodes = json.loads(urllib.request.urlopen(request, timeout=5).read())["data"]["result"]["result"]
    return {n["node_ip"] for n in nodes if n["state"] == "ALIVE"}


def _in_namespace(mount_ns: str):
    """A `_processes` match: the process runs in that mount namespace (the worker node's)."""
    return lambda p: os.readlink(f"/proc/{p.pid}/ns/mnt") == mount_ns


def _lose(proc: subprocess.Popen, mount_ns: str) -> None:
    """Everything of one worker node at once, by SIGKILL (no draining: a machine that dies)."""
    _kill(_processes(_in_namespace(mount_ns)))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _stop_worker(proc: subprocess.Popen, mount_ns: str) -> None:
    """The worker node, then whatever still runs in its mount namespace (its /tmp is private: processes there
    cannot be told apart by temp dir from another Ray's, but by namespace they can)."""
    _terminate(proc)
    if mount_ns:
        _kill(_processes(_in_namespace(mount_ns)))


def wait_until_ready(proc: subprocess.Popen, url: str, log: Path, token_file: Path, limit_s: float = 240) -> None:
    """Until the dashboard answers and a first job runs (the job agent comes up after the dashboard)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray head at {url} was not ready within {limit_s:.0f} s")
        try:
            urllib.request.urlopen(url + "/api/gcs_healthz", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
    while True:
        try:
            job = client.submit_job(entrypoint="true")
            break
        except (RuntimeError, OSError):  # "No available agent to submit job"; a busy head dropping connections
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    while not client.get_job_status(job).is_terminal():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm-up job on {url} did not finish within {limit_s:.0f} s")
        time.sleep(0.5)


def _own_namespace(proc: subprocess.Popen) -> str:
    """The worker's mount namespace, once `unshare` has switched to it."""
    for _ in range(100):
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{proc.pid}/ns/mnt")
            if ns != os.readlink("/proc/self/ns/mnt"):
                return ns
        time.sleep(0.05)
    raise RuntimeError("the worker node did not get its own mount namespace")


def _wait_for_worker(proc: subprocess.Popen, url: str, token: str, log: Path, cpus: int, limit_s: float) -> None:
    """Until the cluster reports the worker's CPUs (the head has none)."""
    import json

    deadline = time.monotonic() + limit_s
    request = urllib.request.Request(url + "/api/cluster_status", headers={"Authorization": f"Bearer {token}"})
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker node exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            status = json.loads(urllib.request.urlopen(request, timeout=5).read())
            total = status["data"]["clusterStatus"]["loadMetricsReport"]["usage"].get("CPU", [0, 0])[1]
            if total >= cpus:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker node did not join {url} within {limit_s:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(1)


def _start_head(env: dict[str, str], temp_dir: str, num_cpus: int) -> tuple[subprocess.Popen, str, int]:
    dash, gcs = free_port(), free_port()
    cmd = [_ray(), "start", "--head", "--num-cpus", str(num_cpus), "--block", "--node-ip-address", HEAD_IP,
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--port", str(gcs),
           # Another Ray on this host may hold the fixed default ports of these two.
           "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
           "--temp-dir", temp_dir]
    log = open(Path(temp_dir) / "ray_start.log", "w")  # noqa: SIM115 - the child keeps it; closed by the OS
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc, f"http://127.0.0.1:{dash}", gcs


def _image_paths(hidden: list[str]) -> list[str]:
    """What a cluster image would hold but lives under a folder the worker must not share here (a pyenv Python
    under ~, a checkout and its venv under /tmp on a CI machine): kept visible, outermost paths only."""
    roots = [os.path.realpath(h) for h in hidden]
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, Path(__file__).parents[2])}
    under = sorted(p for p in paths if any(p == r or p.startswith(r + os.sep) for r in roots))
    return [p for p in under if not any(p.startswith(q + os.sep) for q in under if q != p)]


# Where the kept paths wait while /tmp and ~ are covered (outside both; only this namespace sees the mounts).
STAGE = "/var/tmp/llava-two-node-mounts"


def _mount_script(home: str) -> str:
    """Private tmpfs over /tmp and ~, the image's paths there bound back in, then exec `ray start` in that
    namespace (no fork: the PID we hold is the node's `ray start --block`)."""
    q = shlex.quote
    keep = _image_paths(["/tmp", home])
    lines = ["set -e"]
    lines += [f"mkdir -p {STAGE}/{i} && mount --bind {q(p)} {STAGE}/{i}" for i, p in enumerate(keep)]
    lines.append("mount -t tmpfs -o mode=1777 tmpfs /tmp")
    lines.append(f"mount -t tmpfs -o mode=0700 tmpfs {q(home)}")
    lines += [f"mkdir -p {q(p)} && mount --move {STAGE}/{i} {q(p)}" for i, p in enumerate(keep)]
    lines.append('exec "$@"')
    return "\n".join(lines)


def _start_worker(env: dict[str, str], gcs: int, cpus: int, log_path: Path, ip: str = WORKER_IP) -> subprocess.Popen:
    script = _mount_script(env.get("HOME") or os.path.expanduser("~"))
    ray_cmd = [_ray(), "start", "--address", f"{HEAD_IP}:{gcs}", "--num-cpus", str(cpus), "--block",
               "--node-ip-address", ip, "--temp-dir", "/tmp/rworker",
               "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
    log = open(log_path, "w")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *ray_cmd],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


@contextlib.contextmanager
def two_node_cluster(worker_cpus: int = 4, limit_s: float = 240) -> Iterator[Cluster]:
    """A head (no CPUs, token auth on: the 2.60 default) and one worker node that shares no /tmp or $HOME
    with it. The caller's environment (AWS settings for an S3 endpoint, say) reaches both nodes."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise RuntimeError("a two-node cluster needs root and `unshare` (private mount namespaces)")
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", DEFAULT_TORCH_EXTENSIONS_DIR)
    os.makedirs(extensions, exist_ok=True)
    env = _node_env(extensions)
    temp_dir = tempfile.mkdtemp(prefix="rjob", dir="/tmp")  # short: Ray's unix socket paths must fit 107 chars
    token_file = Path(env.get("HOME", "~")).expanduser() / ".ray" / "auth_token"
    started = time.monotonic()
    head, url, gcs = _start_head(env, temp_dir, num_cpus=0)
    worker: subprocess.Popen | None = None
    mount_ns = ""
    spare_ips = list(REPLACEMENT_IPS)
    try:
        wait_until_ready(head, url, Path(temp_dir) / "ray_start.log", token_file, limit_s)
        token = token_file.read_text().strip()
        # The worker has no ~/.ray of its own: it gets the token as a real node would, from its environment.
        worker_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        worker = _start_worker(worker_env, gcs, worker_cpus, Path(temp_dir) / "worker_start.log")
        mount_ns = _own_namespace(worker)
        _wait_for_worker(worker, url, token, Path(temp_dir) / "worker_start.log", worker_cpus, limit_s)
        print(f"\n[two-node cluster] head + worker up after {time.monotonic() - started:.1f} s at {url}")

        def lose_worker() -> None:
            nonlocal worker, mount_ns
            if worker is not None:
                _lose(worker, mount_ns)
            worker, mount_ns = None, ""

        def join_replacement() -> str:
            nonlocal worker, mount_ns
            ip = spare_ips.pop(0)
            log = Path(temp_dir) / f"worker_{ip}.log"
            worker = _start_worker(worker_env, gcs, worker_cpus, log, ip)
            mount_ns = _own_namespace(worker)
            deadline = time.monotonic() + limit_s
            while ip not in _alive_node_ips(url, token):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the replacement node {ip} did not join: {log.read_text()[-2000:]}")
                time.sleep(1)
            return ip

        yield Cluster(url, token_file, mount_ns, lose_worker, join_replacement)
    finally:
        if worker is not None:
            _stop_worker(worker, mount_ns)
        stop_node(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
