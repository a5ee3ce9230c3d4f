"""The whole `prepare` stage for a pipeline config: tokenizer, then the pretrain and finetune datasets.

Output under `out`: tokenizer/ (trained locally for a tiny model, else the checkpoint's with the LLaVA
tokens added), pretrain/ and finetune/ (shards, stats.json, rejected.jsonl each).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

from components.core import storage
from components.core.config import DataSource, PipelineConfig, fill_synth, model_for_prepare
from components.core.templates import VICUNA_SYSTEM

from .dataset import prepare_dataset
from .process import PrepareSettings
from .records import split_records

# Strings every prompt carries; a locally trained tokenizer should know them well.
TEMPLATE_TEXTS = (VICUNA_SYSTEM, "USER: ASSISTANT:", "Answer the question using a single word or phrase.",
                  "Answer with the option's letter from the given choices directly.")


def resolve_sources(sources: list[DataSource], synth_root: str | None) -> list[DataSource]:
    """Fill `{synth}` in annotation and image paths with the synthetic world's folder."""
    def fill(path: str | None) -> str | None:
        return None if path is None else fill_synth(path, synth_root, f"data path {path!r}")

    return [s.model_copy(update={"annotations": fill(s.annotations), "image_root": fill(s.image_root)})
            for s in sources]


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


def build_tokenizer(cfg: PipelineConfig, sources: list[DataSource], out: str) -> str:
    """Write the run's tokenizer to `out` and return that path."""
    from components.models.tokenizer import load_tokenizer, train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        if cfg.model.tokenizer.name_or_path:
            load_tokenizer(cfg.model.tokenizer.name_or_path).save_pretrained(tmp)
        else:
            train_tokenizer(corpus_texts(sources), cfg.model.tokenizer.vocab_size, tmp)
        storage.upload_dir(tmp, out)
    return out


def run_prepare(cfg: PipelineConfig, out: str, synth_root: str | None = None) -> dict[str, Any]:
    """Tokenizer + both datasets; returns their stats."""
    from components.models.assembly import num_image_tokens

    pretrain = resolve_sources(cfg.data.pretrain, synth_root)
    finetune = resolve_sources(cfg.data.finetune, synth_root)
    tok_dir = build_tokenizer(cfg, pretrain + finetune, storage.join(out, "tokenizer"))
    n_img = num_image_tokens(model_for_prepare(cfg))
    result: dict[str, Any] = {"tokenizer": tok_dir}
    for name, stage, sources in (("pretrain", cfg.pretrain, pretrain), ("finetune", cfg.finetune, finetune)):
        p = cfg.prepare
        settings = PrepareSettings(template=stage.template, num_image_tokens=n_img, max_length=stage.max_length,
                                   over_length=p.over_length, max_image_pixels=p.max_image_pixels,
                                   max_image_bytes=p.max_image_bytes, max_image_side=p.max_image_side,
                                   max_aspect_ratio=p.max_aspect_ratio, max_line_bytes=p.max_line_bytes,
                                   duplicate_ids=p.duplicate_ids, max_rejected_fraction=p.max_rejected_fraction)
        result[name] = prepare_dataset(sources, storage.join(out, name), settings, tok_dir,
                                       cpus_per_task=cfg.prepare.cpus_per_task,
                                       rows_per_shard=cfg.prepare.rows_per_shard)
    return result
