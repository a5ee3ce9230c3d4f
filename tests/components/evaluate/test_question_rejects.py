"""Malformed question records cost only themselves: each is rejected with file:line, field and reason, the
rest are read (kept + rejected = records); a file that is mostly malformed fails, naming the first ones."""

import json
from pathlib import Path

import pytest

from components.evaluate.benchmarks import BenchmarkDataError, get_benchmark
from components.evaluate.benchmarks.base import read_jsonl

GOOD = {"question_id": 1, "image": "a.png", "text": "What color is the cube?\nAnswer the question using a single "
        "word or phrase.", "category": "x"}


def line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def test_each_malformed_jsonl_record_is_its_own_rejection(tmp_path: Path) -> None:
    good = [line({**GOOD, "question_id": i}) for i in range(1, 9)]
    bad = [
        "{oops",                                                   # line 9: not JSON
        "[1, 2]",                                                  # 10: not an object
        line({k: v for k, v in GOOD.items() if k != "question_id"}),  # 11: no id
        line({**GOOD, "question_id": True}),                       # 12: id true is not an id
        line({**GOOD, "question_id": 20, "text": 5}),              # 13: text not a string
        line({**GOOD, "question_id": 21, "image": ["a", "b"]}),    # 14: more than one image
    ]
    # U+2028 is legal raw inside a JSON string: one record, not two
    sep = line({**GOOD, "question_id": 30, "text": "Which\u2028line?\nAnswer the question using a single word or "
                "phrase."})
    path = tmp_path / "gqa" / "llava_gqa_testdev_balanced.jsonl"
    path.parent.mkdir()
    path.write_bytes(("\ufeff" + "\r\n".join([*good, *bad, sep]) + "\r\n").encode())  # BOM and CRLF
    qs = get_benchmark("gqa").load_questions(path.parent)
    assert len(qs) + len(qs.rejected) == len(good) + len(bad) + 1
    assert [q.question_id for q in qs] == [*map(str, range(1, 9)), "30"]
    assert "\u2028" in qs[-1].prompt
    by_line = {r["where"].rsplit(":", 1)[1]: r for r in qs.rejected}
    assert sorted(by_line, key=int) == ["9", "10", "11", "12", "13", "14"]
    assert all(r["reason"] == "malformed_question" for r in qs.rejected)
    assert "not valid JSON" in by_line["9"]["message"] and "expected a JSON object" in by_line["10"]["message"]
    assert "missing field 'question_id'" in by_line["11"]["message"]
    assert "field 'question_id' should be" in by_line["12"]["message"]
    assert "field 'text' should be str" in by_line["13"]["message"] and by_line["13"]["question_id"] == "20"
    assert "field 'image' should be a file name" in by_line["14"]["message"]
    assert all(str(path) in r["message"] for r in qs.rejected)


def test_a_mostly_malformed_file_fails_naming_the_first_records(tmp_path: Path) -> None:
    path = tmp_path / "gqa" / "llava_gqa_testdev_balanced.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join([line(GOOD), "{bad", "{worse", "[]"]) + "\n")
    with pytest.raises(BenchmarkDataError, match=r"gqa: 3 of 4 question records .* are malformed .*:2: not valid"):
        get_benchmark("gqa").load_questions(path.parent)


def test_sqa_records_are_rejected_one_by_one(tmp_path: Path) -> None:
    items = [{"id": str(i), "image": f"{i}.png", "conversations": [{"from": "human", "value": f"<image>\nQ{i}?"}]}
             for i in range(4)]
    items += [{"id": "x", "conversations": []}, {"conversations": [{"value": "?"}]}, "not a record"]
    root = tmp_path / "scienceqa"
    root.mkdir()
    (root / "llava_test_CQM-A.json").write_text(json.dumps(items))
    qs = get_benchmark("sqa").load_questions(root)
    assert [q.question_id for q in qs] == ["0", "1", "2", "3"] and len(qs.rejected) == 3
    messages = " | ".join(r["message"] for r in qs.rejected)
    assert "[4] (id x): 'conversations' should start" in messages and "[5]: missing field 'id'" in messages
    assert "[6]: expected a JSON object, got str" in messages


def test_a_deeply_nested_line_is_one_rejection(tmp_path: Path) -> None:
    path = tmp_path / "gqa" / "llava_gqa_testdev_balanced.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join([line(GOOD), line({**GOOD, "question_id": 2}), "[" * 100_000]) + "\n")
    qs = get_benchmark("gqa").load_questions(path.parent)
    assert len(qs) == 2 and [r["where"] for r in qs.rejected] == [f"{path}:3"]
    assert "nested too deeply" in qs.rejected[0]["message"]


def test_an_over_long_or_non_utf8_line_is_one_rejection(tmp_path: Path) -> None:
    """The shared JSONL splitter (components.core.jsonl) bounds a line and decodes it alone: neither a huge
    line nor stray bytes cost the rest of the file."""
    path = tmp_path / "q.jsonl"
    huge = line({**GOOD, "question_id": 2, "text": "x" * 500})
    path.write_bytes("\n".join([line(GOOD), huge, line({**GOOD, "question_id": 3})]).encode()
                     + b'\n{"question_id": 4, "text": "caf\xe9"}\n')
    rejected: list = []
    rows = read_jsonl(path, rejected, max_line_bytes=400)
    assert [n for n, _ in rows] == [1, 3]
    assert [r["where"] for r in rejected] == [f"{path}:2", f"{path}:4"]
    assert f"{path}:2: {len(huge)} bytes, over the limit of 400" == rejected[0]["message"]
    assert "not valid UTF-8" in rejected[1]["message"]
    with pytest.raises(BenchmarkDataError, match=r"q.jsonl:2: .* over the limit"):
        read_jsonl(path, max_line_bytes=400)  # without a rejection list, the first bad line is the error
