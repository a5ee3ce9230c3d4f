"""The sweep's grid and what each trial trains with. Pure: no Ray, no torch.

- `grid`: the trial points, connector × resolution, in a fixed order (the order Tune runs them).
- `trial_setup`: the model and stage settings a trial trains with: its point, the proxy budget, the per-trial
  resources (one worker group for both stages: pretrain takes the finetune's workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from components.models.spec import AUTO, ModelSpec
from components.train.spec import TrainStageConfig

from .spec import Resolution, SweepConfig


@dataclass(frozen=True)
class TrialPoint:
    """One cell of the grid. `resolution` None keeps the model's own resolution (not searched)."""

    connector: str
    resolution: Resolution | None

    @property
    def image_size(self) -> int | None:
        return self.resolution.image_size if self.resolution else None

    @property
    def resolution_label(self) -> str:
        return self.resolution.label if self.resolution else "model"

    @property
    def key(self) -> str:
        """A name for files, Ray runs and MLflow (stable across reruns)."""
        return f"{self.connector}-{self.resolution_label}"

    def as_dict(self) -> dict[str, Any]:
        return {"connector": self.connector,
                "resolution": self.resolution.model_dump(mode="json") if self.resolution else None,
                "label": self.resolution_label}


@dataclass(frozen=True)
class TrialSetup:
    """What one trial trains: the model at its point, and both stages cut to the proxy budget."""

    model: ModelSpec
    pretrain: TrainStageConfig
    finetune: TrainStageConfig


def grid(sweep: SweepConfig, model: ModelSpec) -> list[TrialPoint]:
    """Every connector × every resolution; an empty list in the space keeps the model's value."""
    space = sweep.space
    connectors = space.connector or [model.connector]
    resolutions: list[Resolution | None] = list(space.resolution) or [None]
    return [TrialPoint(c, r) for c in connectors for r in resolutions]


def point_for(sweep: SweepConfig, model: ModelSpec, connector: str, image_size: int | None) -> TrialPoint:
    """The grid point Tune's config names (connector, image_size)."""
    for p in grid(sweep, model):
        if p.connector == connector and p.image_size == image_size:
            return p
    raise KeyError(f"no sweep point connector={connector!r} image_size={image_size!r}")


def scaled_epochs(epochs: float, fraction: float) -> float:
    return epochs * fraction


def trial_setup(sweep: SweepConfig, model: ModelSpec, pretrain: TrainStageConfig, finetune: TrainStageConfig,
                point: TrialPoint) -> TrialSetup:
    """The model and stages a trial trains with: its point, the proxy budget, trial resources."""
    r = sweep.resources
    vision: dict[str, Any] = {}
    if point.resolution is not None:
        vision["image_size"] = point.resolution.image_size
        if point.resolution.name_or_path:
            vision["name_or_path"] = point.resolution.name_or_path
    elif model.vision.image_size == AUTO:  # resolution not searched: the model's own
        vision["image_size"] = None
    update: dict[str, Any] = {"vision": model.vision.model_copy(update=vision)} if vision else {}
    update["connector"] = point.connector
    caps = {"pretrain": sweep.proxy.pretrain_steps, "finetune": sweep.proxy.finetune_steps}
    workers = {key: getattr(r, key) if getattr(r, key) is not None else getattr(finetune, key)
               for key in ("num_workers", "use_gpu", "cpus_per_worker")}  # one worker group trains both stages
    stages = {}
    for name, sc in (("pretrain", pretrain), ("finetune", finetune)):
        limits = [x for x in (sc.max_steps, caps[name]) if x is not None]
        stages[name] = sc.model_copy(update={
            "epochs": scaled_epochs(sc.epochs, sweep.proxy.data_fraction),
            "max_steps": min(limits) if limits else None,
            "checkpoint_every": 0,  # checkpoints come at each rung
            **workers})
    return TrialSetup(model=model.model_copy(update=update), **stages)


def rung_steps(total: int, rungs: int) -> list[int]:
    """The finetune step after which each rung evaluates: `rungs` even segments of `total` steps."""
    if rungs < 1:
        raise ValueError(f"rungs must be >= 1, got {rungs}")
    if total < rungs:
        raise ValueError(f"sweep.rungs: {rungs} rungs need at least {rungs} finetune steps, but a trial's proxy "
                         f"finetune has {total}; raise sweep.proxy.data_fraction / finetune_steps or lower rungs")
    return [math.ceil(total * k / rungs) for k in range(1, rungs + 1)]
