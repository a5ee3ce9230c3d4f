"""MLflow logging off the caller's path: a per-process background sender with a write-ahead journal.

A log call appends one JSON line to this process's journal, a local file, and returns (tens of microseconds);
a daemon thread sends the lines in order: metrics and tags through `MlflowClient.log_batch` with the
timestamps and steps they were logged with, artifacts through `log_artifact` (the file is copied into the
journal at the call, so the caller may delete it). Nothing waits on the tracking server but `flush`.

Why every line goes to disk first, rather than memory with a spill file past a bound: when one Ray Train worker
dies, Ray tears the others down without running their cleanup, so whatever rank 0 held only in memory would be
lost with it; a line in a local file outlives its process. Memory holds only the batch being sent
(`BATCH_LINES`), so the bound never blocks a caller and drops nothing; the local disk is the buffer.

While the server is unreachable the thread retries with backoff (0.5 s doubling to `MAX_BACKOFF_S`). Before
each send it probes an http(s) server with one short request (`/health`, any HTTP answer counts as up), so an
outage costs a failed probe instead of MLflow's own retries (about four minutes per call); a server that dies
between the probe and the call still holds that one call in those retries, on this thread only. A tracking URI that stays down holds back only the
journals whose next entry is for it. Sending is at least once: a line sent just before its process was killed is sent again, which MLflow
absorbs (the same metric key, value, timestamp and step is stored once; tags and artifacts overwrite).

`flush(timeout_s)` waits a bounded time (stage ends call it). What is still unsent stays in the journal: a
journal whose process is gone (same host: its pid no longer runs, or runs a newer process) is adopted by the
next sender that starts on this host, or by a running one within `RESCAN_S` (the pipeline's driver runs one),
and sent from where its owner stopped. Pure: no Ray.

Layout: `{spool}/{host}~{pid}~{process start}~{token}/` holds `entries.jsonl`, `sent` (the byte offset sent so
far) and `files/<n>/<name>` (artifact copies); a rejected entry (the server refused it, e.g. its run was
deleted) goes to `{spool}/rejected.jsonl` with the reason.

Credentials never reach the journal: an entry keeps its URI without `user:password@`, and the full URI stays in
the memory of the process that logged it. A journal adopted from a dead process is sent with the adopter's own
credentials for that server (the same URI logged here, or MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

from .redact import redact

log = logging.getLogger(__name__)

SPOOL_ENV = "LLAVA_MLFLOW_SPOOL"  # where unsent entries are kept on this node (default: the temp dir)
FLUSH_TIMEOUT_S = 15.0  # a stage end waits this long at most; the rest is kept and sent later
MAX_BACKOFF_S = 10.0
PROBE_TIMEOUT_S = 2.0
RESCAN_S = 10.0  # how often a running sender looks for dead processes' journals
BATCH_LINES = 500  # lines read from a journal at once: the in-memory bound


def without_credentials(uri: str) -> str:
    """`uri` without its `user:password@` part: what a journal on disk keeps, and what the health probe asks."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def default_spool() -> str:
    return os.environ.get(SPOOL_ENV) or os.path.join(tempfile.gettempdir(), f"llava-mlflow-spool-{os.getuid()}")


def _identity(pid: int) -> str:
    """host~pid~start: a process, told apart from a later one that reuses its pid."""
    return f"{socket.gethostname()}~{pid}~{psutil.Process(pid).create_time():.2f}"


def _alive(name: str) -> bool | None:
    """Whether the process that owns journal `name` still runs; None when it is another host's."""
    host, pid, start, *_ = (name.split("~") + ["", "", ""])[:4]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == start
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's live process
        return True


class _Journal:
    """One folder of entries, read from the offset in `sent`; only the sender thread reads and advances it."""

    def __init__(self, folder: Path, *, final: bool = False) -> None:
        self.folder = folder
        self.final = final  # its writer is gone: a last line without its newline is all there will be
        self.entries = folder / "entries.jsonl"
        self.entries.touch()
        try:
            self.offset = int((folder / "sent").read_text() or 0)
        except (FileNotFoundError, ValueError):
            self.offset = 0

    def read(self) -> list[tuple[dict[str, Any] | None, int, str]]:
        """Up to BATCH_LINES unsent (entry or None when unreadable, end offset, raw line)."""
        out: list[tuple[dict[str, Any] | None, int, str]] = []
        with open(self.entries, "rb") as f:
            f.seek(self.offset)
            end = self.offset
            for raw in f:
                if not raw.endswith(b"\n") and not self.final:  # still being written: not yet
                    break
                end += len(raw)
                text = raw.decode("utf-8", "replace")
                try:
                    entry = json.loads(text)
                except ValueError:
                    entry = None
                out.append((entry if isinstance(entry, dict) else None, end, text))
                if len(out) >= BATCH_LINES:
                    break
        return out

    def advance(self, offset: int) -> None:
        self.offset = offset
        tmp = self.folder / "sent.tmp"
        tmp.write_text(str(offset))
        os.replace(tmp, self.folder / "sent")

    def unsent_lines(self) -> int:
        with open(self.entries, "rb") as f:
            f.seek(self.offset)
            return sum(1 for _ in f)

    def caught_up(self) -> bool:
        return self.offset >= self.entries.stat().st_size


class Sender:
    """The background sender of one process for one spool folder; `sender()` hands out the shared one."""

    def __init__(self, spool: str) -> None:
        self.spool = Path(spool)
        self._clients: dict[str, Any] = {}
        self._credentials: dict[str, str] = {}  # journal URI -> the URI with its user:password, in memory only
        self._lock = threading.Lock()  # guards the own journal's writer and the counters
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()  # new entries, or a flush: look again now
        self._poke = threading.Event()  # a flush: end a backoff now
        self._own: _Journal | None = None
        self._writer: Any = None
        self._seq = 0
        self._adopted: list[_Journal] = []
        self._down: dict[str, tuple[float, float]] = {}  # uri -> (retry at, current backoff)
        self._thread: threading.Thread | None = None
        self.longest_put_s = 0.0  # what a caller waited at most (tests and logs read it)

    # ---- the caller's side: append and return
    def start(self) -> None:
        """Start the thread (a sender started without entries of its own adopts dead processes' journals)."""
        with self._lock:
            if self._thread is None:
                self.spool.mkdir(parents=True, exist_ok=True)
                self._thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
                self._thread.start()

    def put(self, uri: str, run_id: str, *, metrics: list[list[Any]] | None = None,
            tags: dict[str, str] | None = None, artifact: str | None = None, artifact_path: str | None = None
            ) -> None:
        """Keep one entry for `run_id` at `uri`: metrics as [key, value, timestamp ms, step], tags, or one
        artifact file (copied now). Raises OSError only when the local journal cannot be written."""
        t0 = time.perf_counter()
        self.start()
        public = without_credentials(uri)
        entry: dict[str, Any] = {"uri": public, "run": run_id}
        with self._lock:
            if public != uri:
                self._credentials[public] = uri
            own = self._own_journal()
            if metrics:
                entry["metrics"] = metrics
            if tags:
                entry["tags"] = tags
            if artifact is not None:
                self._seq += 1
                copy = own.folder / "files" / str(self._seq) / os.path.basename(artifact)
                copy.parent.mkdir(parents=True)
                shutil.copyfile(artifact, copy)
                entry.update(artifact=str(copy.relative_to(own.folder)), artifact_path=artifact_path)
            self._writer.write(json.dumps(entry) + "\n")
            self._writer.flush()  # one write(2): a reader never sees half a line, a kill loses nothing written
        self._wake.set()
        self.longest_put_s = max(self.longest_put_s, time.perf_counter() - t0)

    def _own_journal(self) -> _Journal:
        if self._own is None:
            folder = self.spool / f"{_identity(os.getpid())}~{os.urandom(3).hex()}"
            folder.mkdir(parents=True)
            self._own = _Journal(folder)
            self._writer = open(self._own.entries, "a", encoding="utf-8")  # noqa: SIM115 - lives with the process
        return self._own

    def unsent(self, *, adopted: bool = False) -> int:
        """Entries this process logged and are not sent yet (`adopted`: and those of journals it adopted)."""
        with self._lock:
            journals = [j for j in (self._own, *(self._adopted if adopted else ())) if j is not None]
        return sum(j.unsent_lines() for j in journals)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S, *, adopted: bool = False) -> int:
        """Wait up to `timeout_s` for what this process logged (`adopted`: and the dead processes' journals it
        took over) to be sent; the number of entries still unsent. They stay in the journal and are sent later,
        by this process or whichever adopts its journal. Adopted journals are not waited for by default: one
        whose server never returns must not slow every stage end."""
        if self._thread is None:
            return 0
        deadline = time.monotonic() + timeout_s
        # A flush tries again now rather than at the end of a backoff (rebinding: the thread may be writing).
        self._down = {uri: (0.0, backoff) for uri, (_, backoff) in list(self._down.items())}
        self._wake.set()
        self._poke.set()
        with self._changed:
            while not self._idle(adopted=adopted):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
        left = self.unsent(adopted=adopted)
        if left:
            where = self._own.folder if self._own else self.spool
            log.warning("MLflow: %d entries not sent within %.0f s; kept in %s and sent when the server answers",
                        left, timeout_s, where)
        return left

    def _idle(self, *, adopted: bool = True) -> bool:
        return not (adopted and self._adopted) and (self._own is None or self._own.caught_up())

    # ---- the thread's side: read, send, advance
    def _run(self) -> None:
        next_scan = 0.0
        while True:
            self._wake.clear()  # before looking: an entry put from here on wakes the wait below
            progressed = False
            try:
                if time.monotonic() >= next_scan:
                    self._adopt()
                    next_scan = time.monotonic() + RESCAN_S
                with self._lock:
                    journals = [j for j in (self._own, *self._adopted) if j is not None]
                for journal in journals:
                    progressed |= self._send_some(journal)
                self._finish_adopted()
            except Exception:  # noqa: BLE001 - the thread must outlive a bad journal or a full disk
                log.exception("MLflow sender: unexpected error; retrying in 1 s")
                self._wake.wait(1.0)
            with self._changed:
                self._changed.notify_all()
            if progressed:
                continue
            now = time.monotonic()
            waits = [at - now for at, _ in list(self._down.values()) if at > now]
            if waits:  # a backoff: new entries do not bring the server back sooner, a flush does try again
                self._poke.wait(min(waits))
                self._poke.clear()
            else:
                self._wake.wait(RESCAN_S)

    def _send_some(self, journal: _Journal) -> bool:
        """Send the journal's next entries in order, stopping at the first whose server is down."""
        batch = journal.read()
        i, solo_until, progressed = 0, 0, False
        while i < len(batch):
            entry, end, raw = batch[i]
            if entry is None or not {"uri", "run"} <= entry.keys():
                self._reject(raw, "not a journal entry")
                journal.advance(end)
                i, progressed = i + 1, True
                continue
            uri = entry["uri"]
            if self._down.get(uri, (0.0, 0.0))[0] > time.monotonic() or not self._reachable(uri):
                return progressed
            group = [i] if i < solo_until else self._group(batch, i)
            try:
                self._send(journal, [batch[k][0] for k in group])
            except Exception as e:  # noqa: BLE001 - each failure is retried, or its entry kept aside
                if not _permanent(e):
                    self._mark_down(uri, e)
                    return progressed
                if len(group) > 1:  # which entry does the server refuse? this group one at a time
                    solo_until = group[-1] + 1
                    continue
                self._reject(raw, f"{type(e).__name__}: {e}")
            journal.advance(batch[group[-1]][1])
            self._mark_up(uri)
            i = group[-1] + 1
            progressed = True
        if journal is self._own and progressed:
            self._truncate_if_caught_up()
        return progressed

    def _group(self, batch: list[tuple[dict[str, Any] | None, int, str]], i: int) -> list[int]:
        """Indices from i on that go in one log_batch (MLflow splits it at its limits): consecutive metrics and
        tags entries of one run and URI; an artifact goes alone."""
        first = batch[i][0]
        assert first is not None
        group = [i]
        for k in range(i + 1, len(batch) if "artifact" not in first else i + 1):
            e = batch[k][0]
            if e is None or "artifact" in e or (e.get("uri"), e.get("run")) != (first["uri"], first["run"]):
                break
            group.append(k)
        return group

    def _send(self, journal: _Journal, entries: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, RunTag

        client = self._client(entries[0]["uri"])
        run_id = entries[0]["run"]
        if "artifact" in entries[0]:
            copy = journal.folder / entries[0]["artifact"]
            client.log_artifact(run_id, str(copy), entries[0].get("artifact_path"))
            shutil.rmtree(copy.parent, ignore_errors=True)
            return
        metrics = [Metric(k, float(v), int(ts), int(step)) for e in entries for k, v, ts, step in e.get("metrics", [])]
        tags = [RunTag(k, str(v)) for e in entries for k, v in (e.get("tags") or {}).items()]
        client.log_batch(run_id, metrics=metrics, tags=tags)

    def _client(self, uri: str) -> Any:
        if uri not in self._clients:
            from mlflow.tracking import MlflowClient

            self._clients[uri] = MlflowClient(tracking_uri=self._credentials.get(uri, uri))
        return self._clients[uri]

    def _reachable(self, uri: str) -> bool:
        """One short request to an http(s) server (any HTTP answer counts as up): a down server fails it fast."""
        if not uri.startswith(("http://", "https://")):
            return True
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                self._mark_down(uri, e)
                return False
        except (OSError, ValueError) as e:
            self._mark_down(uri, e)
            return False
        return True

    def _mark_down(self, uri: str, error: BaseException) -> None:
        _, backoff = self._down.get(uri, (0.0, 0.0))
        if not backoff:
            log.warning("MLflow at %s unreachable (%s: %s); entries are kept and retried",
                        redact(uri), type(error).__name__, redact(str(error)[:300]))
        backoff = min(MAX_BACKOFF_S, backoff * 2 if backoff else 0.5)
        self._down[uri] = (time.monotonic() + backoff, backoff)

    def _mark_up(self, uri: str) -> None:
        if self._down.pop(uri, None) is not None:
            log.warning("MLflow at %s answers again; sending the kept entries", redact(uri))

    def _reject(self, raw: str, why: str) -> None:
        why = redact(why)
        log.error("MLflow refused an entry (%s); kept in %s", why, self.spool / "rejected.jsonl")
        with open(self.spool / "rejected.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"entry": raw.rstrip("\n"), "reason": why, "at": time.time()}) + "\n")

    def _truncate_if_caught_up(self) -> None:
        """Keep the own journal short: once all of it is sent, start it over (under the writer's lock)."""
        with self._lock:
            own = self._own
            if own is not None and own.caught_up() and own.offset > 1 << 20:
                os.truncate(own.entries, 0)  # the writer appends (O_APPEND): it continues at the new end
                own.advance(0)

    def _adopt(self) -> None:
        """Take over the journals of this host's dead processes (a rename: one adopter wins)."""
        if not self.spool.is_dir():
            return
        for folder in sorted(self.spool.iterdir()):
            if not folder.is_dir() or (self._own is not None and folder == self._own.folder):
                continue
            if _alive(folder.name) is not False:
                continue
            mine = self.spool / f"{_identity(os.getpid())}~{os.urandom(3).hex()}"
            try:
                folder.rename(mine)
            except OSError:  # another sender adopted it first
                continue
            with self._lock:
                self._adopted.append(_Journal(mine, final=True))

    def _finish_adopted(self) -> None:
        with self._lock:
            done = [j for j in self._adopted if j.caught_up()]
            self._adopted = [j for j in self._adopted if j not in done]
        for journal in done:
            shutil.rmtree(journal.folder, ignore_errors=True)

    def _remove_own_if_sent(self) -> None:
        """At exit: an own journal with nothing left goes (a killed process's is adopted instead)."""
        with self._lock:
            if self._own is not None and self._own.caught_up():
                self._writer.close()
                shutil.rmtree(self._own.folder, ignore_errors=True)
                self._own = None


def _permanent(e: BaseException) -> bool:
    """The server refused the request itself (a 4xx other than 408/429): sending it again cannot help."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, FileNotFoundError | IsADirectoryError):  # an artifact copy that is gone
        return True
    if not isinstance(e, MlflowException):
        return False
    status = e.get_http_status_code()
    return 400 <= status < 500 and status not in (408, 429)


_senders: dict[tuple[int, str], Sender] = {}
_senders_lock = threading.Lock()


def sender(spool: str | None = None) -> Sender:
    """This process's sender for `spool` (default: `default_spool()`), created on first use."""
    key = (os.getpid(), os.path.abspath(spool or default_spool()))
    with _senders_lock:
        if key not in _senders:
            _senders[key] = Sender(key[1])
            atexit.register(_senders[key]._remove_own_if_sent)
        return _senders[key]


def flush_all(timeout_s: float = FLUSH_TIMEOUT_S) -> int:
    """Flush every sender of this process (sharing one deadline); the entries still unsent."""
    deadline = time.monotonic() + timeout_s
    with _senders_lock:
        mine = [s for (pid, _), s in _senders.items() if pid == os.getpid()]
    return sum(s.flush(max(0.0, deadline - time.monotonic())) for s in mine)
