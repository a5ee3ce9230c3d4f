"""The OpenAI-compatible chat client for the GPT-judged benchmarks (LLaVA-Bench, MM-Vet), on httpx2.

Every call is bounded (per-request timeout, a fixed number of retries, a capped reply size) and returns a
`JudgeReply` that says whether it succeeded; callers count failures and never score them. Redirects are not
followed, so the API key only ever goes to the configured host; an API key over plain http:// is refused
unless the host is this machine. Configured from `LLAVA_JUDGE_BASE_URL`, `LLAVA_JUDGE_MODEL`,
`LLAVA_JUDGE_API_KEY` (optional for local servers), or explicitly with `JudgeConfig`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2

from components.core.fields import SCHEDULING, SECRET, NotConfigured
from components.core.redact import is_loopback, redact

ENV_BASE_URL = "LLAVA_JUDGE_BASE_URL"
ENV_MODEL = "LLAVA_JUDGE_MODEL"
ENV_API_KEY = "LLAVA_JUDGE_API_KEY"
ENV_TIMEOUT = "LLAVA_JUDGE_TIMEOUT"
ENV_MAX_RETRIES = "LLAVA_JUDGE_MAX_RETRIES"

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class JudgeConfig:
    """A judged benchmark's result depends on the judge's endpoint and model (a secret query part such as
    ?key= redacted) and on how many failed items it tolerates; never on its key, and not on how patiently or
    how many calls at a time it is asked (SCHEDULING: a failed call never becomes a score)."""

    base_url: str  # e.g. https://api.openai.com/v1 (".../chat/completions" is appended unless present)
    model: str  # the paper used gpt-4-0314 (LLaVA-Bench) and gpt-4-0613 (MM-Vet); both are retired
    api_key: Annotated[str | None, SECRET] = field(default=None, repr=False)  # kept out of reprs and logs
    # per HTTP request (socket-level), so one call takes <= (retries+1) * this
    timeout_s: Annotated[float, SCHEDULING] = 60.0
    # extra attempts after a retryable failure (timeout, 429, 5xx, malformed reply)
    max_retries: Annotated[int, SCHEDULING] = 3
    backoff_s: Annotated[float, SCHEDULING] = 1.0  # sleep before retry k is backoff_s * 2**k
    concurrency: Annotated[int, SCHEDULING] = 4  # parallel requests when scoring a benchmark
    max_failure_rate: float = 0.05  # above this fraction of failed items, no score is reported
    max_response_bytes: int = 1024 * 1024  # a longer reply is a failure, not read to the end

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url must start with http:// or https://, got {redact(self.base_url)!r}")
        host = urlsplit(self.base_url).hostname or ""
        if self.base_url.startswith("http://") and self.api_key and not is_loopback(host):
            raise ValueError(f"judge base_url {redact(self.base_url)} is plain http:// to {host} with an API key; "
                             "use https:// (plain http carries the key only to this machine)")
        if self.max_response_bytes < 1:
            raise ValueError(f"judge max_response_bytes must be >= 1, got {self.max_response_bytes}")
        if not self.model:
            raise ValueError("judge model must be non-empty")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.concurrency < 1:
            raise ValueError("judge timeout_s must be > 0, max_retries >= 0 and concurrency >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"judge max_failure_rate must be in [0, 1], got {self.max_failure_rate}")

    @property
    def endpoint(self) -> str:
        """base_url with /chat/completions appended to its path (any query, e.g. ?key=, kept after it)."""
        parts = urlsplit(self.base_url)
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path += "/chat/completions"
        return urlunsplit(parts._replace(path=path))


@dataclass(frozen=True)
class JudgeNotConfigured(NotConfigured):
    """What a judged benchmark gets when no judge is set up: a reason to report, not an error."""

    reason: str


class JudgeFailed(RuntimeError):
    """A judged benchmark whose judge failed past its tolerance. An error, not a result: the judge's key is not
    part of the fingerprint, so a cached failure would be reused by the run that has a working judge."""


@dataclass(frozen=True)
class JudgeReply:
    ok: bool
    content: str | None  # the assistant message on success
    error: str | None  # the last failure, phrased for a results file
    attempts: int
    model: str | None = None  # model name the server reported (may differ from the one asked for)


class Judge(Protocol):
    config: JudgeConfig

    def chat(
        self, messages: Sequence[Mapping[str, str]], *, temperature: float, max_tokens: int
    ) -> JudgeReply: ...


def judge_from_env(
    env: Mapping[str, str] | None = None, **overrides: Any
) -> JudgeConfig | JudgeNotConfigured:
    """A `JudgeConfig` from the LLAVA_JUDGE_* variables, or `JudgeNotConfigured` saying what is missing."""
    env = os.environ if env is None else env
    base_url = env.get(ENV_BASE_URL, "").strip()
    model = env.get(ENV_MODEL, "").strip()
    missing = [name for name, val in ((ENV_BASE_URL, base_url), (ENV_MODEL, model)) if not val]
    if missing:
        return JudgeNotConfigured(
            f"no GPT judge configured: set {' and '.join(missing)} (and {ENV_API_KEY} if the server needs one)"
        )
    kwargs: dict[str, Any] = {"base_url": base_url, "model": model, "api_key": env.get(ENV_API_KEY) or None}
    for var, key, cast in ((ENV_TIMEOUT, "timeout_s", float), (ENV_MAX_RETRIES, "max_retries", int)):
        if env.get(var):
            try:
                kwargs[key] = cast(env[var])
            except ValueError:
                raise ValueError(f"{var}={env[var]!r}: expected a number") from None
    kwargs.update(overrides)
    return JudgeConfig(**kwargs)


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


class HttpJudge:
    """OpenAI-compatible `POST {base_url}/chat/completions` with bounded retries."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.where = redact(config.endpoint)  # what error messages and results files name
        host = urlsplit(config.endpoint).hostname or ""
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(config.timeout_s),
            follow_redirects=False,  # a redirect would carry the Authorization header to wherever it points
            trust_env=not is_loopback(host),  # loopback servers (tests, local vLLM) never go through a proxy
        )

    def chat(
        self, messages: Sequence[Mapping[str, str]], *, temperature: float, max_tokens: int
    ) -> JudgeReply:
        body = {
            "model": self.config.model,
            "messages": [dict(m) for m in messages],
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        last = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                content, model = self._post(body)
                return JudgeReply(ok=True, content=content, error=None, attempts=attempt + 1, model=model)
            except _Retryable as e:
                last = str(e)
            except _Fatal as e:
                return JudgeReply(ok=False, content=None, error=str(e), attempts=attempt + 1)
        return JudgeReply(ok=False, content=None, error=last, attempts=self.config.max_retries + 1)

    def _post(self, body: dict[str, Any]) -> tuple[str, str | None]:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        try:
            with self._client.stream("POST", self.config.endpoint, json=body, headers=headers) as resp:
                raw = self._read_bounded(resp)
        except httpx2.TimeoutException:
            raise _Retryable(f"timed out after {self.config.timeout_s}s ({self.where})") from None
        except httpx2.ConnectError as e:
            raise _Retryable(f"cannot reach {self.where}: {redact(str(e))}") from None
        except httpx2.TransportError as e:  # reset or truncated mid-body
            raise _Retryable(f"connection error with {self.where}: {redact(str(e))}") from None
        if resp.is_redirect:
            target = urlsplit(resp.headers.get("location", "")).hostname or "elsewhere"
            raise _Fatal(f"HTTP {resp.status_code} from {self.where}: redirected to {target}; redirects are not "
                         "followed (the API key stays with the configured host): set base_url to the final URL")
        if resp.status_code >= 400:
            detail = redact(raw[:200].decode(errors="replace"))
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _Retryable(f"HTTP {resp.status_code} from {self.where}: {detail}")
            raise _Fatal(f"HTTP {resp.status_code} from {self.where}: {detail}")
        try:
            reply = json.loads(raw)
            content = reply["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed reply (no choices[0].message.content): {raw[:200]!r}") from None
        if not isinstance(content, str):
            raise _Retryable(f"malformed reply: content is {type(content).__name__}, not text")
        model = reply.get("model") if isinstance(reply, dict) else None
        return content, model if isinstance(model, str) else None

    def _read_bounded(self, resp: httpx2.Response) -> bytes:
        limit = self.config.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise _Fatal(f"reply from {self.where} is over {limit:,} bytes; not read further")
            chunks.append(chunk)
        return b"".join(chunks)


def make_judge(judge: Judge | JudgeConfig | JudgeNotConfigured | None) -> Judge | JudgeNotConfigured:
    """Resolve what a caller passed (a client, a config, nothing) into a client or a not-configured."""
    if judge is None:
        judge = judge_from_env()
    if isinstance(judge, JudgeConfig):
        return HttpJudge(judge)
    return judge


def describe(judge: Judge) -> dict[str, Any]:
    """Judge provenance for results files (never the API key)."""
    cfg = judge.config
    return {
        "model": cfg.model,
        "endpoint": redact(cfg.endpoint),
        "max_retries": cfg.max_retries,
        "timeout_s": cfg.timeout_s,
    }


def map_concurrent(fn: Callable[[T], R], items: Sequence[T], concurrency: int) -> list[R]:
    """fn over items with up to `concurrency` requests in flight; results in item order."""
    if concurrency <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        return list(pool.map(fn, items))


def failure_gate(n_failed: int, n_items: int, config: JudgeConfig) -> str | None:
    """Why a judged score must not be reported (too many failed judgements), or None if it may be."""
    if n_items and n_failed / n_items > config.max_failure_rate:
        return (
            f"{n_failed} of {n_items} judgements failed (over the {config.max_failure_rate:.0%} limit); "
            "no score reported: check the judge endpoint and rerun"
        )
    return None
