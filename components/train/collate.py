"""Prepared rows → one model batch (reference collator, §3.7), in the form transformers' Llava expects.

Rows carry the compact token form (one `<image>` id) and uint8 pixels; here the image id is expanded to the
tower's token count, sequences are truncated to max_length and right-padded (pad id / IGNORE_INDEX), and
pixel_values hold only the rows that have an image: Llava checks that the number of image-token blocks equals
the number of images, so text-only rows get no dummy image (the reference's zero image exists to keep its
projector in the graph, which Llava's splicing does not need).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from components.core.images import normalize
from components.core.tokenize import IGNORE_INDEX, expand_image_tokens


@dataclass(frozen=True)
class CollateSpec:
    image_id: int
    num_image_tokens: int
    max_length: int
    pad_id: int
    image_size: int


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
    """input_ids / attention_mask / labels (B, L) and pixel_values (n_images, 3, S, S) or None.

    `pixels[i]` is the row's raw uint8 (3, S, S) bytes, or None for a text-only row. `names` (row ids) only
    label errors. Normalisation runs on `device`, so only uint8 crosses to a GPU.

    `ensure_image` gives an all-text batch one blank image, its token block appended to row 0 behind the
    real tokens with attention 0 and labels IGNORE_INDEX: no real token attends to it and it adds nothing
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
    pixel_values = None
    if images:
        pixel_values = normalize(torch.from_numpy(np.stack(images)).to(device))
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device), "labels": label_t.to(device),
            "pixel_values": pixel_values}
