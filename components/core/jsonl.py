"""Split JSONL into (line number, value or problem): the one JSONL line splitter.

Benchmark question files and training annotation files both come from other people, so one bad line must
cost only itself: each line yields its parsed value or a `LineProblem` saying why not, and the caller words
the rejection. Only b"\\n" ends a line (str.splitlines() would also split on U+2028, U+0085, ... which JSON
allows raw inside strings); a trailing "\\r" and a leading UTF-8 BOM are tolerated; blank lines are skipped
but still counted. A line longer than `max_line_bytes` is reported unparsed and read no further than the
bound (the rest is skipped in chunks), and a line nested too deeply to parse (RecursionError) is that
line's problem, not a crash. Decoding is strict UTF-8 per line.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

BOM = b"\xef\xbb\xbf"
_CHUNK = 1024 * 1024  # how an over-long line is skipped: never more than this in memory at once

Reason = Literal["line_too_long", "invalid_utf8", "malformed_json"]


@dataclass(frozen=True)
class LineProblem:
    """Why a line gave no value; `message` has no location (the caller prefixes its own file:line)."""

    reason: Reason
    message: str


def split_jsonl(
    source: bytes | BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed JSON value or `LineProblem`) for each non-blank line of `source`
    (bytes, or a binary stream read line by line). A JSON value is never a `LineProblem`, so
    `isinstance(item, LineProblem)` tells them apart."""
    if max_line_bytes <= 0:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    lineno = 0
    while True:
        lineno += 1
        # Room for the BOM (first line), "\r" and "\n": a read of `limit` bytes without "\n" is over-long.
        limit = max_line_bytes + 2 + (len(BOM) if lineno == 1 else 0)
        raw = stream.readline(limit)
        if not raw:
            return
        if not raw.endswith(b"\n") and len(raw) == limit:
            n = _skip_line(stream, raw) - (len(BOM) if lineno == 1 and raw.startswith(BOM) else 0)
            yield lineno, LineProblem("line_too_long", f"{n:,} bytes, over the limit of {max_line_bytes:,}")
            continue
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if lineno == 1:
            line = line.removeprefix(BOM)
        if len(line) > max_line_bytes:
            yield lineno, LineProblem("line_too_long", f"{len(line):,} bytes, over the limit of {max_line_bytes:,}")
            continue
        if not line.strip():
            continue
        yield lineno, _parse(line)


def _skip_line(stream: BinaryIO, head: bytes) -> int:
    """Read past the rest of an over-long line in bounded chunks; its full length without "\\r\\n"."""
    n, tail = len(head), head[-2:]
    while chunk := stream.readline(_CHUNK):
        n += len(chunk)
        tail = (tail + chunk[-2:])[-2:]
        if chunk.endswith(b"\n"):
            break
    return n - len(tail) + len(tail.removesuffix(b"\n").removesuffix(b"\r"))


def _parse(line: bytes) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return LineProblem("invalid_utf8", f"not valid UTF-8 (byte 0x{line[e.start]:02x} at byte {e.start + 1})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return LineProblem("malformed_json", f"not valid JSON ({e.msg} at column {e.colno})")
    except RecursionError:  # a hostile line of nested brackets
        return LineProblem("malformed_json", "not valid JSON (nested too deeply to parse)")
