"""A lease on one stage output: one run at a time writes it, across processes and machines sharing a storage root.

A lease is a small JSON file `{holder, attempt, heartbeat}` next to the output. Every change to it is a
compare-and-swap, so two runs can never both believe they hold it: on a local filesystem the read-compare-write
happens under an `flock` of a guard file; on S3 it is a conditional put (`If-None-Match: *` to create,
`If-Match: <ETag>` to renew or take over) and a conditional delete. The holder renews `heartbeat` from a
thread; a lease not renewed for `ttl_s` seconds belongs to a holder that died, and the next run takes it over.

Storage faults: a renewal that fails (S3 503, a stall, a dropped connection) is retried with backoff until the
lease may have expired; then it is marked lost (components/core/heartbeat.py). `fence()` is the check a commit
makes: a compare-and-swap at the version this holder last wrote, so a holder that lost the lease cannot commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from components.core import heartbeat, storage

Clock = Callable[[], float]


class LeaseLost(RuntimeError):
    """This holder no longer holds the lease (taken over, or not renewed for about its ttl)."""


class _LocalFile:
    """Compare-and-swap on a local file; the version is the file's content."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".guard", "a") as g:
            fcntl.flock(g, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(g, fcntl.LOCK_UN)

    def _read(self) -> str | None:
        try:
            with open(self.path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read(self) -> tuple[str, str] | None:
        text = self._read()
        return None if text is None else (text, text)

    def swap(self, data: str, version: str | None) -> str | None:
        """Write `data` if the file is still at `version` (None: absent); the new version, or None if not."""
        with self._guard():
            if self._read() != version:
                return None
            storage.write_bytes(self.path, data.encode())
            return data

    def delete(self, version: str) -> None:
        with self._guard():
            if self._read() == version:
                os.unlink(self.path)


# A conditional request that failed because another writer changed (or removed) the object first.
_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404"}


def _s3_error_code(e: BaseException) -> str | None:
    cause = e.__cause__ or e.__context__
    response = getattr(cause, "response", None)
    return (response or {}).get("Error", {}).get("Code") if isinstance(response, dict) else None


class _S3Object:
    """Compare-and-swap on an S3 object through conditional requests; the version is the ETag."""

    def __init__(self, path: str, ttl_s: float) -> None:
        import fsspec

        # Its own client with short timeouts and few retries inside one call: the heartbeat's loop is the
        # outer retry (with backoff and jitter), and it must see time pass to notice the ttl running out
        # (s3fs's default 5 x botocore's 5 tries of a 503 could block one call for minutes).
        self.fs = fsspec.filesystem("s3", config_kwargs={
            "connect_timeout": min(5.0, max(1.0, ttl_s / 8)), "read_timeout": min(15.0, max(1.0, ttl_s / 8)),
            "retries": {"total_max_attempts": 1, "mode": "standard"}})
        self.fs.retries = 1  # s3fs's own loop (a class setting); this instance is only shared by leases
        inner = storage.filesystem(path)[1]
        self.inner = inner
        self.bucket, self.key = inner.split("/", 1)

    def read(self) -> tuple[str, str] | None:
        self.fs.invalidate_cache(self.inner)
        try:
            etag = self.fs.info(self.inner)["ETag"]  # the version first: a newer body then fails the swap
            return self.fs.cat_file(self.inner).decode(), etag
        except FileNotFoundError:
            return None

    def swap(self, data: str, version: str | None) -> str | None:
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data.encode(), **condition)
        except OSError as e:  # s3fs wraps the ClientError; a failed condition means someone else wrote first
            if _s3_error_code(e) in _LOST_RACE:  # (or our own earlier put landed: Lease._adopt_own_write)
                return None
            raise
        self.fs.invalidate_cache(self.inner)
        return str(out["ETag"])

    def delete(self, version: str) -> None:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
        except OSError as e:  # taken over meanwhile: not ours to delete
            if _s3_error_code(e) not in _LOST_RACE:
                raise
        self.fs.invalidate_cache(self.inner)


def _parse(text: str) -> dict[str, Any]:
    try:
        state = json.loads(text)
    except ValueError:
        return {"heartbeat": 0}
    return state if isinstance(state, dict) else {"heartbeat": 0}


def new_holder() -> str:
    """A holder name unique to this process and call: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """`try_acquire`, then `renew` (or `keep_alive`) while working, then `release`. `holder` is best made by
    `new_holder()`, which lets a run on the same host see that the holder's process died."""

    def __init__(self, path: str, holder: str, *, ttl_s: float = 300.0, clock: Clock = time.time) -> None:
        self.path, self.holder, self.ttl_s, self.clock = path, holder, ttl_s, clock
        self._file: Any = _S3Object(path, ttl_s) if storage.is_remote(path) else _LocalFile(path)
        self._version: str | None = None
        self._swap = threading.Lock()  # the heartbeat and a commit's fence() must not swap against each other
        self.state: dict[str, Any] = {}
        self.renewed_at = 0.0  # clock() of the last write that succeeded
        self.lost: str | None = None  # why this holder lost the lease, once it has

    def current(self) -> dict[str, Any] | None:
        """The lease as stored (None when free); an unreadable one counts as expired."""
        found = self._file.read()
        return None if found is None else _parse(found[0])

    def expired(self, state: dict[str, Any]) -> bool:
        """Not renewed within the ttl, or held by a process of this host that is gone (a killed run's
        lease is taken over at once by the next run on the same machine)."""
        if self.clock() - float(state.get("heartbeat", 0)) > self.ttl_s:
            return True
        host, _, rest = str(state.get("holder", "")).partition(":")
        pid = rest.split(":", 1)[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def try_acquire(self, attempt: str) -> tuple[bool, dict[str, Any] | None]:
        """(True, the dead holder's state when taken over, else None), or (False, the live holder's state).
        Storage errors are retried with backoff for up to half the ttl."""
        return heartbeat.call_with_retries(lambda: self._try_acquire(attempt), self.clock() + self.ttl_s / 2,
                                           self.clock)

    def _try_acquire(self, attempt: str) -> tuple[bool, dict[str, Any] | None]:
        found = self._file.read()
        previous: dict[str, Any] | None = None
        if found is not None:
            previous = _parse(found[0])
            if (previous.get("holder"), previous.get("attempt")) == (self.holder, attempt):
                # our own earlier try landed, its answer lost: ours
                self.state, self._version, self.renewed_at = previous, found[1], float(previous["heartbeat"])
                self.lost = None
                return True, None
            if not self.expired(previous):
                return False, previous
        self.state = {"holder": self.holder, "attempt": attempt, "heartbeat": self.clock()}
        version = self._file.swap(json.dumps(self.state), None if found is None else found[1])
        if version is None:  # another run got there first
            return False, self.current()
        self._version, self.renewed_at, self.lost = version, self.state["heartbeat"], None
        return True, previous

    def renew(self) -> bool:
        """Move the heartbeat forward; False when the lease was lost (taken over after a long stall). A storage
        error (after the client's own retries) is raised: it says nothing yet about who holds the lease."""
        with self._swap:
            if self._version is None:
                return False
            state = {**self.state, "heartbeat": self.clock()}
            version = self._file.swap(json.dumps(state), self._version)
            if version is None and self._adopt_own_write():
                version = self._file.swap(json.dumps(state), self._version)
            if version is None:
                self._version = None
                current = self.current() or {}
                self.lost = self.lost or f"taken over by {current.get('holder')} (attempt {current.get('attempt')})"
                return False
            self.state, self._version, self.renewed_at = state, version, state["heartbeat"]
            return True

    def _adopt_own_write(self) -> bool:
        """After a failed swap: whether the lease there is still this holder's own (an earlier renewal whose
        answer was lost, or that stalled and landed late); if so, go on from its version. The holder name is
        unique to this Lease and every write is conditional, so no other run can have written it."""
        found = self._file.read()
        state = None if found is None else _parse(found[0])
        if state is None or (state.get("holder"), state.get("attempt")) != (self.holder, self.state.get("attempt")):
            return False
        self.state, self._version = state, found[1]
        return True

    def margin_s(self) -> float:
        """How long before the ttl runs out a holder gives up: covers clock skew between machines and the
        time the last renewal took."""
        return self.ttl_s / 5

    def fence(self) -> None:
        """Raise LeaseLost unless this holder still holds the lease at the version it last wrote: one more
        compare-and-swap renewal (retried on storage errors while the lease cannot have expired), which also
        gives the commit that follows a full ttl."""
        if self.lost is None:
            deadline = self.renewed_at + self.ttl_s - self.margin_s()
            error = heartbeat.retry_until(self.renew, deadline, self.clock)
            if error is not None:
                self.lost = self.lost or error
        if self.lost is not None:
            raise LeaseLost(f"lease {self.path} lost: {self.lost}")

    def release(self) -> None:
        """Delete the lease if still ours. A storage error is retried briefly, then left: an unreleased lease
        only delays the next run until its ttl runs out."""
        if self._version is not None:
            try:
                heartbeat.call_with_retries(lambda: self._file.delete(self._version), self.clock() + 10.0,
                                            self.clock)
            except Exception as e:
                print(f"[lease] {self.path}: not released ({type(e).__name__}: {e}); it expires in "
                      f"{self.ttl_s:.0f} s", file=sys.stderr, flush=True)
            self._version = None

    @contextlib.contextmanager
    def keep_alive(self, every_s: float | None = None) -> Iterator[None]:
        """Renew from a daemon thread every `every_s` (default ttl/4) until the block ends; a renewal that
        keeps failing marks the lease lost (`lost`), which `fence()` then reports."""
        stop = threading.Event()
        thread = threading.Thread(target=heartbeat.beat, args=(self, stop, every_s or self.ttl_s / 4),
                                  name=f"lease-{os.path.basename(self.path)}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
