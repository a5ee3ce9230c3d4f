"""Where a stage's work happens and how it becomes its output: one run at a time, atomically.

A run takes the output's lease (components/core/lease.py) before the stage works; a second run of the same
stage waits for it and then takes the output as a cache hit, and a lease whose holder died is taken over.
Each attempt writes its own folder under `{stage}/.attempts/`, never the output itself, so a run that lost
its lease (a stall past the ttl; another run took over) cannot write into the output or into its successor's
folder, and `--force` leaves the good output readable until the new attempt commits. A commit first checks
the lease (`Lease.fence`: a holder that lost it is refused), then makes the attempt the output: an atomic
rename (local), or on an object store a server-side copy with the manifest written last. An interrupted
attempt keeps its id for the next run (so a training stage resumes its Ray Train run); `--force` starts a
fresh attempt.
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import shutil
import time
from typing import Any

from components.core import storage
from components.core.lease import Lease, LeaseLost, new_holder

MANIFEST = "_stage_manifest.json"  # the executor's own record; stage outputs never use this name
ATTEMPTS = ".attempts"  # {stage}/.attempts/{fingerprint}-{attempt}: local attempt folders before commit
LEASE_TTL_S = 300.0  # a lease not renewed this long belongs to a dead run
LEASE_POLL_S = 2.0
LEASE_WAIT_LIMIT_S = 7 * 24 * 3600.0  # bounds the wait for a live holder (a stage running a week)


class LeaseTimeout(RuntimeError):
    """Another run held the output's lease for longer than LEASE_WAIT_LIMIT_S."""


def parse_manifest(data: bytes) -> dict[str, Any] | None:
    """A manifest's content, or None when it is not one (torn, foreign)."""
    try:
        m = json.loads(data)
    except ValueError:
        return None
    return m if isinstance(m, dict) and "fingerprint" in m else None


def read_manifest(out: str) -> dict[str, Any] | None:
    """The committed manifest of an output folder; missing or unreadable (truncated, foreign) counts as absent."""
    try:
        return parse_manifest(storage.read_bytes(storage.join(out, MANIFEST)))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _new_attempt() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def take_lease(out: str, *, forced: bool, stage: str) -> tuple[Lease | None, dict[str, Any] | None]:
    """Hold the output's lease, waiting while another live run holds it: (lease, None), or (None, manifest)
    when that run committed the output meanwhile (a cache hit, unless forced)."""
    lease = Lease(out.rstrip("/") + ".lease", new_holder(), ttl_s=LEASE_TTL_S)
    waited = 0.0
    while True:
        got, holder = lease.try_acquire(_new_attempt())
        manifest = None if forced else read_manifest(out)
        if got:
            if manifest is not None:  # committed between the plan and now
                lease.release()
                return None, manifest
            return lease, None
        if manifest is not None:
            return None, manifest
        if waited >= LEASE_WAIT_LIMIT_S:
            raise LeaseTimeout(f"{stage}: {out} is still being written by {(holder or {}).get('holder')} "
                               f"after {waited:.0f} s")
        if waited == 0:
            print(f"[{stage}] waiting for {(holder or {}).get('holder')}, which is running this stage",
                  flush=True)
        time.sleep(LEASE_POLL_S)
        waited += LEASE_POLL_S


def start_attempt(out: str, *, forced: bool) -> tuple[str, str]:
    """(attempt id, an empty attempt folder). An unfinished attempt of this output keeps its id unless forced,
    so a training stage resumes its Ray Train run; its folder is new and empty, since a stage body writes its
    outputs whole (no half-written file of a killed attempt is ever taken up). The caller holds the lease, so
    every other attempt folder of this output is a dead or fenced-off run's, and is removed."""
    record = out.rstrip("/") + ".attempt.json"
    attempt = None
    if not forced:
        try:
            attempt = storage.read_json(record).get("attempt")
        except (FileNotFoundError, ValueError, AttributeError):
            attempt = None
    if not attempt:
        attempt = _new_attempt()
        storage.write_json(record, {"attempt": attempt, "started_at": time.time()})
    parent, name = posixpath.split(out.rstrip("/"))
    attempts = storage.join(parent, ATTEMPTS)
    fs, inner = storage.filesystem(attempts)
    for stale in fs.glob(inner.rstrip("/") + f"/{name}-*"):
        fs.rm(stale, recursive=True)
    folder = storage.join(attempts, f"{name}-{attempt}-{secrets.token_hex(3)}")
    storage.makedirs(folder)
    return attempt, folder


def commit(out: str, folder: str, manifest: dict[str, Any], lease: Lease) -> None:
    """Make the attempt the stage's output, if `lease` still holds it: manifest last, then (local) one rename
    of the whole folder, or (object store) a server-side copy, the output's manifest written last. The old
    output of a forced rerun is removed only now."""
    where = f"{manifest['stage']}: not committing {out}"
    if storage.exists(storage.join(folder, MANIFEST)):
        raise ValueError(f"{manifest['stage']} wrote {MANIFEST}, a name reserved for the executor")
    try:
        lease.fence()
        if not storage.is_remote(out):
            storage.write_json(storage.join(folder, MANIFEST), manifest)
            _swap_local(out, folder)
        else:
            _swap_remote(out, folder, manifest, lease)
    except LeaseLost as e:
        raise LeaseLost(f"{where}: {e}") from None
    storage.remove(out.rstrip("/") + ".attempt.json")


def _swap_local(out: str, folder: str) -> None:
    final = out.rstrip("/")
    replaced = None
    if os.path.exists(final):  # a forced rerun: swap the old output out, then delete it
        replaced = os.path.join(os.path.dirname(final), ATTEMPTS, f"replaced-{secrets.token_hex(4)}")
        os.rename(final, replaced)
    os.rename(folder, final)
    if replaced:
        shutil.rmtree(replaced, ignore_errors=True)


def _swap_remote(out: str, folder: str, manifest: dict[str, Any], lease: Lease) -> None:
    """No rename on an object store: drop the old output (its manifest first, so no reader takes a half-
    replaced output as done), copy the attempt in server-side, check the lease again (the copy may be long),
    then write the manifest that commits it."""
    fs, dst = storage.filesystem(out)
    src = storage.filesystem(folder)[1]
    dst = dst.rstrip("/")
    if fs.exists(dst):
        storage.remove(storage.join(out, MANIFEST))
        fs.rm(dst, recursive=True)
    written = fs.find(src)  # a stage may write nothing (an empty prefix does not exist on S3)
    if written:
        fs.copy(src.rstrip("/") + "/", dst + "/", recursive=True)
    lease.fence()
    storage.write_json(storage.join(out, MANIFEST), manifest)
    if written:
        fs.rm(src, recursive=True)
