"""LLaVA-1.5's training data as lengths: the known datasets, their length mixes, and the tokens a stage feeds.

Used by the training benchmark (bench/train.py: batches shaped like the real data) and by the resource plan
(pipelines/resources/: time = tokens / throughput). Source counts are exact (../shared/reference/llava15.md
§2.2-2.3); token lengths are a model, not read from the data (no copy of it here): log-normal per source,
medians estimated from each source's format (Llama tokens, the Vicuna system prompt ~35 tokens and ~6 per turn
of "USER:/ASSISTANT:" included), capped at max_length minus the image block. Measure them on the real json
when it is at hand and change the numbers here.
- pretrain, LCS-558K (reference §2.2, preprocess_plain §3.3): BOS + image + a BLIP caption + "\\n", all caption
  tokens supervised; captions median 14 tokens (σ 0.35), i.e. about 10 words.
- finetune, llava_v1_5_mix665k (665,298 samples, composition per LLaVA issue #702; the VQA-style sources hold
  several questions about one image per sample, as multi-turn conversations; turn counts estimated):
  LLaVA-Instruct 157,712 (median 300 text tokens, σ 0.5, 55% supervised); ShareGPT 40,688 text-only (median
  900, σ 0.7, 65%); VQAv2 82,783 (about 5 questions: median 130, σ 0.4, 10%); GQA 72,140 (about 10: median
  260, σ 0.5, 10%); OKVQA 8,998 (median 60, σ 0.3, 10%); OCR-VQA 80,000 (about 5: median 140, σ 0.4, 15%);
  A-OKVQA 66,160 (median 90, σ 0.4, 5%); TextCaps 21,953 (median 60, σ 0.3, 40%); RefCOCO 48,447 (median 220,
  σ 0.5, 30%); VG 86,417 (median 260, σ 0.5, 30%).
So about 6% of finetune samples are text-only and long, the rest 577 image tokens plus 50-700 text tokens.

Tokens are counted two ways (`DataShape`): `useful`, each sample's own tokens, and `padded`, what the
reference's batches feed the model: its LengthGroupedSampler (megabatches of world × batch sorted by length and
dealt into balanced micro-batches, modality-grouped in finetuning; components/train/grouping.py is our copy)
with each micro-batch padded to its longest sample. The published reference throughputs count the latter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grouping import modality_length_grouped


@dataclass(frozen=True)
class Source:
    name: str
    samples: int
    median_text: float  # text tokens (all turns, template included)
    sigma: float  # of log(text tokens)
    supervised: float  # share of the text tokens that are answers
    image: bool = True


MIX = {
    "pretrain": [Source("LCS-558K captions", 558_128, 14, 0.35, 1.0)],
    "finetune": [
        Source("LLaVA-Instruct", 157_712, 300, 0.5, 0.55), Source("ShareGPT", 40_688, 900, 0.7, 0.65, image=False),
        Source("VQAv2", 82_783, 130, 0.4, 0.10), Source("GQA", 72_140, 260, 0.5, 0.10),
        Source("OKVQA", 8_998, 60, 0.3, 0.10), Source("OCR-VQA", 80_000, 140, 0.4, 0.15),
        Source("A-OKVQA", 66_160, 90, 0.4, 0.05), Source("TextCaps", 21_953, 60, 0.3, 0.40),
        Source("RefCOCO", 48_447, 220, 0.5, 0.30), Source("VG", 86_417, 260, 0.5, 0.30),
    ],
}


@dataclass(frozen=True)
class KnownDataset:
    """A published annotation file, recognised by its file name: its record count and its length mix."""

    records: int
    mix: str  # key of MIX
    source: str


KNOWN_DATASETS = {
    "blip_laion_cc_sbu_558k.json": KnownDataset(
        558_128, "pretrain", "LCS-558K, HF liuhaotian/LLaVA-Pretrain (../shared/reference/llava15.md §2.2)"),
    "llava_v1_5_mix665k.json": KnownDataset(
        665_298, "finetune", "HF liuhaotian/LLaVA-Instruct-150K; composition: haotian-liu/LLaVA issue #702 "
                             "(../shared/reference/llava15.md §2.3)"),
}


def sample_mix(stage: str, n: int, rng: np.random.Generator, *, max_text: int) -> list[tuple[int, int, bool]]:
    """n samples of `stage`'s mix: (text tokens, supervised tokens, has image)."""
    sources = MIX[stage]
    weights = np.array([s.samples for s in sources], float)
    picks = rng.choice(len(sources), size=n, p=weights / weights.sum())
    median = np.array([s.median_text for s in sources])[picks]
    sigma = np.array([s.sigma for s in sources])[picks]
    text = np.clip(np.round(median * np.exp(sigma * rng.standard_normal(n))), 4, max_text).astype(int)
    supervised = np.maximum(1, np.round(text * np.array([s.supervised for s in sources])[picks])).astype(int)
    image = np.array([s.image for s in sources])[picks]
    return list(zip(text.tolist(), supervised.tolist(), image.tolist(), strict=True))


@dataclass(frozen=True)
class DataShape:
    """A stage's data as the model sees it (image block expanded, BOS included), per sample."""

    records: int
    useful: float  # mean tokens: each sample's own
    padded: float  # mean tokens as the reference's batches feed them: each micro-batch padded to its longest
    longest: int  # the longest sample: a micro-batch's peak length
    longest_supervised: int  # the most supervised tokens in one sample: the loss's peak logits
    source: str  # where the records and lengths come from


def sequence_lengths(samples: list[tuple[int, int, bool]], image_tokens: int, max_length: int) -> np.ndarray:
    """BOS + the image block (when there is an image) + the text, cut at max_length."""
    return np.minimum([1 + (image_tokens if img else 0) + text for text, _, img in samples], max_length)


def data_shape(lengths: np.ndarray, supervised: np.ndarray, has_image: np.ndarray, *, records: int, batch: int,
               num_chunks: int, grouped: bool, source: str, seed: int = 0) -> DataShape:
    """The shape of samples with these lengths under the reference's sampler: megabatches of num_chunks ×
    batch (num_chunks = world × gradient accumulation), modality-grouped or plainly shuffled."""
    rng = np.random.default_rng(seed)
    order = (modality_length_grouped(lengths, has_image, batch, num_chunks, rng) if grouped
             else rng.permutation(len(lengths)))
    n = len(order) // batch * batch
    padded = lengths[order[:n]].reshape(-1, batch).max(axis=1).mean() if n else lengths.max()
    return DataShape(records=records, useful=float(lengths.mean()), padded=float(padded),
                     longest=int(lengths.max()), longest_supervised=int(supervised.max()), source=source)


def mix_shape(known: KnownDataset, records: int, *, image_tokens: int, max_length: int, batch: int,
              num_chunks: int, grouped: bool, source: str, n: int = 32_768, seed: int = 0) -> DataShape:
    """`data_shape` of `n` samples drawn from a known dataset's modelled mix (seeded: always the same)."""
    samples = sample_mix(known.mix, n, np.random.default_rng(seed), max_text=max(4, max_length - 1 - image_tokens))
    lengths = sequence_lengths(samples, image_tokens, max_length)
    supervised = np.minimum([sup for _, sup, _ in samples], lengths)
    return data_shape(lengths, supervised, np.array([img for *_, img in samples]), records=records, batch=batch,
                      num_chunks=num_chunks, grouped=grouped, source=source, seed=seed)
