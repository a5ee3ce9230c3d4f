"""Talking to a Ray cluster's Jobs API: which address, which token, clear connection errors, following a job.

Ray's own `JobSubmissionClient` sends a token only when RAY_AUTH_MODE=token is exported, lets RAY_ADDRESS
override an explicit address, and has no HTTP timeout. Here the token is looked up the way Ray looks for
it, an explicit address wins, and a first request with a timeout turns "nothing there", "token missing"
and "token rejected" into one-line errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from components.core.redact import is_loopback, redact

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TOKEN_HELP = ("Ray reads it from RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; "
              "`ray get-auth-token` on the head node prints it")
PROBE_TIMEOUT_S = 15.0
_ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class JobError(RuntimeError):
    """A Ray Jobs problem, already phrased for the user in one line."""


def default_address() -> str:
    """The dashboard URL when --address is not given: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, else local."""
    for var in _ADDRESS_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return DEFAULT_ADDRESS


def dashboard_url(address: str) -> str:
    address = address.strip().rstrip("/")
    if address in ("auto", "local") or address.startswith("ray://"):
        raise JobError(f"address {address!r} is not a dashboard URL; pass --address http://HEAD:8265")
    return address if "://" in address else f"http://{address}"


def find_token() -> tuple[str | None, str]:
    """(token, where it came from), looked up in Ray's order; (None, why) when there is none to send."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token file ({e.strerror})") from None
        if not token:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path}: the token file is empty")
        return token, str(path)
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and default.read_text().strip():
        return default.read_text().strip(), str(default)
    return None, "no token found"


def _reason(e: Exception) -> str:
    """The useful tail of a requests error ('[Errno 111] Connection refused', 'timed out')."""
    import requests

    if isinstance(e, requests.Timeout):
        return f"no answer within {PROBE_TIMEOUT_S:.0f} s"
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip().lower()
    return text.splitlines()[0][:200] if text else type(e).__name__


def probe(url: str, headers: dict[str, str], token_source: str) -> str:
    """Check that `url` is a Ray dashboard that accepts us; returns the cluster's Ray version."""
    import requests

    try:
        r = requests.get(f"{url}/api/version", headers=headers, timeout=PROBE_TIMEOUT_S)
    except requests.RequestException as e:
        raise JobError(f"cannot reach the Ray dashboard at {url}: {_reason(e)}") from None
    if r.status_code == 401:
        raise JobError(f"the Ray cluster at {url} requires an auth token and none was found; {TOKEN_HELP}")
    if r.status_code == 403:
        raise JobError(f"the Ray cluster at {url} rejected the auth token from {token_source} "
                       f"(a token of another cluster?); {TOKEN_HELP}")
    try:
        version = r.json()["ray_version"] if r.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        version = None
    if not version:
        raise JobError(f"cannot reach the Ray dashboard at {url}: GET /api/version answered HTTP {r.status_code}, "
                       "not a Ray dashboard")
    return str(version)


@contextlib.contextmanager
def _without_address_env() -> Iterator[None]:
    # JobSubmissionClient lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override its `address` argument.
    saved = {v: os.environ.pop(v) for v in _ADDRESS_VARS if v in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def refuse_plain_http(url: str) -> None:
    """Plain http to another machine carries the cluster token (and the job spec) readable on the network."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise JobError(
            f"the Ray dashboard at {redact(url)} is plain http to another machine: the cluster token would cross "
            "the network readable. Use https:// (an authenticated ingress), or a tunnel to this machine "
            "(`kubectl port-forward svc/HEAD-svc 8265`, `ssh -L 8265:HEAD:8265`) and --address "
            "http://127.0.0.1:8265; or pass --allow-plain-http on a network you trust")


def connect(address: str | None = None, *, allow_plain_http: bool = False) -> Any:
    """A JobSubmissionClient for the dashboard at `address` (default: see `default_address`); plain http only
    to this machine unless `allow_plain_http`."""
    url = dashboard_url(address or default_address())
    if not allow_plain_http:
        refuse_plain_http(url)
    token, source = find_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    probe(url, headers, source)
    from ray.job_submission import JobSubmissionClient  # seconds to import: only once the cluster answered
    try:
        with _without_address_env():
            return JobSubmissionClient(url, headers=headers)
    except (ConnectionError, RuntimeError) as e:
        raise JobError(f"cannot reach the Ray dashboard at {url}: {str(e).splitlines()[0]}") from None


@contextlib.contextmanager
def job_errors(client: Any, job_id: str) -> Iterator[None]:
    """Turn the SDK's RuntimeError('Request failed with status code 404: ...') and dropped connections
    into one clear line."""
    import requests

    try:
        yield
    except (requests.RequestException, ConnectionError) as e:
        raise JobError(f"job {job_id}: lost the Ray dashboard at {client.get_address()}: {_reason(e)}") from None
    except RuntimeError as e:
        text = str(e)
        if "status code 404" in text:
            raise JobError(f"no job {job_id!r} on the Ray cluster at {client.get_address()}") from None
        raise JobError(f"job {job_id}: {text.splitlines()[0] if text else type(e).__name__}") from None


def _status(client: Any, job_id: str, tries: int = 5) -> Any:
    """The job's status, riding out a few dropped connections (a busy head node drops some)."""
    import requests

    for attempt in range(tries):
        try:
            return client.get_job_status(job_id)
        except (requests.RequestException, ConnectionError):
            if attempt == tries - 1:
                raise
            time.sleep(2.0 * (attempt + 1))
    raise AssertionError("unreachable")


def _catch_up(client: Any, job_id: str, printed: int, out: IO[str]) -> int:
    logs = client.get_job_logs(job_id)
    if len(logs) > printed:
        out.write(redact(logs[printed:]))
        out.flush()
    return max(printed, len(logs))


async def _follow(client: Any, job_id: str, poll_s: float, timeout_s: float | None, out: IO[str]) -> Any:
    printed = 0

    async def stream() -> None:
        nonlocal printed
        async for chunk in client.tail_job_logs(job_id):
            out.write(redact(chunk))  # a job's own output may repeat a URI with credentials
            out.flush()
            printed += len(chunk)

    task = asyncio.ensure_future(stream())
    start = time.monotonic()
    try:
        while True:
            status = await asyncio.to_thread(_status, client, job_id)
            if status.is_terminal():
                # The log stream closes by itself once the job ends; give it a moment to drain.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), 15)
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                break
            await asyncio.sleep(poll_s)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    # A broken stream (a proxy without websockets, say) loses nothing: print what it missed.
    await asyncio.to_thread(_catch_up, client, job_id, printed, out)
    return status


def follow(client: Any, job_id: str, *, poll_s: float = 5.0, timeout_s: float | None = None,
           out: IO[str] | None = None) -> Any:
    """Stream the job's logs to `out` until it ends or `timeout_s` passes; returns its last JobStatus."""
    with job_errors(client, job_id):
        return asyncio.run(_follow(client, job_id, poll_s, timeout_s, out or sys.stdout))
