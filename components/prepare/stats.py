"""`stats.json` of a prepared dataset: totals, kept, rejected by reason, truncation, per source, lengths."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

LENGTH_BINS = (0, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192)


def length_histogram(lengths: list[int]) -> dict[str, int]:
    """Counts per token-length bin, labelled `lo-hi` (hi exclusive), the last bin open-ended."""
    edges = list(LENGTH_BINS) + [max([LENGTH_BINS[-1] + 1, *lengths]) + 1]
    counts, _ = np.histogram(np.asarray(lengths, dtype=np.int64), bins=edges)
    labels = [f"{lo}-{hi}" for lo, hi in zip(LENGTH_BINS, LENGTH_BINS[1:], strict=False)]
    labels.append(f"{LENGTH_BINS[-1]}+")
    return {label: int(c) for label, c in zip(labels, counts, strict=True) if c}


def compute_stats(kept: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """kept rows need source, length, truncated, image; rejected rows need source, reason."""
    by_source: dict[str, Counter] = {}
    for row in kept:
        by_source.setdefault(row["source"], Counter())["kept"] += 1
    for row in rejected:
        by_source.setdefault(row["source"], Counter())["rejected"] += 1
    lengths = [int(r["length"]) for r in kept]
    stats = {
        "total": len(kept) + len(rejected),
        "kept": len(kept),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        "truncated": sum(1 for r in kept if r["truncated"]),
        "with_image": sum(1 for r in kept if r["image"]),
        "text_only": sum(1 for r in kept if not r["image"]),
        "per_source": {
            name: {"total": c["kept"] + c["rejected"], "kept": c["kept"], "rejected": c["rejected"]}
            for name, c in sorted(by_source.items())
        },
        "length": {
            "min": min(lengths, default=0),
            "max": max(lengths, default=0),
            "mean": float(np.mean(lengths)) if lengths else 0.0,
            "histogram": length_histogram(lengths),
        },
    }
    assert stats["kept"] + stats["rejected"] == stats["total"]
    return stats
