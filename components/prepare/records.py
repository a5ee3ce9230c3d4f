"""Split an annotation file (JSON list or JSONL) into raw records, each with its position.

Nothing is dropped here: a line that is not JSON, or text that is not UTF-8, becomes a record that
carries its rejection reason, so `prepare` can account for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


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


DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
_TOO_DEEP = "JSON nested too deeply to parse"


def split_records(data: bytes, source: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[RawRecord]:
    """Records of a JSON list or JSONL file, in file order."""
    # surrogateescape keeps invalid bytes so one bad record does not cost the whole file.
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    if text.lstrip().startswith("["):
        yield from _list_records(text, source)
        return
    if text.lstrip().startswith("{") and "\n" in text.strip():
        whole = _whole_object(text)
        if whole is not None:
            yield RawRecord(source, 1, None, "not_a_list",
                            f"{source}: one JSON object spanning {text.count(chr(10)) + 1} lines ({len(whole)} keys); "
                            "expected a JSON list of records or one record per line (JSONL)")
            return
    # Only "\n" ends a JSONL line: str.splitlines() would also split on U+2028, U+0085, ... which JSON
    # allows raw inside strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if len(line) > max_line_bytes:  # characters >= bytes / 4: a cheap bound before any parsing
            yield RawRecord(source, lineno, None, "line_too_long",
                            f"{source} line {lineno}: {len(line):,} characters, over the limit of {max_line_bytes:,}")
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            yield RawRecord(source, lineno, None, "malformed_json", f"{source} line {lineno}: not valid JSON ({e.msg})")
            continue
        except RecursionError:
            yield RawRecord(source, lineno, None, "malformed_json", f"{source} line {lineno}: {_TOO_DEEP}")
            continue
        yield _checked(source, lineno, item)


def _whole_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
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
