"""The whole `prepare` stage: tokenizer, then the pretrain and finetune datasets.

Output: tokenizer/ (trained locally for a tiny model, else the checkpoint's with the LLaVA tokens added),
pretrain/ and finetune/ (shards, stats.json, rejected.jsonl each).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

from components.core import storage
from components.core.stage_run import StageRun
from components.core.templates import VICUNA_SYSTEM
from components.models.spec import TokenizerConfig, VisionConfig

from .records import split_records
from .spec import DatasetSpec, DataSource, PrepareConfig

# Strings every prompt carries; a locally trained tokenizer should know them well.
TEMPLATE_TEXTS = (VICUNA_SYSTEM, "USER: ASSISTANT:", "Answer the question using a single word or phrase.",
                  "Answer with the option's letter from the given choices directly.")


def corpus_texts(sources: list[DataSource]) -> Iterator[str]:
    """Every conversation value of the given annotation files, plus the template strings once per
    record, as often as the model will see them (bad records are skipped here; the datasets' own
    accounting reports them)."""
    for src in sources:
        for raw in split_records(storage.read_bytes(src.annotations), src.annotations):
            record = raw.record if isinstance(raw.record, dict) else {}
            yield from TEMPLATE_TEXTS
            for turn in record.get("conversations") or []:
                if isinstance(turn, dict) and isinstance(turn.get("value"), str):
                    yield turn["value"].replace("<image>", "")


def build_tokenizer(tokenizer: TokenizerConfig, sources: list[DataSource], out: str) -> str:
    """Write the run's tokenizer to `out` and return that path."""
    from components.models.tokenizer import load_tokenizer, train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer.name_or_path:
            load_tokenizer(tokenizer.name_or_path).save_pretrained(tmp)
        else:
            train_tokenizer(corpus_texts(sources), tokenizer.vocab_size, tmp)
        storage.upload_dir(tmp, out)
    return out


def run_prepare(*, datasets: dict[str, DatasetSpec], prepare: PrepareConfig, tokenizer: TokenizerConfig,
                vision: VisionConfig, run: StageRun) -> dict[str, Any]:
    """The tokenizer (trained on every dataset's text, or the checkpoint's), then each dataset, tokenized with
    image blocks sized for `vision`; returns the counts per dataset."""
    from components.models.assembly import num_image_tokens

    from .dataset import prepare_dataset
    from .process import PrepareSettings

    tok_dir = build_tokenizer(tokenizer, [s for d in datasets.values() for s in d.sources],
                              storage.join(run.out, "tokenizer"))
    n_img = num_image_tokens(vision)
    metrics: dict[str, Any] = {}
    for name, data in datasets.items():
        p = prepare
        settings = PrepareSettings(template=data.template, num_image_tokens=n_img, max_length=data.max_length,
                                   over_length=p.over_length, max_image_pixels=p.max_image_pixels,
                                   max_image_bytes=p.max_image_bytes, max_image_side=p.max_image_side,
                                   max_aspect_ratio=p.max_aspect_ratio, max_line_bytes=p.max_line_bytes,
                                   duplicate_ids=p.duplicate_ids, max_rejected_fraction=p.max_rejected_fraction)
        stats = prepare_dataset(data.sources, storage.join(run.out, name), settings, tok_dir,
                                cpus_per_task=p.cpus_per_task, rows_per_shard=p.rows_per_shard)
        metrics.update({f"{name}_{key}": stats[key] for key in ("total", "kept", "rejected", "truncated")})
    return metrics
