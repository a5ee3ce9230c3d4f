"""Turn raw records into training rows or rejections — the pure work of `prepare`.

Per batch: validate, normalise `<image>`, render the template, tokenize (one batched tokenizer call),
check that the image exists and decodes (recording its size). Every record comes out exactly once,
either as a kept row or as a rejected row with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from components.core import images
from components.core.conversation import (
    IMAGE_TOKEN,
    RecordError,
    Sample,
    normalize_image_token,
    parse_record,
    word_length,
)
from components.core.storage import join, read_bytes
from components.core.templates import TemplateName
from components.core.tokenize import TokenizedSample, Tokenizer, fit_sample, tokenize_samples

from .records import RawRecord

# Decoding at a small draft size still reads the whole JPEG stream (so truncation is caught) but
# skips most of the IDCT work.
CHECK_DRAFT_SIZE = 64

IMAGE_REASONS = {
    "missing": "missing_image",
    "corrupt": "corrupt_image",
    "truncated": "truncated_image",
    "too_large": "image_too_large",
    "unsupported": "unsupported_image",
}

KEPT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("file", pa.string()),
    ("index", pa.int64()),
    ("image", pa.string()),  # full path or URL; "" for text-only samples
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("input_ids", pa.list_(pa.int32())),  # compact form: one <image> id (see expand_image_tokens)
    ("labels", pa.list_(pa.int32())),
    ("length", pa.int32()),  # tokens the model sees, image tokens expanded
    ("modality_length", pa.int32()),  # +words for image samples, -words for text-only (grouping)
    ("truncated", pa.bool_()),
])

REJECTED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("file", pa.string()),
    ("index", pa.int64()),
    ("reason", pa.string()),
    ("message", pa.string()),
])


@dataclass(frozen=True)
class PrepareSettings:
    template: TemplateName
    num_image_tokens: int
    max_length: int
    over_length: Literal["truncate", "reject"] = "truncate"
    max_image_pixels: int = 178_956_970
    check_images: bool = True


@dataclass(frozen=True)
class SourceInfo:
    name: str
    file: str
    image_root: str | None


def image_uri(image_root: str | None, image: str) -> str:
    return join(image_root, image) if image_root else image


def check_image(uri: str, max_pixels: int, read: Callable[[str], bytes] = read_bytes) -> tuple[int, int]:
    """(width, height) of an image that exists and decodes; ImageError otherwise."""
    try:
        data = read(uri)
    except FileNotFoundError:
        raise images.ImageError("missing", f"image {uri} does not exist") from None
    return images.check_image_bytes(data, source=uri, max_pixels=max_pixels, draft_size=CHECK_DRAFT_SIZE)


def _record_id(raw: RawRecord) -> str:
    rid = raw.record.get("id") if isinstance(raw.record, dict) else None
    return str(rid) if rid is not None else ""


def process_records(
    raws: list[RawRecord], sources: dict[str, SourceInfo], tok: Tokenizer, settings: PrepareSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept rows, rejected rows) for a batch of raw records; every record lands in exactly one."""
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []

    def reject(raw: RawRecord, reason: str, message: str) -> None:
        src = sources[raw.source]
        rejected.append({"id": _record_id(raw), "source": src.name, "file": src.file, "index": raw.index,
                         "reason": reason, "message": message})

    samples: list[tuple[RawRecord, Sample]] = []
    for raw in raws:
        if raw.reason is not None:
            reject(raw, raw.reason, raw.message or raw.reason)
            continue
        try:
            sample = parse_record(raw.record, source=sources[raw.source].file, index=raw.index)
        except RecordError as e:
            reject(raw, e.reason, str(e))
            continue
        samples.append((raw, normalize_image_token(sample)))

    tokenized = tokenize_samples([s for _, s in samples], tok, template=settings.template)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    for (raw, sample), compact in zip(samples, tokenized, strict=True):
        try:
            if isinstance(compact, RecordError):
                raise compact
            kept.append(_kept_row(raw, sample, compact, sources[raw.source], settings, image_id))
        except RecordError as e:
            reject(raw, e.reason, str(e))
        except images.ImageError as e:
            reject(raw, IMAGE_REASONS[e.reason], f"{sample.where}: field 'image': {e}")
    return kept, rejected


def _kept_row(
    raw: RawRecord, sample: Sample, compact: TokenizedSample, src: SourceInfo, settings: PrepareSettings,
    image_id: int,
) -> dict[str, Any]:
    fitted = fit_sample(sample, compact, image_id=image_id, num_image_tokens=settings.num_image_tokens,
                        max_length=settings.max_length)
    if fitted.truncated and settings.over_length == "reject":
        raise RecordError("over_length", f"{sample.where}: {len(compact.input_ids) - 1 + fitted.num_image_tokens}"
                          f" tokens > max_length {settings.max_length}")
    # Keep the compact form, cut so that expanding the image gives exactly the fitted length.
    keep = fitted.length - (fitted.num_image_tokens - 1 if fitted.num_image_tokens else 0)
    uri, width, height = "", 0, 0
    if sample.image is not None:
        uri = image_uri(src.image_root, sample.image)
        if settings.check_images:
            width, height = check_image(uri, settings.max_image_pixels)
    words = word_length(sample)
    return {
        "id": sample.id, "source": src.name, "file": src.file, "index": raw.index, "image": uri,
        "image_width": width, "image_height": height,
        "input_ids": compact.input_ids[:keep], "labels": compact.labels[:keep],
        "length": fitted.length, "modality_length": words if sample.image is not None else -words,
        "truncated": fitted.truncated,
    }


def to_tables(kept: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    return (pa.Table.from_pylist(kept, schema=KEPT_SCHEMA),
            pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA))


def raw_from_row(row: dict[str, Any]) -> RawRecord:
    """Inverse of the row form used to move raw records through Ray Data."""
    record = json.loads(row["record_json"]) if row.get("record_json") else None
    return RawRecord(row["source"], int(row["index"]), record, row.get("reason") or None,
                     row.get("message") or None)


def raw_to_row(raw: RawRecord) -> dict[str, Any]:
    return {"source": raw.source, "index": raw.index,
            "record_json": json.dumps(raw.record) if raw.reason is None else "",
            "reason": raw.reason or "", "message": raw.message or ""}
