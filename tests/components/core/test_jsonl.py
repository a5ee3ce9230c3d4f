"""The one JSONL splitter: every line accounted for by number, a bad line costs only itself, and an
over-long line is never read into memory whole."""

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.core import jsonl
from components.core.jsonl import LineProblem, split_jsonl


def split(data: bytes, **kw) -> list:
    out = list(split_jsonl(data, **kw))
    assert out == list(split_jsonl(io.BytesIO(data), **kw))  # bytes and a stream read alike
    return out


def problem(item) -> tuple[str, str]:
    assert isinstance(item, LineProblem), item
    return item.reason, item.message


def test_bom_and_crlf_are_tolerated():
    data = b"\xef\xbb\xbf" + b'{"id": 1}\r\n{"id": 2}\r\n'
    assert split(data) == [(1, {"id": 1}), (2, {"id": 2})]
    # Only a BOM at the start of the file is one; on a later line it is that line's problem.
    (one, (n, bad)) = split(b'{"id": 1}\n\xef\xbb\xbf{"id": 2}\n')
    assert one == (1, {"id": 1}) and n == 2 and problem(bad)[0] == "malformed_json"


def test_only_newline_ends_a_line():
    text = "x\u2028y\u0085z\u2029w\x0bv\x0c"  # str.splitlines() would split this value six times
    data = json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n"
    assert split(data) == [(1, {"text": text})]


def test_blank_lines_are_skipped_but_counted():
    data = b'\n  \n{"id": 1}\r\n\r\n\t\n{"id": 2}'  # no final newline either
    assert split(data) == [(3, {"id": 1}), (6, {"id": 2})]
    assert split(b"") == [] and split(b"\n\n") == []


def test_values_need_not_be_objects():
    assert split(b'[1, 2]\n"s"\n3\nnull\n{"reason": "x", "message": "y"}\n') == [
        (1, [1, 2]), (2, "s"), (3, 3), (4, None), (5, {"reason": "x", "message": "y"})]


def test_malformed_line_is_its_own_problem():
    (a, (n, bad), c) = split(b'{"id": 1}\n{"id": \n{"id": 3}\n')
    assert a == (1, {"id": 1}) and c == (3, {"id": 3}) and n == 2
    reason, message = problem(bad)
    assert reason == "malformed_json" and message.startswith("not valid JSON (") and "column 8" in message


def test_over_long_line_is_reported_by_number_and_the_rest_read():
    data = b'{"id": 1}\n{"id": 2, "pad": "' + b"x" * 100 + b'"}\n{"id": 3}\n'
    (a, (n, bad), c) = split(data, max_line_bytes=50)
    assert a == (1, {"id": 1}) and c == (3, {"id": 3}) and n == 2
    assert problem(bad) == ("line_too_long", "120 bytes, over the limit of 50")


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b""])
def test_line_length_bound_is_exact(bom, end):
    """The bound counts the line's own bytes: not the BOM, nor "\\r\\n", nor a missing final newline."""
    at = b'"' + b"x" * 8 + b'"'  # 10 bytes
    over = b'"' + b"x" * 9 + b'"'  # 11 bytes
    assert split(bom + at + end, max_line_bytes=10) == [(1, "x" * 8)]
    ((n, bad),) = split(bom + over + end, max_line_bytes=10)
    assert n == 1 and problem(bad)[0] == "line_too_long"
    ((n, bad),) = split(b"\n" + over + end, max_line_bytes=10)
    assert n == 2 and problem(bad)[0] == "line_too_long"
    assert split(b" " * 11 + end, max_line_bytes=10)[0][1].reason == "line_too_long"  # blank, yet over
    for n in (11, 12, 13, 100):  # the length reported is the line's own, whether or not it was read whole
        ((_, bad),) = split(bom + b"x" * n + end, max_line_bytes=10)
        assert problem(bad) == ("line_too_long", f"{n} bytes, over the limit of 10")


class Recording(io.BytesIO):
    """A stream that records how much each read asked for and returned."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def readline(self, size: int | None = -1) -> bytes:
        assert size is not None and size > 0, "an unbounded readline"
        out = super().readline(size)
        self.reads.append(len(out))
        return out

    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("the splitter reads line by line, bounded")


def test_over_long_line_is_never_in_memory_whole():
    huge = 5 * jsonl._CHUNK
    stream = Recording(b'{"id": 1}\n"' + b"x" * huge + b'"\n{"id": 3}\n')
    out = list(split_jsonl(stream, max_line_bytes=1000))
    assert out[0] == (1, {"id": 1}) and out[2] == (3, {"id": 3})
    assert problem(out[1][1]) == ("line_too_long", f"{huge + 2:,} bytes, over the limit of 1,000")
    assert max(stream.reads) <= jsonl._CHUNK < huge


def test_deeply_nested_line_is_one_problem_not_a_crash():
    deep = b"[" * 100_000 + b"]" * 100_000
    (a, (n, bad), c) = split(b'{"id": 1}\n' + deep + b'\n{"id": 3}\n')
    assert a == (1, {"id": 1}) and c == (3, {"id": 3}) and n == 2
    assert problem(bad) == ("malformed_json", "not valid JSON (nested too deeply to parse)")


def test_non_utf8_bytes_cost_only_their_line():
    data = b'{"id": 1}\n{"text": "caf\xe9"}\n{"text": "caf\xc3\xa9"}\n\xff\xfe{\x00\n'
    (a, (n2, bad2), c, (n4, bad4)) = split(data)
    assert a == (1, {"id": 1}) and c == (3, {"text": "caf\u00e9"})
    assert (n2, problem(bad2)) == (2, ("invalid_utf8", "not valid UTF-8 (byte 0xe9 at byte 14)"))
    assert n4 == 4 and problem(bad4)[0] == "invalid_utf8"


def test_max_line_bytes_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        list(split_jsonl(b"{}", max_line_bytes=0))


class Blank:
    """A blank line in the generated file."""


texts = st.text(st.characters(codec="utf-8"), max_size=20)
values = st.recursive(st.none() | st.booleans() | st.integers() | texts,
                      lambda kids: st.lists(kids, max_size=3) | st.dictionaries(texts, kids, max_size=3),
                      max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.one_of(values, st.builds(Blank)), max_size=8), crlf=st.booleans(), bom=st.booleans(),
       final_newline=st.booleans())
def test_any_jsonl_round_trips_with_its_line_numbers(lines, crlf, bom, final_newline):
    written = ["" if isinstance(v, Blank) else json.dumps(v, ensure_ascii=False) for v in lines]
    newline = "\r\n" if crlf else "\n"
    data = ("\ufeff" if bom else "") + newline.join(written) + (newline if final_newline else "")
    expected = [(i, v) for i, v in enumerate(lines, 1) if not isinstance(v, Blank)]
    assert split(data.encode()) == expected
