"""What a person sees during `run`: one line per stage as it starts and ends, then the final table.

Everything libraries print (Ray, Ray Data progress, DeepSpeed, transformers, compiler output of DeepSpeed's
op builds) goes to a log file instead: file descriptors 1 and 2 are redirected for the whole run, so output
from C extensions and child processes is caught too, not only Python's `print`. `-v` also shows it live on
stderr. With `--json` stdout carries exactly one JSON object; the stage lines go to stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass
class Console:
    out: IO[str]  # the terminal's stdout (results)
    err: IO[str]  # the terminal's stderr (progress lines, errors)
    log_path: Path

    def line(self, text: str, *, to_err: bool = False) -> None:
        stream = self.err if to_err else self.out
        stream.write(text + "\n")
        stream.flush()


def _terminal(stream: IO[str], fd: int) -> IO[str]:
    """Where results go once fds 1 and 2 point at the log: a copy of the real descriptor, or the Python-level
    stream itself when a caller replaced it (contextlib.redirect_stdout, pytest's capsys)."""
    try:
        if stream.fileno() in (1, 2):
            return os.fdopen(os.dup(fd), "w", buffering=1)
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    return stream


@contextlib.contextmanager
def captured(log_path: Path, *, verbose: bool) -> Iterator[Console]:
    """Redirect fds 1 and 2 into `log_path` for the block (verbose: through a pipe that also copies to the real
    stderr). Child processes started in the block (Ray's) inherit the redirected descriptors."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    real_out, real_err = os.dup(1), os.dup(2)
    console = Console(_terminal(sys.stdout, real_out), _terminal(sys.stderr, real_err), log_path)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pump: threading.Thread | None = None
    if verbose:
        read_end, write_end = os.pipe()

        def copy() -> None:
            while chunk := os.read(read_end, 65536):
                os.write(log_fd, chunk)
                os.write(real_err, chunk)

        pump = threading.Thread(target=copy, name="log-tee", daemon=True)
        pump.start()
        target = write_end
    else:
        target = log_fd
    os.dup2(target, 1)
    os.dup2(target, 2)
    if verbose:
        os.close(target)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(real_out, 1)  # also closes the pipe's write ends held by fds 1 and 2: the tee sees EOF
        os.dup2(real_err, 2)
        if pump is not None:
            pump.join(timeout=2)  # a child process still holding the pipe must not hold up the exit
        os.close(real_out)
        if pump is None or not pump.is_alive():
            os.close(real_err)
            os.close(log_fd)


def log_file(root: str, command: str) -> Path:
    """Where this invocation's log goes: `{storage}/logs/` for a local root; for a remote root a local file
    (uploaded next to the outputs at the end, see `publish_log`)."""
    from components.core import storage

    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{command.split()[0] if command else 'run'}.log"
    if storage.is_remote(root):
        return Path.home() / ".cache" / "llava-pipeline" / "logs" / name
    return Path(root) / "logs" / name


def publish_log(path: Path, root: str) -> str:
    """The log's final location (a remote root gets a copy under `{storage}/logs/`). Its text is redacted first:
    a library may have printed a URI with its credentials."""
    from components.core import storage
    from components.core.redact import redact

    path.write_text(redact(path.read_text(encoding="utf-8", errors="replace")), encoding="utf-8")
    if not storage.is_remote(root):
        return str(path)
    target = storage.join(root, "logs", path.name)
    storage.write_bytes(target, path.read_bytes())
    return target


def display_status(result: dict[str, Any]) -> str:
    """A stage's status as a person should read it: a benchmark that ran nothing (no judge) is `skipped`."""
    if result.get("status") in ("ran", "cached") and result.get("metrics", {}).get("status") == "skipped":
        return "skipped"
    return str(result.get("status", ""))
