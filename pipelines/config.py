"""The LLaVA-1.5 pipeline's config: one YAML in `configs/`, its sections typed by the stages that use them.

`load_config` reads a config file (or a packaged one by name), applies `--set` overrides, validates it and
makes its local paths absolute (components/core/config.py). What only the whole config can tell (an `auto`
without a sweep, sweep entries that do not fit the model) is checked here too.
"""

from __future__ import annotations

from pathlib import Path

from components.core.config import (
    ConfigError,
    Strict,
    apply_overrides,
    load_raw,
    resolve_path,
    resolve_paths,
    validate,
)
from components.core.fields import StoragePath, TrackingURI
from components.evaluate.spec import EvaluateConfig
from components.export.spec import ExportConfig
from components.models.spec import AUTO, ModelConfig
from components.prepare.spec import DataSource, PrepareConfig
from components.sweep.spec import SweepConfig
from components.synth.spec import SynthConfig
from components.train.spec import TrainStageConfig


class DataConfig(Strict):
    synth: SynthConfig | None = None  # generate the synthetic world; `{synth}` in paths points at it
    pretrain: list[DataSource] = []
    finetune: list[DataSource] = []


class TrackingConfig(Strict):
    tracking_uri: TrackingURI | None = None  # default: MLFLOW_TRACKING_URI, else sqlite under the storage root
    experiment: str = "llava-pipeline"


class PipelineConfig(Strict):
    name: str
    storage: StoragePath = "./runs/{name}"  # storage root: local path or s3://bucket/prefix
    seed: int = 0  # initialises the model's random parts (towers, connector, new embedding rows)
    model: ModelConfig
    data: DataConfig
    prepare: PrepareConfig = PrepareConfig()
    pretrain: TrainStageConfig
    finetune: TrainStageConfig
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig = SweepConfig()


def sweep_problems(cfg: PipelineConfig) -> list[str]:
    """`key.path: problem` for what only the whole config can tell: `auto` without a sweep to fill it,
    sweep entries that do not fit the model."""
    sweep, vision = cfg.sweep, cfg.model.vision
    problems = []
    autos = {"model.connector": (cfg.model.connector == AUTO, sweep.space.connector, "connector"),
             "model.vision.image_size": (vision.image_size == AUTO, sweep.space.resolution, "resolution")}
    for path, (is_auto, candidates, dim) in autos.items():
        if not is_auto:
            continue
        if not sweep.enabled:
            problems.append(f"{path}: 'auto' takes the sweep's best value, but sweep.enabled is false")
        elif not candidates:
            problems.append(f"{path}: 'auto' needs candidates in sweep.space.{dim}, which is empty")
    if not sweep.enabled:
        return problems
    for i, res in enumerate(sweep.space.resolution):
        if res.name_or_path and vision.random_init is not None:
            problems.append(f"sweep.space.resolution.{i}.name_or_path: the model's vision tower is random_init; "
                            "a sweep entry cannot switch it to a checkpoint")
        if vision.random_init is not None and res.image_size % vision.random_init.patch_size:
            problems.append(f"sweep.space.resolution.{i}.image_size: {res.image_size} is not a multiple of the "
                            f"patch size {vision.random_init.patch_size}")
    workers = sweep.resources.num_workers
    for name, sc in (("pretrain", cfg.pretrain), ("finetune", cfg.finetune)):
        n = workers or sc.num_workers
        if sc.global_batch % (sc.per_device_batch * n):
            problems.append(f"sweep.resources.num_workers: {n} workers do not divide {name}.global_batch "
                            f"{sc.global_batch} into micro-batches of {name}.per_device_batch {sc.per_device_batch}")
    if sweep.proxy.finetune_steps is not None and sweep.proxy.finetune_steps < sweep.rungs:
        problems.append(f"sweep.rungs: {sweep.rungs} rungs need at least as many finetune steps, but "
                        f"sweep.proxy.finetune_steps is {sweep.proxy.finetune_steps}")
    return problems


def check(cfg: PipelineConfig, source: str) -> PipelineConfig:
    problems = sweep_problems(cfg)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return cfg


def load_config(path: str | Path = "tiny", overrides: list[str] | None = None,
                cwd: Path | None = None) -> PipelineConfig:
    """Read, override and validate a pipeline config; local paths come back absolute, resolved against `cwd`
    (default: the working directory), see `components.core.paths`."""
    p = resolve_path(path)
    raw = apply_overrides(load_raw(p), overrides or [])
    cfg = check(validate(PipelineConfig, raw, str(p), overrides or []), str(p))
    return resolve_paths(cfg, str(p), cwd)
