"""Prepared rows → one model batch (reference collator, §3.7), in the form transformers' Llava expects.

Rows carry the compact token form (one `<image>` id) and uint8 pixels; here the image id is expanded to the
tower's token count, sequences are truncated to max_length, and pixel_values hold only the rows that have an
image: Llava checks that the number of image-token blocks equals the number of images, so text-only rows get
no dummy image (the reference's zero image exists to keep its projector in the graph, which Llava's splicing
does not need).

Two layouts of the same samples:
- padded (the reference's): one row per sample, right-padded to the longest (pad id / IGNORE_INDEX), with an
  attention_mask;
- packed (`CollateSpec.pack_multiple`): all samples back to back in one row, padded only up to a multiple of
  `pack_multiple` tokens, with position_ids restarting at 0 for each sample and no attention_mask.
  transformers reads such position_ids as packed sequences and builds a block-diagonal causal mask (flex
  attention's BlockMask on GPU, a dense mask with sdpa/eager), so no token attends across samples and each
  sample sees the positions it would see alone. The first label of every sample is IGNORE_INDEX (the
  previous sample's last token must not learn to predict it); in the padded layout that label is never used,
  so the loss is the same over the same supervised tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from components.core.images import normalize
from components.core.tokenize import IGNORE_INDEX, expand_image_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PACK_MULTIPLE = 128  # flex attention's block size


@dataclass(frozen=True)
class CollateSpec:
    image_id: int
    num_image_tokens: int
    max_length: int
    pad_id: int
    image_size: int
    # None: the padded layout; N: the packed layout, its row padded to a multiple of N tokens (flex
    # attention's 128-token blocks), so few distinct shapes recur.
    pack_multiple: int | None = None


def use_packed_attention(llava: PreTrainedModel, device: torch.device | str) -> None:
    """Attention for packed rows: flex attention on GPU, whose BlockMask skips the blocks between samples.
    Elsewhere sdpa stays (flex has no backward on CPU) and gets the same block-diagonal mask, dense."""
    if torch.device(device).type == "cuda":
        llava.set_attn_implementation({"text_config": "flex_attention"})


def sample_length(ids: Sequence[int], spec: CollateSpec) -> int:
    """Tokens a prepared row takes in a batch: `<image>` expanded, truncated to max_length (no padding)."""
    n = len(ids) - 1 + spec.num_image_tokens if spec.image_id in ids else len(ids)
    return min(n, spec.max_length)


def collate(
    ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    pixels: Sequence[bytes | None],
    spec: CollateSpec,
    *,
    names: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    ensure_image: bool = False,
) -> dict[str, torch.Tensor | None]:
    """input_ids / attention_mask / labels (B, L) and pixel_values (n_images, 3, S, S) or None; packed
    (spec.pack_multiple set): input_ids / position_ids / labels (1, L) instead, no attention_mask.

    `pixels[i]` is the row's raw uint8 (3, S, S) bytes, or None for a text-only row. `names` (row ids) only
    label errors. Normalisation runs on `device`, so only uint8 crosses to a GPU.

    `ensure_image` gives an all-text batch one blank image, its token block appended to row 0 behind the
    real tokens with attention 0 (packed: as a document of its own) and labels IGNORE_INDEX: no real token
    attends to it and it adds nothing
    to the loss, but the vision tower and connector still run. DeepSpeed needs that: ranks must run the same
    modules in the same order (ZeRO-3 gathers parameters collectively) and reduce the same gradients.
    The reference's zero image for text-only samples serves the same purpose.
    """
    if not (len(ids) == len(labels) == len(pixels)):
        raise ValueError(f"collate: {len(ids)} input_ids, {len(labels)} labels, {len(pixels)} pixel rows")
    if not ids:
        raise ValueError("collate: empty batch")
    names = names or [f"row {i}" for i in range(len(ids))]
    seqs, labs, images = [], [], []
    for name, row_ids, row_labels, raw in zip(names, ids, labels, pixels, strict=True):
        row_ids, row_labels = list(row_ids), list(row_labels)
        if len(row_ids) != len(row_labels):
            raise ValueError(f"{name}: {len(row_ids)} input_ids but {len(row_labels)} labels")
        n_image = row_ids.count(spec.image_id)
        if n_image != (raw is not None):
            raise ValueError(f"{name}: {n_image} <image> ids but {'an' if raw is not None else 'no'} image")
        try:
            row_ids, row_labels, _ = expand_image_tokens(
                row_ids, row_labels, image_id=spec.image_id, num_image_tokens=spec.num_image_tokens,
                max_length=spec.max_length)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        seqs.append(row_ids)
        labs.append(row_labels)
        if raw is not None:
            size = 3 * spec.image_size * spec.image_size
            if len(raw) != size:
                raise ValueError(f"{name}: {len(raw)} pixel bytes, expected 3×{spec.image_size}² = {size}")
            images.append(np.frombuffer(raw, np.uint8).reshape(3, spec.image_size, spec.image_size))

    if spec.pack_multiple:
        return _packed(seqs, labs, images, spec, device, ensure_image)
    real = [len(s) for s in seqs]  # attended tokens per row
    if ensure_image and not images:
        seqs[0] = seqs[0] + [spec.image_id] * spec.num_image_tokens
        labs[0] = labs[0] + [IGNORE_INDEX] * spec.num_image_tokens
        images.append(np.zeros((3, spec.image_size, spec.image_size), np.uint8))
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), spec.pad_id, dtype=torch.long)
    label_t = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        label_t[i, : len(s)] = torch.tensor(lab)
        attention[i, : real[i]] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device), "labels": label_t.to(device),
            "pixel_values": _pixels(images, device)}


def _pixels(images: list[np.ndarray], device: torch.device | str) -> torch.Tensor | None:
    return normalize(torch.from_numpy(np.stack(images)).to(device)) if images else None


def _packed(
    seqs: list[list[int]], labs: list[list[int]], images: list[np.ndarray], spec: CollateSpec,
    device: torch.device | str, ensure_image: bool,
) -> dict[str, torch.Tensor | None]:
    """The samples back to back in one row (1, L), L a multiple of spec.pack_multiple; see the module doc.

    Images stay in sample order, which is the order of their token blocks in the row, as Llava splices them.
    The tail padding and an all-text batch's blank image block are documents of their own (positions from 0,
    labels IGNORE_INDEX): nothing real attends to them.
    """
    if ensure_image and not images:
        seqs = [*seqs, [spec.image_id] * spec.num_image_tokens]
        labs = [*labs, [IGNORE_INDEX] * spec.num_image_tokens]
        images = [np.zeros((3, spec.image_size, spec.image_size), np.uint8)]
    used = sum(len(s) for s in seqs)
    tail = -used % spec.pack_multiple
    ids = [t for s in seqs for t in s] + [spec.pad_id] * tail
    labels = [t for lab in labs for t in [IGNORE_INDEX, *lab[1:]]] + [IGNORE_INDEX] * tail
    positions = [p for s in seqs for p in range(len(s))] + list(range(tail))

    def row(values: list[int]) -> torch.Tensor:
        return torch.tensor([values], dtype=torch.long).to(device)

    return {"input_ids": row(ids), "position_ids": row(positions), "labels": row(labels),
            "pixel_values": _pixels(images, device)}
