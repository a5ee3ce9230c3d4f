"""Deterministic file writing for the synthetic world, with a manifest entry for every file.

Same inputs give the same bytes: JSON is written with a fixed key order (insertion order of the
records, which the generators fix) and no timestamps, images with pinned encoder settings.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from components.synth.scene import Scene, encode, render


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


class Writer:
    """Writes files under `root` and records what each one is (role, format, benchmark, record count)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[dict[str, Any]] = []
        self.scenes: list[dict[str, Any]] = []
        self._dirs: set[Path] = set()

    def _write(
        self, rel: str, data: bytes, *, role: str, fmt: str, benchmark: str | None, records: int | None
    ) -> None:
        path = self.root / rel
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        path.write_bytes(data)
        entry: dict[str, Any] = {"path": rel, "role": role, "format": fmt}
        if benchmark is not None:
            entry["benchmark"] = benchmark
        if records is not None:
            entry["records"] = records
        entry["bytes"] = len(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        self.entries.append(entry)

    def image(self, rel: str, scene: Scene, *, role: str = "images", benchmark: str | None = None) -> bytes:
        """Render and save a scene; its description goes to the scene log. Returns the encoded bytes."""
        data = encode(render(scene), scene.fmt)
        self._write(rel, data, role=role, fmt=scene.fmt, benchmark=benchmark, records=None)
        self.scenes.append({"image": rel, **scene.to_dict()})
        return data

    def embedded(self, ref: str, scene: Scene) -> bytes:
        """Encode a scene for embedding in another file (MMBench's base64 column); logged under `ref`."""
        data = encode(render(scene), scene.fmt)
        self.scenes.append({"image": ref, **scene.to_dict()})
        return data

    def json(
        self,
        rel: str,
        obj: Any,
        *,
        role: str,
        benchmark: str | None = None,
        fmt: str = "json",
        records: int | None = None,
    ) -> None:
        if records is None and isinstance(obj, list | dict):
            records = len(obj)
        self._write(
            rel, (dumps(obj) + "\n").encode(), role=role, fmt=fmt, benchmark=benchmark, records=records
        )

    def jsonl(self, rel: str, rows: Sequence[Any], *, role: str, benchmark: str | None = None) -> None:
        text = "".join(dumps(r) + "\n" for r in rows)
        self._write(rel, text.encode(), role=role, fmt="jsonl", benchmark=benchmark, records=len(rows))

    def tsv(
        self,
        rel: str,
        header: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        role: str,
        benchmark: str | None = None,
    ) -> None:
        buf = io.StringIO()
        out = csv.writer(buf, delimiter="\t", lineterminator="\n")
        out.writerow(header)
        out.writerows(rows)
        self._write(
            rel, buf.getvalue().encode(), role=role, fmt="tsv", benchmark=benchmark, records=len(rows)
        )

    def text(
        self, rel: str, lines: Iterable[str], *, role: str, fmt: str = "txt", benchmark: str | None = None
    ) -> None:
        lines = list(lines)
        data = "".join(line + "\n" for line in lines).encode()
        self._write(rel, data, role=role, fmt=fmt, benchmark=benchmark, records=len(lines))
