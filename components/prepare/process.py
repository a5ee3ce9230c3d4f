"""Turn raw records into training rows or rejections — the pure work of `prepare`.

Per batch: validate, normalise `<image>`, render the template, tokenize (one batched tokenizer call),
check that the image exists and decodes (recording its size). Every record comes out exactly once,
either as a kept row or as a rejected row with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from components.core import datafiles, images
from components.core.conversation import (
    IMAGE_TOKEN,
    RecordError,
    Sample,
    normalize_image_token,
    parse_record,
    word_length,
)
from components.core.templates import TemplateName
from components.core.tokenize import TokenizedSample, Tokenizer, fit_sample, tokenize_samples

from .records import DEFAULT_MAX_LINE_BYTES, RawRecord

# Decoding at a small draft size still reads the whole JPEG stream (so truncation is caught) but
# skips most of the IDCT work.
CHECK_DRAFT_SIZE = 64


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
    max_image_bytes: int = datafiles.DEFAULT_MAX_BYTES
    max_image_side: int = 8192
    max_aspect_ratio: float = 20.0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    duplicate_ids: Literal["keep", "reject"] = "keep"
    max_rejected_fraction: float = 0.5


@dataclass(frozen=True)
class SourceInfo:
    name: str
    file: str
    image_root: str  # the folder (or URL) every image of the source must resolve under
    allow_absolute: bool = False  # a trusted source: absolute image paths and URLs are read as given


def check_image(src: SourceInfo, image: str, settings: PrepareSettings) -> tuple[str, int, int]:
    """(resolved path, width, height) of an image that is safe to read and decodes, and that training can
    square and resize without blowing up; DataFileError or ImageError otherwise."""
    where = datafiles.DataRoot(src.image_root, allow_absolute=src.allow_absolute, max_bytes=settings.max_image_bytes)
    path, data = datafiles.read(where, image)
    width, height = images.check_image_bytes(data, source=path, max_pixels=settings.max_image_pixels,
                                             draft_size=CHECK_DRAFT_SIZE)
    if max(width, height) > settings.max_aspect_ratio * min(width, height):
        raise ImageAspectError(f"{path}: image is {width}×{height}, an aspect ratio over "
                               f"{settings.max_aspect_ratio:g} (prepare.max_aspect_ratio)")
    if max(width, height) > settings.max_image_side:
        raise images.ImageError("too_large", f"{path}: image is {width}×{height}, its longest side is over the "
                                f"limit of {settings.max_image_side} (prepare.max_image_side)")
    return path, width, height


class ImageAspectError(ValueError):
    """An image too thin to square (training pads it to its longest side)."""


def _record_id(raw: RawRecord) -> str:
    rid = raw.record.get("id") if isinstance(raw.record, dict) else None
    return str(rid) if isinstance(rid, str | int) and not isinstance(rid, bool) else ""


def _where(raw: RawRecord, src: SourceInfo) -> str:
    rid = _record_id(raw)
    return f"{src.file} record {raw.index}" + (f" (id {rid!r})" if rid else "")


def _unexpected(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def process_records(
    raws: list[RawRecord], sources: dict[str, SourceInfo], tok: Tokenizer, settings: PrepareSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept rows, rejected rows) for a batch of raw records; every record lands in exactly one.

    Any exception while processing a record is that record's rejection (`unexpected_error`, with the
    exception's type and message); the stage's rejected-fraction limit catches a bug that rejects them all.
    """
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
            samples.append((raw, normalize_image_token(sample)))
        except RecordError as e:
            reject(raw, e.reason, str(e))
        except Exception as e:  # noqa: BLE001 - one record must not fail the stage
            reject(raw, "unexpected_error", f"{_where(raw, sources[raw.source])}: {_unexpected(e)}")

    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    for (raw, sample), compact in zip(samples, _tokenized(samples, tok, settings), strict=True):
        try:
            if isinstance(compact, Exception):
                raise compact
            kept.append(_kept_row(raw, sample, compact, sources[raw.source], settings, image_id))
        except RecordError as e:
            reject(raw, e.reason, str(e))
        except datafiles.DataFileError as e:
            reject(raw, e.reason, f"{sample.where}: field 'image': {e}")
        except images.ImageError as e:
            reject(raw, images.REJECTION_REASONS[e.reason], f"{sample.where}: field 'image': {e}")
        except ImageAspectError as e:
            reject(raw, "image_aspect_ratio", f"{sample.where}: field 'image': {e}")
        except Exception as e:  # noqa: BLE001 - one record must not fail the stage
            reject(raw, "unexpected_error", f"{sample.where}: {_unexpected(e)}")
    return kept, rejected


def _tokenized(samples: list[tuple[RawRecord, Sample]], tok: Tokenizer,
               settings: PrepareSettings) -> list[TokenizedSample | Exception]:
    """The batch tokenized in one call; one by one when that call fails, so only the culprit is lost."""
    batch = [s for _, s in samples]
    try:
        return list(tokenize_samples(batch, tok, template=settings.template))
    except Exception:  # noqa: BLE001 - isolate the record that broke the batch
        out: list[TokenizedSample | Exception] = []
        for s in batch:
            try:
                out.extend(tokenize_samples([s], tok, template=settings.template))
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out


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
        uri, width, height = check_image(src, sample.image, settings)
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
