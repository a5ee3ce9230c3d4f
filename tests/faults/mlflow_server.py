"""A real `mlflow server` that a test can stop and start again: same port, same sqlite store, same artifacts.

`start()` waits for /health; `stop()` ends the server's process group (the server and any worker it forked),
so clients see connection refused, as when a tracking server restarts. Only 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.cluster.two_node import free_port


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = 180.0) -> None:
        """Start (or start again) and wait until it answers; a loaded 2-core machine takes tens of seconds."""
        assert self.proc is None, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
               "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        self.starts += 1
        # No job runner (about ten huey processes that tracking does not use): starts and stops take seconds.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.root / f"server-{self.starts}.log", "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    log_text = (self.root / f"server-{self.starts}.log").read_text()[-2000:]
                    self.proc = None
                    raise RuntimeError(f"mlflow server exited: {log_text}") from None
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        """End the server now (its whole process group) and wait until the port refuses connections."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None
        for _ in range(300):  # a forked worker may outlive the parent a moment
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"port {self.port} still answers 30 s after the server was stopped")

    @property
    def running(self) -> bool:
        return self.proc is not None
