"""An exclusive lock between the processes of one node, on a file in a node-local folder.

Work that many processes on a node may start at once (fetching a model into the node's cache, a
checkpoint's files before a resume) is done by the first to hold the lock; the others wait, then find it
done. The lock is an `flock`: the kernel drops it when its holder exits, a crash included, so a dead holder
never blocks the others (what it left half done must be recognisable as such: write aside, rename when whole).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def node_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock on `path` (created if absent; left in place, as an empty file) for the block."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
