"""Keeping a lease alive through storage faults: retries with backoff and jitter, bounded by the lease's ttl.

A renewal that raises (an S3 503 after the client's own retries, a stall past its timeout, a dropped
connection) says nothing about who holds the lease, so it is retried, waiting longer each time (with jitter,
so many holders hit by one outage do not retry in step), until the lease may have expired: then another run
may already have taken it over, and the holder must stop before it commits. A renewal that answers "no"
means it was taken over: no retry.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 30.0


def backoff_s(tries: int) -> float:
    """Exponential backoff with full jitter (0.5x to 1x): the wait before try number `tries + 1`."""
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** tries) * random.uniform(0.5, 1.0)


def call_with_retries(fn: Callable[[], T], deadline: float, clock: Callable[[], float],
                      wait: Callable[[float], Any] = time.sleep) -> T:
    """fn(), retried on any error with backoff until `clock()` reaches `deadline`; then its last error is
    raised. `wait(s)` returning True (a shutdown) also ends the retries."""
    tries = 0
    while True:
        try:
            return fn()
        except Exception:  # any storage error is transient until the deadline says otherwise
            tries += 1
            left = deadline - clock()
            if left <= 0 or wait(min(backoff_s(tries), left)):
                raise


def retry_until(renew: Callable[[], bool], deadline: float, clock: Callable[[], float],
                wait: Callable[[float], Any] = time.sleep) -> str | None:
    """Renew until it answers: None when it succeeded, else why the lease is lost (it answered False, or every
    try failed until `clock()` reached `deadline`)."""
    try:
        if call_with_retries(renew, deadline, clock, wait):
            return None
    except Exception as e:
        return f"renewal failing until the lease may have expired; last error: {type(e).__name__}: {e}"
    return "taken over by another run"


def beat(lease: Any, stop: threading.Event, every_s: float) -> None:
    """The heartbeat thread's body: renew every `every_s` until `stop`; on a lost lease set `lease.lost` and
    end (the holder learns it at `fence()`). It never dies silently: any error ends as `lease.lost`."""
    try:
        while not stop.wait(every_s):
            deadline = lease.renewed_at + lease.ttl_s - lease.margin_s()
            why = retry_until(lease.renew, deadline, lease.clock, stop.wait)
            if why is not None and not stop.is_set():
                lease.lost = lease.lost or why
                print(f"[lease] {lease.path}: lost ({lease.lost}); this run will not commit", file=sys.stderr,
                      flush=True)
                return
    except BaseException as e:  # a bug here must not leave the holder believing it still holds the lease
        lease.lost = lease.lost or f"heartbeat failed: {type(e).__name__}: {e}"
        raise
