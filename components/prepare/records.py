"""Split an annotation file (JSON list or JSONL) into raw records, each with its position.

Nothing is dropped here: a line that is not JSON, or text that is not UTF-8, becomes a record that
carries its rejection reason, so `prepare` can account for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from components.core.jsonl import BOM, DEFAULT_MAX_LINE_BYTES, LineProblem, split_jsonl


@dataclass(frozen=True)
class RawRecord:
    source: str  # the annotation file, as the user named it
    index: int  # list index (JSON list) or 1-based line number (JSONL)
    record: Any = None  # the parsed JSON value, when it parsed
    reason: str | None = None  # a rejection reason when it did not
    message: str | None = None


def _bad_utf8_field(value: Any, path: str = "") -> str | None:
    """Path of the first string holding undecodable bytes (kept by surrogateescape), if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(value)"
        return None
    if isinstance(value, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for sub_path, v in items:
        found = _bad_utf8_field(v, sub_path)
        if found is not None:
            return found
    return None


def _checked(source: str, index: int, value: Any) -> RawRecord:
    bad = _bad_utf8_field(value)
    if bad is not None:
        return RawRecord(source, index, None, "invalid_utf8", f"{source} record {index}: field {bad} is not valid UTF-8")
    return RawRecord(source, index, value)


_TOO_DEEP = "JSON nested too deeply to parse"
_JSON_WS = b" \t\r\n"


def split_records(data: bytes, source: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[RawRecord]:
    """Records of a JSON list or JSONL file, in file order. JSONL goes through the shared splitter
    (components.core.jsonl): lines split on "\\n" only, BOM and CRLF tolerated, over-long lines unparsed."""
    body = data.removeprefix(BOM)
    start = len(body) - len(body.lstrip(_JSON_WS))
    first = body[start : start + 1]
    if first == b"[":
        # surrogateescape keeps invalid bytes so one bad record does not cost the whole file.
        yield from _list_records(body.decode("utf-8", errors="surrogateescape"), source)
        return
    if first == b"{":
        whole = _whole_object(body, start, max_line_bytes)
        if whole is not None:
            n_lines = body.count(b"\n") + 1
            yield RawRecord(source, 1, None, "not_a_list",
                            f"{source}: one JSON object spanning {n_lines} lines ({len(whole)} keys); "
                            "expected a JSON list of records or one record per line (JSONL)")
            return
    for lineno, item in split_jsonl(data, max_line_bytes):
        if isinstance(item, LineProblem):
            yield RawRecord(source, lineno, None, item.reason, f"{source} line {lineno}: {item.message}")
        else:
            yield _checked(source, lineno, item)


def _whole_object(body: bytes, start: int, max_line_bytes: int) -> dict[str, Any] | None:
    """The file as one JSON object spread over several lines (pretty-printed), or None. A file whose first
    line parses by itself is JSONL (the whole could only parse if nothing followed), so then only that line
    is parsed, not the whole file; an over-long first line is left to the JSONL splitter to report."""
    end = body.find(b"\n", start)
    if end < 0 or not body[end:].strip(_JSON_WS):
        return None  # one line: a one-record JSONL file
    if end - start > max_line_bytes:
        return None
    try:
        json.loads(body[start:end])
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        pass
    try:
        value = json.loads(body.decode("utf-8", errors="surrogateescape"))
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


_WS = " \t\n\r"


def _list_records(text: str, source: str) -> Iterator[RawRecord]:
    """Items of a JSON list one by one, so that a file cut short keeps the records before the cut."""
    decoder = json.JSONDecoder()
    pos = _skip(text, text.index("[") + 1)
    if text.startswith("]", pos):
        return
    index = 0
    while True:
        start = pos
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield _broken(source, index, text, e.pos, e.msg, lost_from=start)
            return
        except RecursionError:  # its end cannot be found without parsing it, so the rest is lost too
            yield _broken(source, index, text, start, _TOO_DEEP, lost_from=start)
            return
        yield _checked(source, index, item)
        index += 1
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
            continue
        if text.startswith("]", pos):
            rest = text[pos + 1 :].strip(_WS)
            if rest:
                yield _broken(source, index, text, pos + 1, "text after the closing ']'")
            return
        what = "the file ends before the closing ']'" if pos >= len(text) else "expected ',' or ']' after a record"
        yield _broken(source, index, text, pos, what)
        return


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _broken(source: str, index: int, text: str, pos: int, what: str, lost_from: int | None = None) -> RawRecord:
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    lost = len(text) - (pos if lost_from is None else lost_from)
    return RawRecord(source, index, None, "malformed_json",
                     f"{source}: the JSON list breaks at record {index} (line {line}, column {column}: {what}); the {index} "
                     f"records before it are kept, the remaining {lost:,} characters are lost")
