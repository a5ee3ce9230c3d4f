"""Splitting annotation files into records: every odd shape of file accounted for, nothing silently lost."""

import json

from components.prepare.records import split_records


def records(data, **kw):
    return list(split_records(data, "f.json", **kw))


def test_truncated_list_keeps_complete_records_and_says_what_was_lost():
    data = json.dumps([{"id": 1}, {"id": 2}, {"id": 3}]).encode()[:-4]
    lost = len(data) - data.rindex(b"{")
    out = records(data)
    assert [r.record for r in out[:2]] == [{"id": 1}, {"id": 2}]
    assert out[2].reason == "malformed_json" and out[2].index == 2
    assert "breaks at record 2" in out[2].message and "the 2 records before it are kept" in out[2].message
    assert f"remaining {lost} characters are lost" in out[2].message
    cut = records(json.dumps([{"id": 1}, {"id": 2}]).encode()[:-1])
    assert cut[-1].index == 2 and "ends before the closing ']'" in cut[-1].message


def test_list_with_trailing_text_or_missing_comma():
    out = records(b'[{"id": 1}] {"id": 2}')
    assert out[0].record == {"id": 1} and out[1].reason == "malformed_json"
    assert "after the closing ']'" in out[1].message
    out = records(b'[{"id": 1} {"id": 2}]')
    assert out[0].record == {"id": 1} and "expected ',' or ']'" in out[1].message
    assert records(b"[ ]") == []


def test_pretty_printed_object_is_one_rejection_not_one_per_line():
    data = json.dumps({"data": [{"id": 1}, {"id": 2}]}, indent=2).encode()
    (out,) = records(data)
    assert out.reason == "not_a_list" and "expected a JSON list" in out.message
    (one,) = records(b'{"id": 1}\n')  # a one-line JSONL file stays a record
    assert one.record == {"id": 1} and one.index == 1


def test_jsonl_splits_on_newline_only_with_crlf_and_bom():
    line = json.dumps({"id": "a", "text": "x\u2028y\u0085z\u2029"}, ensure_ascii=False)
    data = "\ufeff".encode() + (line + "\r\n" + '{"id": "b"}\r\n').encode()
    out = records(data)
    assert [r.record["id"] for r in out] == ["a", "b"] and [r.index for r in out] == [1, 2]
    assert out[0].record["text"] == "x\u2028y\u0085z\u2029"


def test_huge_lines_are_rejected_unparsed():
    data = b'{"id": 1}\n{"id": 2, "pad": "' + b"x" * 100 + b'"}\n{"id": 3}'
    out = records(data, max_line_bytes=50)
    assert [r.reason for r in out] == [None, "line_too_long", None]
    assert "line 2" in out[1].message and "over the limit of 50" in out[1].message


def test_nesting_too_deep_to_parse_is_one_rejection():
    deep = "[" * 5000 + "]" * 5000
    out = records(f'{{"id": 1}}\n{{"id": 2, "x": {deep}}}\n{{"id": 3}}'.encode())
    assert [r.reason for r in out] == [None, "malformed_json", None] and "nested too deeply" in out[1].message
    out = records(f'[{{"id": 1}}, {deep}, {{"id": 3}}]'.encode())
    assert out[0].record == {"id": 1} and out[1].reason == "malformed_json" and len(out) == 2


def test_jsonl_bad_utf8_and_an_over_long_first_line_cost_only_their_line():
    data = b'{"id": "' + b"x" * 100 + b'"}\n{"id": 2}\n{"id": "caf\xe9"}\n{"id": "\\ud800"}\n'
    out = records(data, max_line_bytes=50)
    assert [r.reason for r in out] == ["line_too_long", None, "invalid_utf8", "invalid_utf8"]
    assert [r.index for r in out] == [1, 2, 3, 4] and out[1].record == {"id": 2}
    assert out[0].message == "f.json line 1: 110 bytes, over the limit of 50"
    assert out[2].message == "f.json line 3: not valid UTF-8 (byte 0xe9 at byte 12)"
    assert "field id is not valid UTF-8" in out[3].message  # a lone surrogate escape, caught after parsing
