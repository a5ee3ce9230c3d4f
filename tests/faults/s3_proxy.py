"""A fault-injecting S3 endpoint: a loopback HTTP proxy in front of the moto server.

Each request is matched against the rules in order; the first rule that matches and still has uses left
acts on it — answers 503 SlowDown, drops the connection without an answer, or stalls for a set time and
then forwards — and every other request is forwarded to moto unchanged. Clients point at it through
AWS_ENDPOINT_URL like at any S3 endpoint, so the code under test runs its real s3fs/botocore path.

Only 127.0.0.1, one thread per connection (ThreadingHTTPServer), stalls wake early on shutdown.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass
class Rule:
    """Which requests a fault hits: `method` (None: any), `key` (a regex searched in the request path, None:
    any), at most `times` of them (None: no limit) and only before `until` (time.monotonic(); None: no end)."""

    # "slowdown": answer 503 SlowDown; "drop": close without an answer; "stall": wait, then forward;
    # "lose_answer": forward, then close without passing the answer on (the request took effect unseen)
    action: str
    method: str | None = None
    key: str | None = None
    times: int | None = None
    until: float | None = None
    stall_s: float = 0.0
    hits: int = 0

    def __post_init__(self) -> None:
        if self.action not in ("slowdown", "drop", "stall", "lose_answer"):
            raise ValueError(f"unknown fault action {self.action!r}: slowdown, drop, stall or lose_answer")

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.until is not None and time.monotonic() >= self.until:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.key is None or re.search(self.key, urllib.parse.unquote(path)) is not None


@dataclass
class S3FaultProxy:
    """`start()`, then `add(Rule(...))` during a test; `seen` lists (method, path, what happened)."""

    upstream: str  # the moto server's URL, http://127.0.0.1:PORT
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()

    def _pick(self, method: str, path: str) -> Rule | None:
        with self._lock:  # count the hit under the lock: `times` is exact across concurrent requests
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
            return None

    def _note(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.seen.append((method, path, what))

    def start(self) -> S3FaultProxy:
        proxy = self
        target = urllib.parse.urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: the test reads `seen` instead
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                rule = proxy._pick(self.command, self.path)
                if rule is not None and rule.action == "drop":
                    proxy._note(self.command, self.path, "drop")
                    self.close_connection = True
                    return
                if rule is not None and rule.action == "slowdown":
                    proxy._note(self.command, self.path, "slowdown")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                if rule is not None and rule.action == "stall":  # bounded by the rule, cut short on shutdown
                    proxy._note(self.command, self.path, "stall")
                    if proxy._stop.wait(rule.stall_s):
                        self.close_connection = True
                        return
                self._forward(body, answer=rule is None or rule.action != "lose_answer")

            def _forward(self, body: bytes, answer: bool) -> None:
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                finally:
                    conn.close()
                proxy._note(self.command, self.path, str(reply.status) if answer else f"{reply.status} lost")
                if not answer:
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for k, v in reply.getheaders():
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD answer carries the object's length, not its own (empty) body's.
                length = reply.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes stalled handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
