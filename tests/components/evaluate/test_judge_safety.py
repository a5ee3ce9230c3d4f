"""The judge client with hostile or careless endpoints: redirects, plain http with a key, huge replies, secrets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from components.evaluate.judge import HttpJudge, JudgeConfig, describe


class Server:
    """An OpenAI-compatible endpoint on 127.0.0.1 whose answer the test sets: (status, headers, body)."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, str], bytes] = (200, {}, b"")
        self.seen: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                server.seen.append({"path": self.path, **dict(self.headers)})
                status, headers, body = server.answer
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    thread = threading.Thread(target=s.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def config(url: str, **kw: Any) -> JudgeConfig:
    return JudgeConfig(**{"base_url": url, "model": "m", "api_key": "sk-secretsecretsecret", "backoff_s": 0.0,
                          "timeout_s": 5.0, "max_retries": 2, **kw})


def ask(judge: HttpJudge):
    return judge.chat([{"role": "user", "content": "x"}], temperature=0, max_tokens=3)


def test_redirects_are_not_followed_so_the_key_stays_home(server: Server) -> None:
    other = Server()  # a second host the redirect points at: it must never see a request
    threading.Thread(target=other.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        server.answer = (307, {"Location": f"http://localhost:{other.httpd.server_address[1]}/steal"}, b"")
        reply = ask(HttpJudge(config(server.url)))
    finally:
        other.httpd.shutdown()
        other.httpd.server_close()
    assert not reply.ok and reply.attempts == 1 and "redirected to localhost" in reply.error
    assert other.seen == [] and len(server.seen) == 1


def test_replies_are_read_only_up_to_the_limit(server: Server) -> None:
    big = json.dumps({"choices": [{"message": {"content": "x" * 5000}}]}).encode()
    server.answer = (200, {"Content-Type": "application/json"}, big)
    reply = ask(HttpJudge(config(server.url, max_response_bytes=1000)))
    assert not reply.ok and reply.attempts == 1 and "over 1,000 bytes" in reply.error
    assert ask(HttpJudge(config(server.url))).content == "x" * 5000


def test_a_key_in_the_query_is_sent_but_never_reported(server: Server) -> None:
    server.answer = (401, {}, b'{"error": "bad key"}')
    judge = HttpJudge(config(server.url + "?key=QUERYSECRET"))
    reply = ask(judge)
    assert server.seen[0]["path"] == "/v1/chat/completions?key=QUERYSECRET"
    assert "QUERYSECRET" not in reply.error and "key=***" in reply.error
    assert "QUERYSECRET" not in json.dumps(describe(judge))


def test_plain_http_with_a_key_only_to_this_machine() -> None:
    with pytest.raises(ValueError, match="plain http:// to judge.example.com with an API key"):
        config("http://judge.example.com/v1")
    config("http://judge.example.com/v1", api_key=None)  # no key, nothing to leak
    config("https://judge.example.com/v1")
    config("http://localhost:8000/v1")
