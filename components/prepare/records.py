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


def split_records(data: bytes, source: str) -> Iterator[RawRecord]:
    """Records of a JSON list or JSONL file, in file order."""
    # surrogateescape keeps invalid bytes so one bad record does not cost the whole file.
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            yield RawRecord(source, 0, None, "malformed_json",
                            f"{source}: not a valid JSON list (line {e.lineno}, column {e.colno}: {e.msg})")
            return
        for i, item in enumerate(items):
            yield _checked(source, i, item)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            yield RawRecord(source, lineno, None, "malformed_json", f"{source} line {lineno}: not valid JSON ({e.msg})")
            continue
        yield _checked(source, lineno, item)
