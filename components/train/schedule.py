"""Learning-rate schedules as pure functions of the optimizer step (HF `get_*_schedule_with_warmup` semantics).

The multiplier for step `s` applies to the optimizer update that follows `s` completed steps, so step 0 of a
run with warmup trains at lr 0, as HF's schedulers do. Warmup lasts ceil(warmup_ratio × total) steps, as
HF's `TrainingArguments.get_warmup_steps`.
"""

from __future__ import annotations

import math
from typing import Literal

ScheduleKind = Literal["cosine", "linear", "constant"]


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(warmup_ratio * total_steps)


def lr_lambda(step: int, total_steps: int, warmup_ratio: float, kind: ScheduleKind) -> float:
    """Multiplier of the base lr after `step` optimizer steps: linear warmup, then cosine/linear decay to 0
    at `total_steps`, or constant."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warm = warmup_steps(total_steps, warmup_ratio)
    if step < warm:
        return step / max(1, warm)
    if kind == "constant":
        return 1.0
    progress = (step - warm) / max(1, total_steps - warm)
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    raise ValueError(f"schedule kind must be cosine, linear or constant, got {kind!r}")
