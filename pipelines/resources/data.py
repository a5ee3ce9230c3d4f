"""The shape of each training stage's data, for the resource plan: records, tokens per sample, the longest.

Per annotation file, first that applies:
- a local file that is readable: its records are counted; a published dataset (known by its file name,
  components/train/length_mix.py) takes its modelled length mix, any other file its own text, at
  CHARS_PER_TOKEN characters per token plus the template's overhead;
- the synthetic world's files (`{synth}/...`): their record counts follow from data.synth.size;
- a published dataset's name (an s3:// path, a file not there yet): its record count from the table;
- anything else: unknown, and the plan says so (no time estimate; memory as if every sample were max_length).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.prepare.records import split_records
from components.prepare.spec import DataSource
from components.train.length_mix import KNOWN_DATASETS, DataShape, data_shape, sample_mix, sequence_lengths
from components.train.spec import TrainStageConfig

CHARS_PER_TOKEN = 4.0  # English text in a Llama-style SentencePiece tokenizer, about (a rule of thumb)
TEMPLATE_TOKENS = {"vicuna_v1": 35, "plain": 1}  # system prompt (vicuna_v1) / the "\n" (plain), per sample
TURN_TOKENS = 6  # "USER: " / " ASSISTANT: " and "</s>" around each exchange
SIMULATED = 32_768  # samples drawn to shape a modelled mix


@dataclass(frozen=True)
class Lengths:
    records: int
    lengths: np.ndarray  # tokens per sample (a sample of the records for a modelled mix)
    supervised: np.ndarray
    has_image: np.ndarray
    source: str


def _synth_records(path: str, synth_size: str | None) -> int | None:
    if synth_size is None or not path.startswith("{synth}"):
        return None
    from components.synth.world import FINETUNE_SAMPLES, PRETRAIN_CAPTIONS, SCALES

    per_tiny = {"pretrain/captions.json": PRETRAIN_CAPTIONS, "finetune/mix.json": FINETUNE_SAMPLES}
    n = per_tiny.get(path.removeprefix("{synth}").strip("/"))
    return None if n is None else max(1, round(n * SCALES[synth_size]))


def _measured(data: bytes, path: str, sc: TrainStageConfig, image_tokens: int) -> Lengths:
    lengths, supervised, images = [], [], []
    for raw in split_records(data, path):
        rec = raw.record if isinstance(raw.record, dict) else {}
        turns = [t for t in rec.get("conversations") or [] if isinstance(t, dict) and isinstance(t.get("value"), str)]
        text = sum(len(t["value"].replace("<image>", "")) for t in turns) / CHARS_PER_TOKEN
        answers = sum(len(t["value"]) for t in turns if t.get("from") == "gpt") / CHARS_PER_TOKEN
        overhead = TEMPLATE_TOKENS[sc.template] + TURN_TOKENS * (len(turns) // 2 if sc.template == "vicuna_v1" else 0)
        lengths.append(1 + (image_tokens if rec.get("image") else 0) + round(text + overhead))
        supervised.append(max(1, round(answers + len(turns) // 2)))
        images.append(bool(rec.get("image")))
    return Lengths(len(lengths), np.minimum(lengths, sc.max_length), np.array(supervised), np.array(images),
                   f"{path} (counted; lengths at {CHARS_PER_TOKEN:g} characters per token)")


def _modelled(name: str, records: int, sc: TrainStageConfig, image_tokens: int, how: str, seed: int) -> Lengths:
    known = KNOWN_DATASETS[name]
    samples = sample_mix(known.mix, SIMULATED, np.random.default_rng(seed),
                         max_text=max(4, sc.max_length - 1 - image_tokens))
    lengths = sequence_lengths(samples, image_tokens, sc.max_length)
    return Lengths(records, lengths, np.minimum([s for _, s, _ in samples], lengths),
                   np.array([img for *_, img in samples]), f"{name}: {records:,} records ({how}), {known.source}")


def source_lengths(src: DataSource, sc: TrainStageConfig, image_tokens: int, synth_size: str | None,
                   seed: int = 0) -> Lengths | str:
    """The lengths of one annotation file's samples, or why they are unknown."""
    path, name = src.annotations, Path(src.annotations).name
    local = Path(path) if "://" not in path and not path.startswith("{") else None
    if local is not None and local.is_file():
        data = local.read_bytes()
        if name in KNOWN_DATASETS:
            return _modelled(name, sum(1 for _ in split_records(data, path)), sc, image_tokens, "counted", seed)
        return _measured(data, path, sc, image_tokens)
    synth = _synth_records(path, synth_size)
    if synth is not None:
        return f"{path}: {synth:,} records (data.synth.size), lengths unknown until synth runs"
    if name in KNOWN_DATASETS:
        return _modelled(name, KNOWN_DATASETS[name].records, sc, image_tokens, "published count", seed)
    return f"{path}: not readable here and not a known dataset"


def stage_data(sources: list[DataSource], sc: TrainStageConfig, image_tokens: int, synth_size: str | None,
               seed: int = 0) -> tuple[DataShape | None, int | None, list[str]]:
    """(the stage's data shape when every file's lengths are known, its record count when every count is, notes)."""
    key = json.dumps([[s.model_dump(mode="json") for s in sources], sc.model_dump(mode="json"), image_tokens,
                      synth_size, seed], sort_keys=True)
    shape, records, notes = _stage_data(key)
    return shape, records, list(notes)


@functools.cache
def _stage_data(key: str) -> tuple[DataShape | None, int | None, tuple[str, ...]]:
    raw, sc_raw, image_tokens, synth_size, seed = json.loads(key)
    sources = [DataSource.model_validate(s) for s in raw]
    sc = TrainStageConfig.model_validate(sc_raw)
    parts, notes, records, counts_known = [], [], 0, True
    for src in sources:
        got = source_lengths(src, sc, image_tokens, synth_size, seed)
        if isinstance(got, str):
            notes.append(got)
            synth = _synth_records(src.annotations, synth_size)
            counts_known &= synth is not None
            records += synth or 0
        else:
            parts.append(got)
            notes.append(got.source)
            records += got.records
    if not sources:
        return None, 0, ("no data sources",)
    if len(parts) < len(sources):
        return None, records if counts_known else None, tuple(notes)
    # Each source contributes samples in proportion to its records.
    rng = np.random.default_rng(seed)
    picks = [rng.choice(len(p.lengths), size=max(1, round(SIMULATED * p.records / records)), replace=True)
             if p.records else np.zeros(0, int) for p in parts]
    cat = [np.concatenate([getattr(p, k)[i] for p, i in zip(parts, picks, strict=True)])
           for k in ("lengths", "supervised", "has_image")]
    shape = data_shape(cat[0], cat[1], cat[2], records=records, batch=sc.per_device_batch,
                       num_chunks=sc.num_workers * sc.gradient_accumulation, grouped=sc.group_by_modality_length,
                       source="; ".join(notes))
    return shape, records, tuple(notes)
