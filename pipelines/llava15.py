"""The LLaVA-1.5 recipe as a DAG, top to bottom like the paper:

  synth (embedded default only) → prepare → [sweep] → pretrain (connector, ZeRO-2) → finetune (connector + LLM,
  ZeRO-3) → evaluate.<benchmark> (one job each, fan-out) → export (HF LlavaForConditionalGeneration + registry)

`sweep` (when sweep.enabled) runs Ray Tune over connector × resolution on the prepared data; with
`model.connector: auto` / `model.vision.image_size: auto`, the stages after it run with its best values
(resolved from best.json in a pre-pass before they are planned: pipelines/engine/plan.py).

Each stage is a component's `run_<stage>` and one `<stage>_args(cfg, up)` here: the config sections and plain
values it is called with, `up` being its upstream stages' output folders. The executor fingerprints exactly
those arguments, by the types `run_<stage>` declares (scheduling settings never; data files and checkpoints by
content), plus the code the stage runs. Stage modules import their heavy libraries when they run, so `plan`
stays fast.
"""

from __future__ import annotations

import functools
from typing import Any

from components.core import storage
from components.core.config import ConfigError, validate
from components.core.fingerprint import OutputPath
from components.evaluate.spec import Replicas
from components.evaluate.stage import run_evaluate
from components.export.spec import ExportResources
from components.export.stage import run_export
from components.models.spec import AUTO, ModelConfig, VisionConfig
from components.prepare.spec import DatasetSpec, DataSource
from components.prepare.stage import run_prepare
from components.sweep.spec import Resolution
from components.sweep.stage import run_sweep
from components.synth.stage import run_synth
from components.train.spec import deepspeed_config_path
from components.train.stage import run_finetune, run_pretrain

from .config import PipelineConfig, check
from .engine.executor import Outputs, Stage
from .engine.plan import Pipeline

# ---------------------------------------------------------------- where the synthetic world's paths point


def fill(path: str, up: Outputs, key: str) -> str:
    """`path`, or, when it starts with `{synth}`, the same place in the synth stage's output (an OutputPath:
    fingerprinted by the synth stage's fingerprint, not by reading it)."""
    if not path.startswith("{synth}"):
        if "{synth}" in path:
            raise ConfigError(f"{key}: {{synth}} may only start a path, got {path!r}")
        return path
    if "synth" not in up:
        raise ConfigError(f"{key} uses {{synth}} but the config has no data.synth section")
    rest = path.removeprefix("{synth}").strip("/")
    return up["synth"].join(rest) if rest else up["synth"]


def _sources(sources: list[DataSource], up: Outputs, key: str) -> list[DataSource]:
    return [s.model_copy(update={
        "annotations": fill(s.annotations, up, f"{key}.{i}.annotations"),
        "image_root": None if s.image_root is None else fill(s.image_root, up, f"{key}.{i}.image_root")})
        for i, s in enumerate(sources)]


def benchmark_folder(root: str, bench: str, up: Outputs, key: str) -> str:
    """A benchmark's folder under an eval root (LLaVA's eval.zip layout)."""
    from components.evaluate.benchmarks import get_benchmark

    base, folder = fill(root, up, key), get_benchmark(bench).folder
    return base.join(folder) if isinstance(base, OutputPath) else storage.join(base, folder)


def prepared_vision(cfg: PipelineConfig) -> VisionConfig:
    """The tower the prepared rows are cut for: shards keep one compact `<image>` (expanded per resolution
    when batches are made), but rows are cut so the image block fits max_length. With
    model.vision.image_size `auto`: the sweep's largest resolution, so every candidate fits."""
    vision = cfg.model.vision
    if vision.image_size != AUTO:
        return vision
    largest = max(cfg.sweep.space.resolution, key=lambda r: r.image_size)
    update: dict[str, Any] = {"image_size": largest.image_size}
    if largest.name_or_path:
        update["name_or_path"] = largest.name_or_path
    return vision.model_copy(update=update)


def eval_folder(cfg: PipelineConfig, bench: str, up: Outputs) -> str:
    return benchmark_folder(cfg.evaluate.root, bench, up, "evaluate.root")


# ---------------------------------------------------------------- each stage's arguments


def synth_args(cfg: PipelineConfig, up: Outputs) -> dict[str, Any]:
    assert cfg.data.synth is not None
    return {"size": cfg.data.synth.size, "seed": cfg.data.synth.seed}


def prepare_args(cfg: PipelineConfig, up: Outputs) -> dict[str, Any]:
    datasets = {name: DatasetSpec(sources=_sources(sources, up, f"data.{name}"), template=stage.template,
                                  max_length=stage.max_length)
                for name, sources, stage in (("pretrain", cfg.data.pretrain, cfg.pretrain),
                                             ("finetune", cfg.data.finetune, cfg.finetune))}
    return {"datasets": datasets, "prepare": cfg.prepare, "tokenizer": cfg.model.tokenizer,
            "vision": prepared_vision(cfg)}


def sweep_args(cfg: PipelineConfig, up: Outputs) -> dict[str, Any]:
    """The searched dimensions are the sweep's to choose: the model goes in with them `auto`, so switching
    model.connector between `auto` and a fixed value does not rerun the sweep."""
    sweep, model = cfg.sweep, cfg.model.spec()
    if sweep.space.connector:
        model = model.model_copy(update={"connector": AUTO})
    if sweep.space.resolution:
        model = model.model_copy(update={"vision": model.vision.model_copy(update={"image_size": AUTO})})
    dev_root = sweep.dev.root if sweep.dev.root is not None else cfg.evaluate.root
    return {"sweep": sweep, "model": model, "pretrain": cfg.pretrain, "finetune": cfg.finetune, "seed": cfg.seed,
            "prepared": up["prepare"], "template": cfg.evaluate.template,
            "dev_folder": benchmark_folder(dev_root, sweep.dev.benchmark, up, "sweep.dev.root")}


def pretrain_args(cfg: PipelineConfig, up: Outputs) -> dict[str, Any]:
    return {"pretrain": cfg.pretrain, "model": cfg.model.spec(), "seed": cfg.seed, "prepared": up["prepare"]}


def finetune_args(cfg: PipelineConfig, up: Outputs) -> dict[str, Any]:
    return {"finetune": cfg.finetune, "model": cfg.model.spec(), "seed": cfg.seed, "prepared": up["prepare"],
            "connector": up["pretrain"].join("connector.safetensors")}


def evaluate_args(cfg: PipelineConfig, up: Outputs, *, bench: str) -> dict[str, Any]:
    from components.evaluate.benchmarks import get_benchmark
    from components.evaluate.judge import judge_from_env

    ev = cfg.evaluate
    return {"benchmark": bench, "folder": eval_folder(cfg, bench, up),
            "model": ev.model or up["finetune"].join("model"), "template": ev.template,
            "batch_size": ev.batch_size, "use_gpu": ev.use_gpu, "limit": ev.limit, "parity_sample": ev.parity_sample,
            "blank_images": bench in ev.blank_image_check,
            "judge": judge_from_env() if get_benchmark(bench).needs_judge else None,
            "replicas": Replicas(num_actors=ev.num_actors, cpus_per_actor=ev.cpus_per_actor)}


def export_args(cfg: PipelineConfig, up: Outputs) -> dict[str, Any]:
    ex = cfg.export
    evaluated = [b for b in cfg.evaluate.benchmarks if f"evaluate.{b}" in up]
    return {"model": up["finetune"].join("model"),
            "evaluations": {b: up[f"evaluate.{b}"] for b in evaluated},
            "benchmark_folders": {b: eval_folder(cfg, b, up) for b in evaluated},
            "template": cfg.evaluate.template, "parity_sample": ex.parity_sample,
            "allow_custom_connector": ex.allow_custom_connector,
            "registered_name": ex.registered_model_name or cfg.name, "pipeline": cfg.name,
            "resources": ExportResources(use_gpu=ex.use_gpu, cpus=ex.cpus)}


# ---------------------------------------------------------------- the DAG


def config_problems(cfg: PipelineConfig) -> list[str]:
    """`key.path: problem` for what the schema alone cannot check but a stage would fail on hours later:
    benchmark names against the registry, blank-image checks of benchmarks that do not run, DeepSpeed files."""
    from components.evaluate.benchmarks import UnknownBenchmark, get_benchmark

    problems = []
    names = [("evaluate.benchmarks", b) for b in cfg.evaluate.benchmarks]
    if cfg.sweep.enabled:
        names.append(("sweep.dev.benchmark", cfg.sweep.dev.benchmark))
    for key, name in names:
        try:
            get_benchmark(name)
        except UnknownBenchmark as e:
            problems.append(f"{key}: {e}")
    repeated = sorted({b for b in cfg.evaluate.benchmarks if cfg.evaluate.benchmarks.count(b) > 1})
    if repeated:
        problems.append(f"evaluate.benchmarks: listed more than once: {', '.join(repeated)}")
    extra = [b for b in cfg.evaluate.blank_image_check if b not in cfg.evaluate.benchmarks]
    if extra:
        problems.append(f"evaluate.blank_image_check: {', '.join(extra)} not in evaluate.benchmarks")
    if cfg.evaluate.model is not None and cfg.sweep.enabled:
        problems.append("sweep.enabled: evaluate.model is set, so nothing is trained for the sweep to choose for; "
                        "set sweep.enabled=false")
    for key, stage in (("pretrain", cfg.pretrain), ("finetune", cfg.finetune)):
        try:
            if not deepspeed_config_path(stage).is_file():
                problems.append(f"{key}.deepspeed: {stage.deepspeed} does not exist")
        except ValueError as e:
            problems.append(f"{key}.deepspeed: {e}")
    return problems


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages this config runs, in topological order. A config a stage would fail on (`config_problems`)
    is a ConfigError here, at plan time."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))

    def stage(name: str, deps: tuple[str, ...], run: Any, args: Any, **kw: Any) -> Stage:
        return Stage(name, deps, run, functools.partial(args, cfg), **kw)

    synth = ("synth",) if cfg.data.synth is not None else ()
    stages = [stage("synth", (), run_synth, synth_args)] if synth else []
    trained = cfg.evaluate.model is None  # else the evaluate jobs read a given model: nothing to train
    if trained:
        stages.append(stage("prepare", synth, run_prepare, prepare_args))
        if cfg.sweep.enabled:
            stages.append(stage("sweep", ("prepare", *synth), run_sweep, sweep_args))
        stages.append(stage("pretrain", ("prepare",), run_pretrain, pretrain_args))
        stages.append(stage("finetune", ("prepare", "pretrain"), run_finetune, finetune_args))
    evaluations = []
    for bench in cfg.evaluate.benchmarks:
        evaluations.append(f"evaluate.{bench}")
        stages.append(stage(f"evaluate.{bench}", ("finetune", *synth) if trained else synth, run_evaluate,
                            functools.partial(evaluate_args, bench=bench), group="evaluate",
                            concurrency=cfg.evaluate.concurrency))
    if cfg.export.enabled and trained:
        stages.append(stage("export", ("finetune", *evaluations, *synth), run_export, export_args))
    return stages


# ---------------------------------------------------------------- `auto`: the sweep's choice


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
    raw = cfg.model.model_dump(mode="json")
    choices: dict[str, Any] = {}
    if "model.connector" in keys:
        connector = best.get("connector")
        if not connector:
            raise ValueError(f"{source}: best.json names no connector for model.connector: auto")
        raw["connector"] = choices["model.connector"] = connector
    if "model.vision.image_size" in keys:
        res = best.get("resolution")
        if not res:
            raise ValueError(f"{source}: best.json names no resolution for model.vision.image_size: auto")
        resolution = Resolution.model_validate(res)
        raw["vision"]["image_size"] = choices["model.vision.image_size"] = resolution.image_size
        if resolution.name_or_path:
            raw["vision"]["name_or_path"] = choices["model.vision.name_or_path"] = resolution.name_or_path
    model = validate(ModelConfig, raw, f"{source} (auto resolved)")
    return check(cfg.model_copy(update={"model": model}), f"{source} (auto resolved)"), choices


def resolve_from_sweep(cfg: PipelineConfig, out: str) -> tuple[PipelineConfig, dict[str, Any]]:
    """`auto` values filled from a sweep output's best.json (the pre-pass in pipelines/engine/plan.py)."""
    path = storage.join(out, "best.json")
    return resolve_auto(cfg, storage.read_json(path)["best"], source=path)


# The pipeline as the engine runs it: `auto` keys are filled from the sweep's best.json (a pre-pass).
LLAVA15 = Pipeline(build_stages, auto_keys=auto_keys, auto_source="sweep", resolve=resolve_from_sweep)
