"""The GPT-judge client and the judged benchmarks against a fake OpenAI-compatible server on 127.0.0.1."""

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from components.evaluate.benchmarks import get_benchmark
from components.evaluate.judge import (
    HttpJudge,
    JudgeConfig,
    JudgeNotConfigured,
    judge_from_env,
)

# A behaviour maps (request body, call number) to (status, body bytes, delay seconds).
Behaviour = Callable[[dict[str, Any], int], tuple[int, bytes, float]]


def completion(content: str, model: str = "fake-gpt") -> bytes:
    return json.dumps(
        {"model": model, "choices": [{"message": {"role": "assistant", "content": content}}]}
    ).encode()


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.behaviour: Behaviour = lambda body, n: (200, completion("ok"), 0.0)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    n = len(fake.requests)
                status, payload, delay = fake.behaviour(body, n)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def config(self, **kw: Any) -> JudgeConfig:
        return JudgeConfig(
            **{
                "base_url": self.url,
                "model": "judge-model",
                "api_key": "sk-test",
                "backoff_s": 0.0,
                "timeout_s": 5.0,
                "max_retries": 2,
                "concurrency": 1,
                **kw,
            }
        )


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI()
    thread = threading.Thread(target=f.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f
    f.server.shutdown()
    f.server.server_close()


# ---------------------------------------------------------------- client


def test_chat_sends_openai_request(fake: FakeOpenAI) -> None:
    fake.behaviour = lambda body, n: (200, completion("8 6\nfine"), 0.0)
    reply = HttpJudge(fake.config()).chat([{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=7)
    assert reply.ok and reply.content == "8 6\nfine" and reply.attempts == 1 and reply.model == "fake-gpt"
    body = fake.requests[0]
    assert body == {
        "model": "judge-model",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "max_tokens": 7,
    }
    assert fake.headers[0]["Authorization"] == "Bearer sk-test"


def test_http_500_is_retried_then_succeeds(fake: FakeOpenAI) -> None:
    fake.behaviour = lambda body, n: (500, b"boom", 0.0) if n <= 2 else (200, completion("0.5"), 0.0)
    reply = HttpJudge(fake.config()).chat([{"role": "user", "content": "x"}], temperature=0, max_tokens=3)
    assert reply.ok and reply.attempts == 3 and len(fake.requests) == 3


def test_http_500_forever_fails_after_bounded_retries(fake: FakeOpenAI) -> None:
    fake.behaviour = lambda body, n: (503, b"unavailable", 0.0)
    reply = HttpJudge(fake.config(max_retries=2)).chat(
        [{"role": "user", "content": "x"}], temperature=0, max_tokens=3
    )
    assert not reply.ok and reply.attempts == 3 and "HTTP 503" in (reply.error or "")
    assert len(fake.requests) == 3


def test_client_error_is_not_retried(fake: FakeOpenAI) -> None:
    fake.behaviour = lambda body, n: (401, b'{"error": "bad key"}', 0.0)
    reply = HttpJudge(fake.config()).chat([{"role": "user", "content": "x"}], temperature=0, max_tokens=3)
    assert not reply.ok and reply.attempts == 1 and "HTTP 401" in (reply.error or "")


@pytest.mark.parametrize(
    "payload", [b"not json", b'{"choices": []}', b'{"choices": [{"message": {"content": null}}]}']
)
def test_malformed_reply_is_retried_and_recorded(fake: FakeOpenAI, payload: bytes) -> None:
    fake.behaviour = lambda body, n: (200, payload, 0.0)
    reply = HttpJudge(fake.config(max_retries=1)).chat(
        [{"role": "user", "content": "x"}], temperature=0, max_tokens=3
    )
    assert not reply.ok and reply.attempts == 2 and "malformed" in (reply.error or "")


def test_timeout_is_bounded(fake: FakeOpenAI) -> None:
    fake.behaviour = lambda body, n: (200, completion("late"), 1.0)
    start = time.monotonic()
    reply = HttpJudge(fake.config(timeout_s=0.2, max_retries=1)).chat(
        [{"role": "user", "content": "x"}], temperature=0, max_tokens=3
    )
    assert not reply.ok and reply.attempts == 2 and "timed out" in (reply.error or "")
    assert time.monotonic() - start < 1.5


def test_unreachable_server_fails_cleanly() -> None:
    cfg = JudgeConfig(
        base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0.0, timeout_s=1.0
    )
    reply = HttpJudge(cfg).chat([{"role": "user", "content": "x"}], temperature=0, max_tokens=3)
    assert not reply.ok and reply.attempts == 2 and "cannot reach" in (reply.error or "")


def test_judge_from_env() -> None:
    missing = judge_from_env({})
    assert isinstance(missing, JudgeNotConfigured)
    assert "LLAVA_JUDGE_BASE_URL" in missing.reason and "LLAVA_JUDGE_MODEL" in missing.reason
    cfg = judge_from_env(
        {"LLAVA_JUDGE_BASE_URL": "http://h:1/v1/", "LLAVA_JUDGE_MODEL": "gpt-4o", "LLAVA_JUDGE_TIMEOUT": "7"}
    )
    assert isinstance(cfg, JudgeConfig)
    assert cfg.endpoint == "http://h:1/v1/chat/completions" and cfg.timeout_s == 7.0 and cfg.api_key is None
    with pytest.raises(ValueError, match="LLAVA_JUDGE_MAX_RETRIES"):
        judge_from_env(
            {"LLAVA_JUDGE_BASE_URL": "http://h", "LLAVA_JUDGE_MODEL": "m", "LLAVA_JUDGE_MAX_RETRIES": "x"}
        )


# ---------------------------------------------------------------- LLaVA-Bench


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_llava_bench(root: Path) -> Path:
    write_jsonl(
        root / "questions.jsonl",
        [
            {"question_id": 0, "image": "001.jpg", "text": "What is shown?", "category": "conv"},
            {"question_id": 1, "image": "001.jpg", "text": "Describe it.", "category": "detail"},
            {"question_id": 2, "image": "002.jpg", "text": "Why is it funny?", "category": "complex"},
        ],
    )
    write_jsonl(root / "answers_gpt4.jsonl", [{"question_id": i, "text": f"reference {i}"} for i in range(3)])
    write_jsonl(
        root / "context.jsonl",
        [
            {"image": "001.jpg", "caption": "A red fox."},
            {"image": "002.jpg", "caption": ["A cat.", "On a mat."]},
        ],
    )
    return root


def review_by_question(scores: dict[str, str]) -> Behaviour:
    def behave(body: dict[str, Any], n: int) -> tuple[int, bytes, float]:
        user = body["messages"][-1]["content"]
        for question, reply in scores.items():
            if f"[Question]\n{question}\n" in user:
                return 200, completion(reply), 0.0
        return 500, b"unexpected", 0.0

    return behave


def test_llava_bench_relative_score_per_category(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.behaviour = review_by_question(
        {"What is shown?": "8 6\nok", "Describe it.": "10 10\nok", "Why is it funny?": "8 4\nok"}
    )
    bench = get_benchmark("llava_bench")
    root = make_llava_bench(tmp_path / "llava-bench-in-the-wild")
    qs = bench.load_questions(root)
    res = bench.score(
        qs, {"0": "a fox", "1": "a fox, red", "2": "it is a cat"}, root, judge=fake.config(concurrency=2)
    )
    assert res["status"] == "ok"
    assert res["details"]["conv"]["relative"] == 75.0
    assert res["details"]["complex"]["relative"] == 50.0
    # summarize_gpt_review.py: means rounded to 3 decimals (6.667, 8.667), ratio rounded to 1 decimal.
    assert res["value"] == round(6.667 / 8.667 * 100, 1) == 76.9
    assert res["judge"]["n_failures"] == 0 and res["judge"]["model"] == "judge-model"
    body = fake.requests[0]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 1024
    assert body["messages"][0] == {
        "role": "system",
        "content": "You are a helpful and precise assistant for checking the quality of the answer.",
    }
    contents = [r["messages"][1]["content"] for r in fake.requests]
    fox = next(c for c in contents if "What is shown?" in c)
    assert fox.startswith(
        "[Context]\nA red fox.\n\n[Question]\nWhat is shown?\n\n[Assistant 1]\nreference 0\n\n"
        "[End of Assistant 1]\n\n[Assistant 2]\na fox\n\n[End of Assistant 2]\n\n[System]\n"
    )
    assert any("[Context]\nA cat.\nOn a mat.\n" in c for c in contents)


def test_llava_bench_unparsable_and_failed_reviews_are_counted_not_averaged(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.behaviour = review_by_question(
        {"What is shown?": "8 6\nok", "Describe it.": "Both are good.", "Why is it funny?": "8 4\nok"}
    )
    bench = get_benchmark("llava_bench")
    root = make_llava_bench(tmp_path / "llava-bench-in-the-wild")
    qs = bench.load_questions(root)
    preds = {"0": "a", "1": "b", "2": "c"}
    res = bench.score(qs, preds, root, judge=fake.config(max_failure_rate=0.5))
    assert res["status"] == "ok" and res["judge"]["n_failures"] == 1
    assert res["judge"]["failures"][0]["question_id"] == "1"
    assert res["value"] == pytest.approx(100 * 5 / 8)  # only the two parsed reviews
    assert "detail" not in res["details"]
    # Over the failure limit no score is reported.
    res = bench.score(qs, preds, root, judge=fake.config(max_failure_rate=0.1))
    assert res["status"] == "judge_failed" and res["value"] is None and "1 of 3" in res["reason"]


def test_llava_bench_server_errors_count_as_failures(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.behaviour = lambda body, n: (500, b"down", 0.0)
    bench = get_benchmark("llava_bench")
    root = make_llava_bench(tmp_path / "llava-bench-in-the-wild")
    res = bench.score(bench.load_questions(root), {"0": "a"}, root, judge=fake.config(max_retries=1))
    assert res["status"] == "judge_failed" and res["judge"]["n_failures"] == 3
    assert res["judge"]["n_calls"] == 6 and res["n_missing"] == 2


def test_judged_benchmark_without_judge_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LLAVA_JUDGE_BASE_URL", "LLAVA_JUDGE_MODEL", "LLAVA_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    bench = get_benchmark("llava_bench")
    root = make_llava_bench(tmp_path / "llava-bench-in-the-wild")
    res = bench.score(bench.load_questions(root), {}, root)
    assert res["status"] == "skipped" and res["value"] is None and "LLAVA_JUDGE_BASE_URL" in res["reason"]


# ---------------------------------------------------------------- MM-Vet


def make_mmvet(root: Path) -> Path:
    write_jsonl(
        root / "llava-mm-vet.jsonl",
        [{"question_id": i, "image": f"v1_{i}.png", "text": f"q{i}?"} for i in range(3)],
    )
    gt = {
        "v1_0": {
            "imagename": "v1_0.png",
            "question": "What is x?",
            "answer": "-1<AND>-5",
            "capability": ["math", "ocr"],
        },
        "v1_1": {"imagename": "v1_1.png", "question": "Color?", "answer": "red", "capability": ["rec"]},
        "v1_2": {"imagename": "v1_2.png", "question": "Count?", "answer": "3", "capability": ["rec", "math"]},
    }
    (root / "mm-vet.json").write_text(json.dumps(gt))
    return root


def test_mmvet_grades_with_reasks_and_averages_per_capability(fake: FakeOpenAI, tmp_path: Path) -> None:
    def behave(body: dict[str, Any], n: int) -> tuple[int, bytes, float]:
        content = body["messages"][0]["content"]
        if content.endswith("What is x? | -1 <AND> -5 | x = -1 | "):
            return 200, completion("0.5"), 0.0
        if "Color? | red | red |" in content:
            # unparsable first, then a number once re-asked (hotter)
            if content.endswith("(digit): "):
                return 200, completion("1.0"), 0.0
            return 200, completion("Correct!"), 0.0
        return 500, b"unexpected", 0.0

    fake.behaviour = behave
    bench = get_benchmark("mmvet")
    root = make_mmvet(tmp_path / "mm-vet")
    qs = bench.load_questions(root)
    res = bench.score(qs, {"0": "x = -1", "1": "red"}, root, judge=fake.config())  # 2 missing -> 0.0
    assert res["status"] == "ok" and res["judge"]["n_failures"] == 0
    assert res["value"] == pytest.approx(100 * 1.5 / 3)
    assert res["details"]["capability"] == {
        "math": pytest.approx(25.0),
        "ocr": pytest.approx(50.0),
        "rec": pytest.approx(50.0),
    }
    temps = [r["temperature"] for r in fake.requests if "Color?" in r["messages"][0]["content"]]
    assert temps == [0.0, 0.0] and all(r["max_tokens"] == 3 for r in fake.requests)
    assert res["samples"][2]["missing"] is True and len(fake.requests) == 3
    bench.write_upload(qs, {"0": "x = -1"}, tmp_path / "mmvet.json")
    assert json.loads((tmp_path / "mmvet.json").read_text()) == {"v1_0": "x = -1", "v1_1": "", "v1_2": ""}


def test_mmvet_never_parsable_is_a_failure_not_a_zero(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.behaviour = lambda body, n: (200, completion("maybe"), 0.0)
    bench = get_benchmark("mmvet")
    root = make_mmvet(tmp_path / "mm-vet")
    res = bench.score(bench.load_questions(root), {"0": "a", "1": "b", "2": "c"}, root, judge=fake.config())
    assert res["status"] == "judge_failed" and res["judge"]["n_failures"] == 3 and res["value"] is None
    assert [r["temperature"] for r in fake.requests[:5]] == [0.0, 0.0, 0.5, 1.0, 1.5]
    assert len(fake.requests) == 15
