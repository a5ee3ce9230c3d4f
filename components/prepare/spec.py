"""The `prepare` stage's settings: the annotation files it reads, how it validates and cuts records."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from components.core.config import Strict
from components.core.fields import SCHEDULING, DataFile, StoragePath
from components.core.jsonl import DEFAULT_MAX_LINE_BYTES
from components.core.templates import TemplateName


class DataSource(Strict):
    """One annotation file (LLaVA JSON list or JSONL) and the folder its `image` paths are relative to."""

    annotations: DataFile
    # Default: the annotation file's folder. Images are not hashed (README: what a fingerprint covers).
    image_root: StoragePath | None = None
    name: str | None = None  # per-source counts in stats; defaults to the file name
    # A trusted dataset whose `image` fields are absolute paths or URLs; otherwise every image must resolve
    # (symlinks included) under image_root, and a record that points elsewhere is rejected.
    allow_absolute_paths: bool = False


class DatasetSpec(Strict):
    """One prepared dataset: its sources, the template it is rendered with and the length it is cut to."""

    sources: list[DataSource]
    template: TemplateName
    max_length: int = Field(gt=0)


class PrepareConfig(Strict):
    over_length: Literal["truncate", "reject"] = "truncate"
    max_image_pixels: int = 178_956_970  # decompression-bomb guard (PIL's default limit)
    max_image_bytes: int = Field(256 * 1024 * 1024, gt=0)  # an image file is read only up to this size
    # Training pads an image to a square of its longest side: a huge or thin image would cost gigabytes there.
    max_image_side: int = Field(8192, gt=0)
    max_aspect_ratio: float = Field(20.0, ge=1)
    max_line_bytes: int = Field(DEFAULT_MAX_LINE_BYTES, gt=0)  # a longer JSONL line is rejected unparsed
    duplicate_ids: Literal["keep", "reject"] = "keep"  # repeated ids are counted in stats.json either way
    # More rejected than this fraction fails the stage (after writing stats.json and rejected.jsonl): a bug
    # or a wrong image_root must not pass as a dataset that is mostly bad records.
    max_rejected_fraction: float = Field(0.5, ge=0, le=1)
    # A result setting: the same rows in the same order either way, but the output's files differ.
    rows_per_shard: int = 4096
    cpus_per_task: Annotated[float, SCHEDULING] = 0.5
