"""Shared fixtures: a small Llama-style tokenizer trained once per session, local services, data helpers."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WORDS = ("red green blue yellow purple orange circle square triangle what colour color is the shape left "
         "right top bottom how many yes no there a an of in image picture describe answer question").split()


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from components.core.templates import VICUNA_SYSTEM
    from components.models.tokenizer import train_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(10)) + rng.choice(".?!") for _ in range(800)]
    texts += [VICUNA_SYSTEM, "USER: ASSISTANT:", "Answer the question using a single word or phrase."]
    return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def subset_world():
    """subset_world(root, pretrain_rows, finetune_rows) -> (synth folder, data overrides): the tiny synthetic
    world generated under `root`, and `data.pretrain` / `data.finetune` overrides training on the first rows
    of its caption and mix files (a smaller training set, copied under root/ann)."""
    import json
    from pathlib import Path

    from components.synth.world import generate_world

    def subset(src: Path, dst: Path, n: int) -> Path:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(json.loads(src.read_text())[:n]))
        return dst

    def world(root: Path, pretrain_rows: int, finetune_rows: int) -> tuple[Path, list[str]]:
        synth = root / "synth"
        generate_world(str(synth), seed=0, size="tiny")
        pre = subset(synth / "pretrain" / "captions.json", root / "ann" / "captions.json", pretrain_rows)
        fin = subset(synth / "finetune" / "mix.json", root / "ann" / "mix.json", finetune_rows)
        return synth, [f"data.pretrain=[{{annotations: {pre}, image_root: {synth / 'images'}, name: captions}}]",
                       f"data.finetune=[{{annotations: {fin}, image_root: {synth / 'images'}, name: mix}}]"]

    return world


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the whole session (startup costs seconds); logical CPUs oversubscribed so Ray
    Data and Train workers do not starve each other on a 2-core machine. Started after the S3 server so
    its workers inherit the AWS environment."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, object_store_memory=400 * 1024**2, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server on 127.0.0.1, with the AWS environment pointing at it."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_faults(s3_server):
    """A fault-injecting proxy (tests/faults/s3_proxy.py) in front of `s3_server`, and the AWS environment
    pointing at it for this test; yields the proxy (add `Rule`s to it)."""
    import s3fs

    from tests.faults.s3_proxy import S3FaultProxy

    proxy = S3FaultProxy(s3_server).start()
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    s3fs.S3FileSystem.clear_instance_cache()  # cached filesystems hold a client for the old endpoint
    try:
        yield proxy
    finally:
        os.environ["AWS_ENDPOINT_URL"] = s3_server
        s3fs.S3FileSystem.clear_instance_cache()
        proxy.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a sqlite store; yields its URL."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
           "--workers", "1"]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(900):  # startup takes ~10 s idle, much longer on a loaded 2-core machine
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}") from None
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start within 180 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def mlflow_restartable(tmp_path):
    """A real MLflow server of this test's own that it may stop and start again (tests/faults/mlflow_server.py)."""
    from tests.faults.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path / "mlflow_restartable")
    server.start()
    yield server
    server.stop()
