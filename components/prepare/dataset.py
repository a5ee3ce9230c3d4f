"""The `prepare` stage on Ray Data: records → validated, tokenized Parquet shards, with full accounting.

Output of one dataset (pretrain or finetune), under `out`:
  shards/*.parquet   kept samples (compact token ids, labels, image reference, lengths)
  stats.json         totals, kept, rejected by reason, truncated, per-source counts, length histogram
  rejected.jsonl     one line per rejected record: id, source, file, index, reason, message
kept + rejected = total, always.
"""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from components.core import storage
from components.core.tokenize import Tokenizer
from components.prepare.spec import DataSource

from .json_tokenizer import load_json_tokenizer
from .process import KEPT_SCHEMA, PrepareSettings, SourceInfo, process_records, raw_from_row, raw_to_row
from .records import DEFAULT_MAX_LINE_BYTES, split_records
from .stats import compute_stats

OUTPUT_SCHEMA = pa.schema(list(KEPT_SCHEMA) + [("reason", pa.string()), ("message", pa.string())])


def source_infos(sources: list[DataSource]) -> dict[str, SourceInfo]:
    """Keyed by annotation path; names default to the file name and must be unique."""
    infos: dict[str, SourceInfo] = {}
    for s in sources:
        name = s.name or s.annotations.rstrip("/").rsplit("/", 1)[-1]
        if any(i.name == name for i in infos.values()):
            raise ValueError(f"two data sources are both named {name!r}; give them distinct `name`s")
        # Without an image_root, image paths are relative to the annotation file's folder.
        root = s.image_root or posixpath.dirname(s.annotations) or "."
        infos[s.annotations] = SourceInfo(name=name, file=s.annotations, image_root=root,
                                          allow_absolute=s.allow_absolute_paths)
    return infos


class TooManyRejected(RuntimeError):
    """More of a dataset was rejected than `prepare.max_rejected_fraction` allows."""


def read_source_rows(row: dict[str, Any], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[dict[str, Any]]:
    """Every record of one annotation file, as a row (a read failure is one rejected record)."""
    path = row["file"]
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        yield {"source": path, "index": 0, "record_json": "", "reason": "malformed_json",
               "message": f"{path}: annotation file does not exist"}
        return
    except OSError as e:
        yield {"source": path, "index": 0, "record_json": "", "reason": "malformed_json",
               "message": f"{path}: annotation file cannot be read ({type(e).__name__}: {e})"}
        return
    for raw in split_records(data, path, max_line_bytes):
        yield raw_to_row(raw)


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_dir: str) -> Tokenizer:
    """One tokenizer per worker process and folder: Ray reuses workers, so later batches skip the load."""
    # Straight from tokenizer.json when possible: importing transformers (and so torch) costs a worker
    # seconds of CPU before its first record.
    tok = load_json_tokenizer(tokenizer_dir)
    if tok is None:
        from components.models.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_dir)
    return tok


def process_batch(batch: pa.Table, tokenizer_dir: str, sources: dict[str, SourceInfo],
                  settings: PrepareSettings) -> pa.Table:
    """Ray Data map: a batch of raw record rows -> OUTPUT_SCHEMA rows, kept and rejected alike."""
    raws = [raw_from_row(r) for r in batch.to_pylist()]
    kept, rejected = process_records(raws, sources, _tokenizer(tokenizer_dir), settings)
    rows = [{**r, "reason": "", "message": ""} for r in kept]
    rows += [{**r, "image": "", "image_width": 0, "image_height": 0, "input_ids": [], "labels": [],
              "length": 0, "modality_length": 0, "truncated": False} for r in rejected]
    rows.sort(key=lambda r: (r["file"], r["index"]))  # keep file order inside a batch
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def _only_kept(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch["reason"], "")).select(KEPT_SCHEMA.names)


def prepare_dataset(
    sources: list[DataSource],
    out: str,
    settings: PrepareSettings,
    tokenizer_dir: str,
    *,
    cpus_per_task: float = 0.5,
    batch_size: int = 256,
    rows_per_shard: int = 4096,
) -> dict[str, Any]:
    """Run the Ray Data pipeline for one dataset and write shards, stats.json and rejected.jsonl."""
    import ray

    ctx = ray.data.DataContext.get_current()
    previous = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # same input → same shards
    try:
        return _run_prepare(sources, out, settings, tokenizer_dir, cpus_per_task, batch_size, rows_per_shard)
    finally:
        ctx.execution_options.preserve_order = previous  # the caller's process keeps its own setting


def _run_prepare(
    sources: list[DataSource], out: str, settings: PrepareSettings, tokenizer_dir: str,
    cpus_per_task: float, batch_size: int, rows_per_shard: int,
) -> dict[str, Any]:
    import ray

    infos = source_infos(sources)
    files = ray.data.from_items([{"file": f} for f in infos], override_num_blocks=len(infos))
    # An annotation file reads as one block: cut it into batch-sized blocks so that every CPU gets work.
    raw = files.flat_map(read_source_rows, fn_kwargs={"max_line_bytes": settings.max_line_bytes},
                         num_cpus=cpus_per_task).repartition(
        target_num_rows_per_block=batch_size)
    # Tasks, not actors: they run on Ray's already-started workers, as many at once as the cluster has
    # CPUs for, and the tokenizer loads once per worker process (_tokenizer).
    processed = raw.map_batches(
        process_batch,
        fn_kwargs={"tokenizer_dir": tokenizer_dir, "sources": infos, "settings": settings},
        num_cpus=cpus_per_task,
        batch_size=batch_size,
        batch_format="pyarrow",
    ).materialize()

    summary_cols = ["id", "source", "file", "index", "image", "length", "truncated", "reason", "message"]
    rows = processed.select_columns(summary_cols).take_all()
    duplicates = mark_duplicate_ids(rows, settings.duplicate_ids)
    drop = sorted((r["file"], r["index"]) for r in rows if r["reason"] == "duplicate_id")

    fs, inner = storage.pyarrow_filesystem(storage.join(out, "shards"))
    kept_rows = processed.map_batches(_only_kept, batch_format="pyarrow", batch_size=None)
    if drop:
        kept_rows = kept_rows.map_batches(_without, fn_kwargs={"drop": drop}, batch_format="pyarrow",
                                          batch_size=None)
    kept_rows.repartition(max(1, -(-processed.count() // rows_per_shard))).write_parquet(
        inner, filesystem=fs, mode="overwrite")

    kept = [r for r in rows if not r["reason"]]
    rejected = [{k: r[k] for k in ("id", "source", "file", "index", "reason", "message")}
                for r in rows if r["reason"]]
    stats = {**compute_stats(kept, rejected), "duplicate_ids": duplicates}
    storage.write_json(storage.join(out, "stats.json"), stats)
    lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rejected)
    storage.write_bytes(storage.join(out, "rejected.jsonl"), lines.encode())
    check_rejected_fraction(stats, settings.max_rejected_fraction, out)
    return stats


def mark_duplicate_ids(rows: list[dict[str, Any]], policy: str) -> dict[str, Any]:
    """Count kept records whose id an earlier kept record (file order) already has; with policy "reject"
    those later ones become `duplicate_id` rejections, in place."""
    first: dict[str, tuple[str, int]] = {}
    repeats = 0
    examples: list[str] = []
    for r in sorted((r for r in rows if not r["reason"]), key=lambda r: (r["file"], r["index"])):
        seen = first.setdefault(r["id"], (r["file"], r["index"]))
        if seen == (r["file"], r["index"]):
            continue
        repeats += 1
        if len(examples) < 10:
            examples.append(r["id"])
        if policy == "reject":
            r["reason"] = "duplicate_id"
            r["message"] = f"{r['file']} record {r['index']} (id {r['id']!r}): the id is already used by " \
                           f"{seen[0]} record {seen[1]} (prepare.duplicate_ids: reject)"
    return {"repeated": repeats, "examples": examples, "policy": policy}


def _without(batch: pa.Table, drop: list[tuple[str, int]]) -> pa.Table:
    keys = set(drop)
    mask = [(f, i) not in keys for f, i in zip(batch["file"].to_pylist(), batch["index"].to_pylist(), strict=True)]
    return batch.filter(pa.array(mask, pa.bool_()))


def check_rejected_fraction(stats: dict[str, Any], limit: float, out: str) -> None:
    """TooManyRejected when more than `limit` of the records were rejected (top reasons in the message)."""
    total, rejected = stats["total"], stats["rejected"]
    if not total or rejected / total <= limit:
        return
    top = sorted(stats["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:5]
    reasons = ", ".join(f"{reason} {n}" for reason, n in top)
    raise TooManyRejected(
        f"{rejected} of {total} records rejected ({rejected / total:.0%}, over prepare.max_rejected_fraction "
        f"{limit:g}); top reasons: {reasons}. Every rejection is listed in {storage.join(out, 'rejected.jsonl')}")
