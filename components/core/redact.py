"""Secrets out of everything the pipeline prints, logs, tags or writes: the one redaction function.

URIs carry credentials in several ways (a tracking server `https://user:pw@host`, a token as the user
`https://TOKEN@host`, a judge endpoint `...?key=...`), and exception texts repeat them. Everything that leaves
the process as text (console lines, job logs, MLflow params/tags/artifacts, stages.json, metrics.json) goes
through `redact` or `redact_json` first.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

MASK = "***"

# scheme://userinfo@host -> scheme://***@host (user:password, or a token standing as the user). The userinfo
# cannot hold "/", so "s3://bucket/key@v2" is left alone.
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s\"'<>]+@")
# ?key=... &token=... and the like, in any URL or query string.
_QUERY = re.compile(
    r"([?&;](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|password|passwd|pwd|secret|"
    r"client[_-]?secret|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|code)=)"
    r"[^&#\s\"'<>]+",
    re.IGNORECASE,
)
# "Authorization: Bearer abc", "Basic dXNlcjpwdw==" in headers or error texts.
_AUTH = re.compile(r"\b((?:Bearer|Basic|Token)\s+)[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
# OpenAI-style API keys wherever they appear.
_API_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{12,}")


def redact(text: str) -> str:
    """`text` with URI credentials, secret query parameters, authorization tokens and API keys masked."""
    if not text:
        return text
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _QUERY.sub(rf"\1{MASK}", text)
    text = _AUTH.sub(rf"\1{MASK}", text)
    return _API_KEY.sub(f"sk-{MASK}", text)


def redact_json(value: Any) -> Any:
    """`redact` over every string (keys included) of a JSON-like value; other values as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v) for v in value]
    return value


def is_loopback(host: str) -> bool:
    """`host` names this machine (localhost, 127.0.0.0/8, ::1): where plain http may carry a secret."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
