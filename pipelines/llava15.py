"""The LLaVA-1.5 recipe as a DAG, top to bottom like the paper:

  synth (embedded default only) → prepare → [sweep] → pretrain (connector, ZeRO-2) → finetune (connector + LLM,
  ZeRO-3) → evaluate.<benchmark> (one job each, fan-out) → export (HF LlavaForConditionalGeneration + registry)

`sweep` (when sweep.enabled) runs Ray Tune over connector × resolution on the prepared data; with
`model.connector: auto` / `model.vision.image_size: auto`, the stages after it run with its best values
(resolved from best.json in a pre-pass before they are planned: pipelines/engine/plan.py).

Each stage declares the config keys, data files and environment settings it reads and its upstream stages;
the executor fingerprints exactly those plus the code the stage body runs (derived from its imports), and
hands the body a view of the config with only those keys (reading another key is an error). Stage bodies
import their heavy libraries lazily, so `plan` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.config import AUTO, ConfigError, PipelineConfig, deepspeed_config_path, fill_synth
from components.core.fingerprint import flatten
from components.core.redact import redact

from .engine.executor import NOT_CONFIGURED, Stage, StageContext
from .engine.plan import Pipeline

# ---------------------------------------------------------------- stage bodies


def synth_body(ctx: StageContext) -> dict[str, Any]:
    from components.synth.stage import run_synth

    synth = ctx.cfg.data.synth
    return {"files": run_synth(ctx.out, seed=synth.seed, size=synth.size)}


def prepare_body(ctx: StageContext) -> dict[str, Any]:
    from components.prepare.stage import run_prepare

    result = run_prepare(ctx.cfg, ctx.out, ctx.inputs.get("synth"))
    metrics = {}
    for name in ("pretrain", "finetune"):
        for key in ("total", "kept", "rejected", "truncated"):
            metrics[f"{name}_{key}"] = result[name][key]
    return metrics


def sweep_body(ctx: StageContext) -> dict[str, Any]:
    from components.sweep.stage import run_sweep

    return run_sweep(ctx.cfg, prepared=ctx.inputs["prepare"], eval_root=dev_root(ctx.cfg, ctx.inputs),
                     out=ctx.out, storage_root=ctx.storage, fingerprint=ctx.fingerprint, mlflow=ctx.mlflow)


def resolve_from_sweep(cfg: PipelineConfig, out: str) -> tuple[PipelineConfig, dict[str, Any]]:
    """`auto` values filled from a sweep output's best.json (the pre-pass in pipelines/engine/plan.py)."""
    from components.sweep.space import resolve_auto

    path = storage.join(out, "best.json")
    return resolve_auto(cfg, storage.read_json(path)["best"], source=path)


def _train(ctx: StageContext, stage: str) -> dict[str, Any]:
    from components.train.stage import prune_checkpoints, run_train

    init = storage.join(ctx.inputs["pretrain"], "connector.safetensors") if stage == "finetune" else None
    # One Ray Train run per attempt: a resumed attempt continues its run, a forced one starts a fresh run.
    run_name, train_root = f"{stage}-{ctx.fingerprint}-{ctx.attempt}", storage.join(ctx.storage, "ray_train")
    summary = run_train(ctx.cfg, stage, prepared=ctx.inputs["prepare"], out=ctx.out, run_name=run_name,
                           storage_path=train_root, init_connector=init, mlflow=ctx.mlflow)
    prune_checkpoints(train_root, run_name, keep=getattr(ctx.cfg, stage).keep_checkpoints)
    keys = ("steps", "samples", "tokens", "initial_loss", "final_loss", "wall_s", "resumed_from_step",
            "world_size", "threads_per_worker")
    return {k: summary[k] for k in keys if k in summary and summary[k] is not None}


def pretrain_body(ctx: StageContext) -> dict[str, Any]:
    return _train(ctx, "pretrain")


def finetune_body(ctx: StageContext) -> dict[str, Any]:
    return _train(ctx, "finetune")


def eval_root(cfg: PipelineConfig, inputs: dict[str, str]) -> str:
    return fill_synth(cfg.evaluate.root, inputs.get("synth"), "evaluate.root")


def dev_root(cfg: PipelineConfig, inputs: dict[str, str]) -> str:
    """Where the sweep's dev benchmark is read: sweep.dev.root, else evaluate.root."""
    if cfg.sweep.dev.root is None:
        return eval_root(cfg, inputs)
    return fill_synth(cfg.sweep.dev.root, inputs.get("synth"), "sweep.dev.root")


def evaluate_body(ctx: StageContext, *, bench: str) -> dict[str, Any]:
    from components.evaluate.pool import PoolSpec, warm_pool
    from components.evaluate.stage import run_evaluate

    ev = ctx.cfg.evaluate
    model_dir = ev.model or storage.join(ctx.inputs["finetune"], "model")
    # Every benchmark job of the run shares one warm pool per model: replicas start and load the model once.
    pool = warm_pool(PoolSpec(model_dir, ev.template, ev.batch_size, ev.num_actors, ev.use_gpu, ev.cpus_per_actor))
    # The eval root goes as the storage names it: question files are fetched on this node, images by each
    # generation actor on its own. Outputs are written locally, then uploaded (s3://) when the block succeeds.
    with storage.staged_dir(ctx.out) as out:
        common = dict(model_dir=model_dir, eval_root=eval_root(ctx.cfg, ctx.inputs),
                      template=ev.template, batch_size=ev.batch_size, num_actors=ev.num_actors, use_gpu=ev.use_gpu,
                      limit=ev.limit, pool=pool)
        (result,) = run_evaluate([bench], out_dir=out, parity_sample=ev.parity_sample, mlflow=ctx.mlflow, **common)
        metrics: dict[str, Any] = {"status": result["status"]}
        if result["status"] == "skipped":
            metrics["reason"] = result.get("reason", "")
        if result.get("value") is not None:
            metrics[result["metric"]] = result["value"]
        if result.get("parity") is not None:
            metrics["parity_mismatches"] = len(result["parity"])
        if bench in ev.blank_image_check:
            (blank,) = run_evaluate([bench], out_dir=storage.join(out, "blank_images"), blank_images=True, **common)
            if blank.get("value") is not None:
                metrics[f"blank_images_{blank['metric']}"] = blank["value"]
    return metrics


def export_body(ctx: StageContext) -> dict[str, Any]:
    from components.export.stage import run_export

    evals = {name: path for name, path in ctx.inputs.items() if name.startswith("evaluate.")}
    return run_export(ctx.cfg, model_dir=storage.join(ctx.inputs["finetune"], "model"), out=ctx.out,
                            eval_outputs=evals, pipeline_fingerprint=ctx.fingerprint, mlflow=ctx.mlflow,
                            eval_root=eval_root(ctx.cfg, ctx.inputs))


# ---------------------------------------------------------------- the DAG

# Config keys no stage reads but the pipeline itself: where things live, what is tracked, and the DAG's shape
# (which stages exist). Every other key must be read by a stage (tests/pipelines/test_stage_contract.py).
PIPELINE_KEYS = ("name", "storage", "tracking", "data.synth", "evaluate.benchmarks", "evaluate.concurrency",
                 "evaluate.model", "sweep.enabled", "export.enabled")


def _unsynthesized(path: str) -> bool:
    """A path outside the synthetic world's output: the synth stage's fingerprint does not cover it."""
    return "{synth}" not in path


def _prepare_files(c: PipelineConfig) -> dict[str, str]:
    return {f"data.{stage}.{i}.annotations": src.annotations
            for stage in ("pretrain", "finetune") for i, src in enumerate(getattr(c.data, stage))
            if _unsynthesized(src.annotations)}


def _deepspeed_files(*stages: str) -> Callable[[PipelineConfig], dict[str, str]]:
    def files(c: PipelineConfig) -> dict[str, str]:
        return {f"{s}.deepspeed": str(deepspeed_config_path(getattr(c, s))) for s in stages}
    return files


def _checkpoint_files(*keys: str, resolutions: bool = False) -> Callable[[PipelineConfig], dict[str, str]]:
    """Model checkpoints given as a path (local, made absolute at config load, or s3://): fingerprinted by
    content, so weights replaced in place rerun their readers. A Hub name is fingerprinted by its name (the
    config key itself). `keys`: config keys holding a checkpoint; `resolutions`: the sweep's towers too."""
    def files(c: PipelineConfig) -> dict[str, str]:
        named = {key: functools.reduce(getattr, key.split("."), c) for key in keys}
        if resolutions:
            named.update({f"sweep.space.resolution.{i}.name_or_path": r.name_or_path
                          for i, r in enumerate(c.sweep.space.resolution)})
        return {key: path for key, path in named.items()
                if path and (storage.is_remote(path) or Path(path).is_absolute())}
    return files


MODEL_CHECKPOINTS = ("model.vision.name_or_path", "model.llm.name_or_path", "model.tokenizer.name_or_path")


def _benchmark_files(bench: str, root: str) -> dict[str, str]:
    """A benchmark's folder under an eval root the user provides (a `{synth}` root is the synth stage's)."""
    from components.evaluate.benchmarks import get_benchmark

    if not _unsynthesized(root):
        return {}
    return {f"benchmark.{bench}": storage.join(root, get_benchmark(bench).folder)}


def _judge_env(bench: str) -> Callable[[], dict[str, Any]]:
    """A judged benchmark's result depends on the judge (model and endpoint; never its key): without one it
    is `skipped`, a fingerprint a later run with a judge does not share."""
    def env() -> dict[str, Any]:
        from components.evaluate.benchmarks import get_benchmark
        from components.evaluate.judge import JudgeNotConfigured, judge_from_env

        if not get_benchmark(bench).needs_judge:
            return {}
        judge = judge_from_env()
        if isinstance(judge, JudgeNotConfigured):
            return {"judge": NOT_CONFIGURED}
        return {"judge.base_url": redact(judge.base_url), "judge.model": judge.model}  # ?key= is a key too
    return env


def _sweep_reads(c: PipelineConfig) -> tuple[str, ...]:
    """What a sweep's result depends on: the searched dimensions' own settings are left out, so switching
    model.connector between `auto` and a fixed value does not rerun the sweep (nor do the training stages'
    checkpoint retention settings, which the sweep's proxy runs do not use)."""
    skip = {"pretrain.keep_checkpoints", "finetune.keep_checkpoints"}
    if c.sweep.space.connector:
        skip.add("model.connector")
    if c.sweep.space.resolution:
        skip.add("model.vision.image_size")
    dump = c.model_dump(mode="json")
    leaves = [f"{section}.{k}" for section in ("model", "pretrain", "finetune") for k in flatten(dump[section])]
    return ("seed", "sweep", *(k for k in leaves if k not in skip), "evaluate.root", "evaluate.template")


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
    for stage in ("pretrain", "finetune"):
        try:
            if not deepspeed_config_path(getattr(cfg, stage)).is_file():
                problems.append(f"{stage}.deepspeed: {getattr(cfg, stage).deepspeed} does not exist")
        except ValueError as e:
            problems.append(f"{stage}.deepspeed: {e}")
    return problems


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages this config runs, in topological order, each with the config keys, data files and
    environment settings it reads (the executor fingerprints exactly those, and the code it runs).
    A config a stage would fail on (`config_problems`) is a ConfigError here, at plan time."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    stages: list[Stage] = []
    has_synth = cfg.data.synth is not None
    synth = ("synth",) if has_synth else ()
    if has_synth:
        stages.append(Stage("synth", (), ("data.synth.size", "data.synth.seed"), synth_body))
    trained = cfg.evaluate.model is None  # else the evaluate jobs read a given model: nothing to train
    if trained:
        prepare_reads = ("data.pretrain", "data.finetune", "prepare", "model.tokenizer", "model.vision",
                         "pretrain.template", "pretrain.max_length", "finetune.template", "finetune.max_length")
        if cfg.model.vision.image_size == AUTO:  # rows are cut for the sweep's largest resolution
            prepare_reads += ("sweep.space.resolution",)
        # The tokenizer, and the tower whose image size sets the image tokens (with `auto`: the sweep's largest).
        prepare_checkpoints = _checkpoint_files("model.tokenizer.name_or_path", "model.vision.name_or_path",
                                            resolutions=cfg.model.vision.image_size == AUTO)
        stages.append(Stage("prepare", synth, prepare_reads, prepare_body,
                            files=lambda c: {**_prepare_files(c), **prepare_checkpoints(c)},
                            resources=("prepare.cpus_per_task",)))
        if cfg.sweep.enabled:
            stages.append(Stage(
                "sweep", ("prepare", *synth), _sweep_reads(cfg), sweep_body,
                files=lambda c: {**_deepspeed_files("pretrain", "finetune")(c),
                                 **_checkpoint_files(*MODEL_CHECKPOINTS, resolutions=True)(c),
                                 **_benchmark_files(c.sweep.dev.benchmark, c.sweep.dev.root or c.evaluate.root)}))
        train_reads = ("seed", "model")
        for stage, deps, body in (("pretrain", ("prepare",), pretrain_body),
                                  ("finetune", ("prepare", "pretrain"), finetune_body)):
            stages.append(Stage(stage, deps, (*train_reads, stage), body,
                                files=lambda c, s=stage: {**_deepspeed_files(s)(c),
                                                          **_checkpoint_files(*MODEL_CHECKPOINTS)(c)},
                                resources=(f"{stage}.keep_checkpoints",)))
    eval_names = []
    eval_reads = ("evaluate.root", "evaluate.template", "evaluate.batch_size", "evaluate.use_gpu",
                  "evaluate.limit", "evaluate.parity_sample", "evaluate.blank_image_check", "evaluate.model")
    for bench in cfg.evaluate.benchmarks:
        name = f"evaluate.{bench}"
        eval_names.append(name)
        stages.append(Stage(
            name, ("finetune", *synth) if trained else synth, eval_reads, functools.partial(evaluate_body, bench=bench),
            files=lambda c, b=bench: {**_benchmark_files(b, c.evaluate.root), **_checkpoint_files("evaluate.model")(c)},
            env=_judge_env(bench), resources=("evaluate.num_actors", "evaluate.cpus_per_actor"), group="evaluate"))
    if cfg.export.enabled and trained:
        stages.append(Stage("export", ("finetune", *eval_names, *synth),
                            ("export", "name", "model.connector", "evaluate.root", "evaluate.template"), export_body))
    return stages


def _auto_keys(cfg: PipelineConfig) -> list[str]:
    from components.sweep.space import auto_keys

    return auto_keys(cfg)


# The pipeline as the engine runs it: `auto` keys are filled from the sweep's best.json (a pre-pass).
LLAVA15 = Pipeline(build_stages, auto_keys=_auto_keys, auto_source="sweep", resolve=resolve_from_sweep)
