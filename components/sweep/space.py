"""The sweep's grid and how its values enter a pipeline config. Pure: no Ray, no torch.

- `grid`: the trial points, connector × resolution, in a fixed order (the order Tune runs them).
- `trial_config`: the config a trial trains with: its point, the proxy budget, the per-trial resources (one
  worker group for both stages: pretrain takes the finetune's workers).
- `resolve_auto`: `auto` in model.connector / model.vision.image_size replaced by the sweep's best values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from components.core.config import AUTO, PipelineConfig, Resolution, validate


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


def grid(cfg: PipelineConfig) -> list[TrialPoint]:
    """Every connector × every resolution; an empty list in the space keeps the model's value."""
    space = cfg.sweep.space
    connectors = space.connector or [cfg.model.connector]
    resolutions: list[Resolution | None] = list(space.resolution) or [None]
    return [TrialPoint(c, r) for c in connectors for r in resolutions]


def point_for(cfg: PipelineConfig, connector: str, image_size: int | None) -> TrialPoint:
    """The grid point Tune's config names (connector, image_size)."""
    for p in grid(cfg):
        if p.connector == connector and p.image_size == image_size:
            return p
    raise KeyError(f"no sweep point connector={connector!r} image_size={image_size!r}")


def _apply_model(model: dict[str, Any], connector: str | None, resolution: Resolution | None) -> None:
    if connector is not None:
        model["connector"] = connector
    if resolution is not None:
        model["vision"]["image_size"] = resolution.image_size
        if resolution.name_or_path:
            model["vision"]["name_or_path"] = resolution.name_or_path


def scaled_epochs(epochs: float, fraction: float) -> float:
    return epochs * fraction


def trial_config(cfg: PipelineConfig, point: TrialPoint) -> PipelineConfig:
    """The config a trial trains with: its point, the proxy budget, trial resources. Built by copying
    sections, never by dumping the whole config: the sweep stage gets a view of the keys it declares
    (components/core/config_view.py) and so do its trials."""
    sweep, r = cfg.sweep, cfg.sweep.resources
    vision: dict[str, Any] = {}
    if point.resolution is not None:
        vision["image_size"] = point.resolution.image_size
        if point.resolution.name_or_path:
            vision["name_or_path"] = point.resolution.name_or_path
    elif cfg.model.vision.image_size == AUTO:  # resolution not searched: the model's own
        vision["image_size"] = None
    model: dict[str, Any] = {"vision": cfg.model.vision.model_copy(update=vision)} if vision else {}
    if point.connector is not None:
        model["connector"] = point.connector
    caps = {"pretrain": sweep.proxy.pretrain_steps, "finetune": sweep.proxy.finetune_steps}
    workers = {key: getattr(r, key) if getattr(r, key) is not None else getattr(cfg.finetune, key)
               for key in ("num_workers", "use_gpu", "cpus_per_worker")}  # one worker group trains both stages
    stages = {}
    for stage in ("pretrain", "finetune"):
        sc = getattr(cfg, stage)
        limits = [x for x in (sc.max_steps, caps[stage]) if x is not None]
        stages[stage] = sc.model_copy(update={
            "epochs": scaled_epochs(sc.epochs, sweep.proxy.data_fraction),
            "max_steps": min(limits) if limits else None,
            "checkpoint_every": 0,  # checkpoints come at each rung
            **workers})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=model), **stages,
                                  "sweep": sweep.model_copy(update={"enabled": False})})


def rung_steps(total: int, rungs: int) -> list[int]:
    """The finetune step after which each rung evaluates: `rungs` even segments of `total` steps."""
    if rungs < 1:
        raise ValueError(f"rungs must be >= 1, got {rungs}")
    if total < rungs:
        raise ValueError(f"sweep.rungs: {rungs} rungs need at least {rungs} finetune steps, but a trial's proxy "
                         f"finetune has {total}; raise sweep.proxy.data_fraction / finetune_steps or lower rungs")
    return [math.ceil(total * k / rungs) for k in range(1, rungs + 1)]


def auto_keys(cfg: PipelineConfig) -> list[str]:
    """The config keys set to `auto`."""
    keys = []
    if cfg.model.connector == AUTO:
        keys.append("model.connector")
    if cfg.model.vision.image_size == AUTO:
        keys.append("model.vision.image_size")
    return keys


def resolve_auto(cfg: PipelineConfig, best: dict[str, Any], source: str = "sweep") -> tuple[PipelineConfig,
                                                                                             dict[str, Any]]:
    """`cfg` with its `auto` values taken from a sweep's best trial (best.json's `best`), and the choices
    made ({key: value}); a config without `auto` comes back unchanged with no choices."""
    keys = auto_keys(cfg)
    if not keys:
        return cfg, {}
    raw = cfg.model_dump(mode="json")
    choices: dict[str, Any] = {}
    if "model.connector" in keys:
        connector = best.get("connector")
        if not connector:
            raise ValueError(f"{source}: best.json names no connector for model.connector: auto")
        _apply_model(raw["model"], connector, None)
        choices["model.connector"] = connector
    if "model.vision.image_size" in keys:
        res = best.get("resolution")
        if not res:
            raise ValueError(f"{source}: best.json names no resolution for model.vision.image_size: auto")
        resolution = Resolution.model_validate(res)
        _apply_model(raw["model"], None, resolution)
        choices["model.vision.image_size"] = resolution.image_size
        if resolution.name_or_path:
            choices["model.vision.name_or_path"] = resolution.name_or_path
    return validate(raw, f"{source} (auto resolved)"), choices
