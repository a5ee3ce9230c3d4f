"""Samples whose image vanished or broke after `prepare`: each costs itself, and is reported with its reason.

The pixel map (pixels.py) gives such a row zero pixels and an `image_error`. Here the training loop masks the
row's labels (the sample still occupies its slot, so every rank keeps the same shapes, collectives and data
order, and a resume stays exact) and remembers which sample it was; the lists of all ranks are gathered to
every rank at each checkpoint, so the summary names every lost sample, resumes included.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from components.core.tokenize import IGNORE_INDEX


def mask_lost_samples(labels: list[list[int]], errors: list[str], names: list[str], images: list[str], step: int,
                      lost: list[dict[str, Any]]) -> list[list[int]]:
    """`labels` with every row whose image failed to load fully masked; one entry per such row appended to
    `lost` (sample id, image, step, reason, message)."""
    out = list(labels)
    for i, error in enumerate(errors):
        if error:
            reason, _, message = error.partition("\t")
            out[i] = [IGNORE_INDEX] * len(labels[i])
            lost.append({"id": names[i], "image": images[i], "step": step, "reason": reason, "message": message})
    return out


def gather_lost_samples(lost: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collective: every rank's `lost` entries, rank order, on every rank (the lists are short: lost samples)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(lost)
    parts: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, lost)
    return [entry for part in parts for entry in part or []]
