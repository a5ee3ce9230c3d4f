"""The LLaVA-1.5 recipe as a DAG, top to bottom like the paper:

  synth (embedded default only) → prepare → [sweep] → pretrain (connector, ZeRO-2) → finetune (connector + LLM,
  ZeRO-3) → evaluate.<benchmark> (one job each, fan-out) → export (HF LlavaForConditionalGeneration + registry)

`sweep` (when sweep.enabled) runs Ray Tune over connector × resolution on the prepared data; with
`model.connector: auto` / `model.vision.image_size: auto`, pretrain and finetune wait for it and take its
best values (the executor refines their config from best.json before fingerprinting them).

Each stage declares the config it depends on, the code it runs and its upstream stages; the executor
turns that into fingerprints and cache decisions. Stage bodies import their heavy libraries lazily, so
`plan` stays fast.
"""

from __future__ import annotations

import tempfile
from typing import Any

from components.core import storage
from components.core.config import PipelineConfig, fill_synth, model_for_prepare

from .executor import Stage, StageContext

CORE = ("components/core",)


def _dump(obj: Any) -> Any:
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj


# ---------------------------------------------------------------- stage bodies


def run_synth(ctx: StageContext) -> dict[str, Any]:
    from components.synth.world import generate_world

    synth = ctx.cfg.data.synth
    assert synth is not None
    if not storage.is_remote(ctx.out):
        manifest = generate_world(ctx.out, seed=synth.seed, size=synth.size)
    else:  # generate locally, then upload the folder
        with tempfile.TemporaryDirectory() as tmp:
            manifest = generate_world(tmp, seed=synth.seed, size=synth.size)
            storage.upload_dir(tmp, ctx.out)
    return {"files": len(manifest["files"])}


def run_prepare_stage(ctx: StageContext) -> dict[str, Any]:
    from components.prepare.run import run_prepare

    result = run_prepare(ctx.cfg, ctx.out, ctx.inputs.get("synth"))
    metrics = {}
    for name in ("pretrain", "finetune"):
        for key in ("total", "kept", "rejected", "truncated"):
            metrics[f"{name}_{key}"] = result[name][key]
    return metrics


def run_sweep_stage(ctx: StageContext) -> dict[str, Any]:
    from components.sweep.run import run_sweep

    metrics = run_sweep(ctx.cfg, prepared=ctx.inputs["prepare"], eval_root=dev_root(ctx.cfg, ctx.inputs),
                        out=ctx.out, storage_root=ctx.storage, fingerprint=ctx.fingerprint, mlflow=ctx.mlflow)
    resolve_from_sweep(ctx.cfg, ctx.out)  # best.json must be usable by `auto` before the output is committed
    return metrics


def resolve_from_sweep(cfg: PipelineConfig, out: str) -> tuple[PipelineConfig, dict[str, Any]]:
    """`auto` values filled from a sweep output's best.json (the executor calls this for later stages)."""
    from components.sweep.space import resolve_auto

    path = storage.join(out, "best.json")
    return resolve_auto(cfg, storage.read_json(path)["best"], source=path)


def _sweep_config(c: PipelineConfig) -> dict[str, Any]:
    """What a sweep's result depends on: the searched dimensions' own settings are left out, so switching
    model.connector between `auto` and a fixed value does not rerun the sweep."""
    model = _dump(c.model)
    if c.sweep.space.connector:
        model.pop("connector")
    if c.sweep.space.resolution:
        model["vision"].pop("image_size")
    return {"sweep": _dump(c.sweep), "model": model, "pretrain": _dump(c.pretrain), "finetune": _dump(c.finetune),
            "evaluate": {"root": c.evaluate.root, "template": c.evaluate.template}}


def _train(ctx: StageContext, stage: str) -> dict[str, Any]:
    from components.train.run import run_training

    init = storage.join(ctx.inputs["pretrain"], "connector.safetensors") if stage == "finetune" else None
    summary = run_training(
        ctx.cfg, stage, prepared=ctx.inputs["prepare"], out=ctx.out, run_name=f"{stage}-{ctx.fingerprint}",
        storage_path=storage.join(ctx.storage, "ray_train"), init_connector=init, mlflow=ctx.mlflow,
    )
    keys = ("steps", "samples", "tokens", "initial_loss", "final_loss", "wall_s", "resumed_from_step",
            "world_size", "threads_per_worker")
    return {k: summary[k] for k in keys if k in summary and summary[k] is not None}


def run_pretrain(ctx: StageContext) -> dict[str, Any]:
    return _train(ctx, "pretrain")


def run_finetune(ctx: StageContext) -> dict[str, Any]:
    return _train(ctx, "finetune")


def eval_root(cfg: PipelineConfig, inputs: dict[str, str]) -> str:
    return fill_synth(cfg.evaluate.root, inputs.get("synth"), "evaluate.root")


def dev_root(cfg: PipelineConfig, inputs: dict[str, str]) -> str:
    """Where the sweep's dev benchmark is read: sweep.dev.root, else evaluate.root."""
    if cfg.sweep.dev.root is None:
        return eval_root(cfg, inputs)
    return fill_synth(cfg.sweep.dev.root, inputs.get("synth"), "sweep.dev.root")


def local_eval_root(root: str, folders: list[str], tmp: str) -> str:
    """An eval root the benchmark readers (local files only) can open: `root` itself when local; for s3://
    a local folder linking just the needed benchmark folders, each copied once to the node's cache."""
    if not storage.is_remote(root):
        return root
    from pathlib import Path

    from components.models.remote import localize

    local = Path(tmp) / "eval_root"
    for folder in folders:
        link = local / folder
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(localize(storage.join(root, folder)), target_is_directory=True)
    return str(local)


def run_evaluate(ctx: StageContext, bench: str) -> dict[str, Any]:
    from components.evaluate.benchmarks import get_benchmark
    from components.evaluate.stage import run_benchmark

    ev = ctx.cfg.evaluate
    spec = get_benchmark(bench)
    # The evaluate component reads and writes local files; an s3:// storage root is staged through this node.
    with tempfile.TemporaryDirectory() as tmp, storage.staged_dir(ctx.out) as out:
        common = dict(model_dir=storage.join(ctx.inputs["finetune"], "model"),
                      eval_root=local_eval_root(eval_root(ctx.cfg, ctx.inputs), [spec.folder], tmp),
                      template=ev.template, batch_size=ev.batch_size, num_actors=ev.num_actors, use_gpu=ev.use_gpu,
                      limit=ev.limit)
        result = run_benchmark(bench, out_dir=out, parity_sample=ev.parity_sample, mlflow=ctx.mlflow, **common)
        metrics: dict[str, Any] = {"status": result["status"]}
        if result.get("value") is not None:
            metrics[result["metric"]] = result["value"]
        if result.get("parity") is not None:
            metrics["parity_mismatches"] = len(result["parity"])
        if bench in ev.blank_image_check:
            blank = run_benchmark(bench, out_dir=storage.join(out, "blank_images"), blank_images=True, **common)
            if blank.get("value") is not None:
                metrics[f"blank_images_{blank['metric']}"] = blank["value"]
    return metrics


def run_export(ctx: StageContext) -> dict[str, Any]:
    from components.evaluate.benchmarks import get_benchmark
    from components.export.stage import run_export_stage

    evals = {name: path for name, path in ctx.inputs.items() if name.startswith("evaluate.")}
    folders = [get_benchmark(name.split(".", 1)[1]).folder for name in evals]
    with tempfile.TemporaryDirectory() as tmp:
        return run_export_stage(ctx.cfg, model_dir=storage.join(ctx.inputs["finetune"], "model"), out=ctx.out,
                                eval_outputs=evals, pipeline_fingerprint=ctx.fingerprint, mlflow=ctx.mlflow,
                                eval_root=local_eval_root(eval_root(ctx.cfg, ctx.inputs), folders, tmp))


# ---------------------------------------------------------------- the DAG


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages this config runs, in topological order."""
    stages: list[Stage] = []
    has_synth = cfg.data.synth is not None
    if has_synth:
        stages.append(Stage("synth", (), lambda c: {"data.synth": _dump(c.data.synth)},
                            ("components/synth",), run_synth))
    stages.append(Stage(
        "prepare", ("synth",) if has_synth else (),
        lambda c: {"data": _dump(c.data), "prepare": _dump(c.prepare), "tokenizer": _dump(c.model.tokenizer),
                   "vision": _dump(model_for_prepare(c).vision),
                   "pretrain": {"template": c.pretrain.template, "max_length": c.pretrain.max_length},
                   "finetune": {"template": c.finetune.template, "max_length": c.finetune.max_length}},
        ("components/prepare", "components/models", *CORE), run_prepare_stage))
    after: tuple[str, ...] = ()
    if cfg.sweep.enabled:
        stages.append(Stage("sweep", ("prepare", "synth") if has_synth else ("prepare",), _sweep_config,
                            ("components/sweep", "components/train", "components/evaluate", "components/models", *CORE),
                            run_sweep_stage, resolves=resolve_from_sweep))
        from components.sweep.space import auto_keys

        after = ("sweep",) if auto_keys(cfg) else ()
    stages.append(Stage("pretrain", ("prepare",),
                        lambda c: {"model": _dump(c.model), "pretrain": _dump(c.pretrain)},
                        ("components/train", "components/models", *CORE), run_pretrain, after=after))
    stages.append(Stage("finetune", ("prepare", "pretrain"),
                        lambda c: {"model": _dump(c.model), "finetune": _dump(c.finetune)},
                        ("components/train", "components/models", *CORE), run_finetune, after=after))
    eval_names = []
    for bench in cfg.evaluate.benchmarks:
        name = f"evaluate.{bench}"
        eval_names.append(name)
        stages.append(Stage(
            name, ("finetune", "synth") if has_synth else ("finetune",),
            lambda c, b=bench: {"benchmark": b, "evaluate": _dump(c.evaluate.model_copy(
                update={"benchmarks": [], "concurrency": 1, "num_actors": 1}))},
            ("components/evaluate", "components/models", *CORE),
            lambda ctx, b=bench: run_evaluate(ctx, b), group="evaluate"))
    if cfg.export.enabled:
        export_deps = ("finetune", *eval_names, *(("synth",) if has_synth else ()))
        stages.append(Stage("export", export_deps, lambda c: {"export": _dump(c.export)},
                            ("components/export", "components/models", *CORE), run_export))
    return stages
