"""The `pretrain` and `finetune` stages on Ray: the recipe's plan, the rows in the object store, a `TorchTrainer`.

Rerunning with the same (run_name, storage_path) resumes from the run's latest checkpoint (Ray Train V2 keeps
a run snapshot there); a fresh run needs a new name (one per stage attempt: `StageRun.run_name`). Worker
failures restart the worker group from the latest checkpoint, up to the stage's `max_failures`. `fit` is the
one place a `TorchTrainer` is built (the sweep runs its trials' own loop through it). Torch and Ray are
imported when a stage runs, so planning reads this module's signatures cheaply.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable
from typing import Any, Literal

from components.core import storage
from components.core.mlflow_target import MlflowTarget
from components.core.stage_run import StageRun
from components.models.spec import ModelSpec

from .env import FORWARDED_ENV
from .spec import TrainStageConfig

__all__ = ["fit", "prune_checkpoints", "run_finetune", "run_pretrain", "train_on_ray"]
# What a training stage reports: its step count, data seen, losses, time, and where it resumed.
SUMMARY_METRICS = ("steps", "samples", "tokens", "initial_loss", "final_loss", "wall_s", "resumed_from_step",
                   "world_size", "threads_per_worker", "lost_samples")


def run_pretrain(*, pretrain: TrainStageConfig, model: ModelSpec, seed: int, prepared: str,
                 run: StageRun) -> dict[str, Any]:
    """Train the connector on the prepared pretraining data (the tower and the LLM frozen): connector.safetensors."""
    return _stage("pretrain", pretrain, model, seed, prepared, None, run)


def run_finetune(*, finetune: TrainStageConfig, model: ModelSpec, seed: int, prepared: str, connector: str,
                 run: StageRun) -> dict[str, Any]:
    """Train the connector (from pretrain's `connector` weights) and the LLM, fully or with LoRA: model/."""
    return _stage("finetune", finetune, model, seed, prepared, connector, run)


def _stage(name: Literal["pretrain", "finetune"], sc: TrainStageConfig, model: ModelSpec, seed: int, prepared: str,
           connector: str | None, run: StageRun) -> dict[str, Any]:
    train_root = storage.join(run.storage, "ray_train")
    summary = train_on_ray(name, sc, model, seed, prepared=prepared, out=run.out, run_name=run.run_name,
                           storage_path=train_root, init_connector=connector, mlflow=run.mlflow)
    prune_checkpoints(train_root, run.run_name, keep=sc.keep_checkpoints)
    return {k: summary[k] for k in SUMMARY_METRICS if summary.get(k) is not None}


def prune_checkpoints(storage_path: str, run_name: str, keep: int) -> None:
    """Once a stage's outputs are written, its Train run is only needed for the `keep` newest checkpoints
    (keep 0 deletes the run's folder)."""
    run_dir = storage.join(storage_path, run_name)
    if keep == 0:
        storage.remove(run_dir)
        return
    fs, inner = storage.filesystem(run_dir)
    checkpoints = sorted(p for p in fs.ls(inner, detail=False) if posixpath.basename(p).startswith("checkpoint_"))
    for path in checkpoints[:-keep]:
        fs.rm(path, recursive=True)


def train_on_ray(
    stage: Literal["pretrain", "finetune"],
    sc: TrainStageConfig,
    model: ModelSpec,
    seed: int,
    *,
    prepared: str,
    out: str,
    run_name: str,
    storage_path: str,
    init_connector: str | None = None,
    mlflow: MlflowTarget | None = None,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train one stage on the prepared data; returns rank 0's summary (also in `out`/summary.json).

    `stop_at_step` ends this run after that optimizer step (with a checkpoint and the stage's outputs in
    `out`) while the schedule still spans the stage's whole step count: calling again with the same
    run_name and a later stop continues from there, exactly as one uninterrupted run would (the sweep's
    trials segment their finetune so, inside one worker group).
    """
    import ray

    from .data import ROW_COLUMNS, read_shards
    from .recipe import plan, train_loop

    if stage == "finetune" and init_connector is None:
        print("[finetune] no init_connector given: the connector starts from random weights", flush=True)
    job = plan(stage, sc, model, seed, prepared=prepared, out=out, init_connector=init_connector, mlflow=mlflow,
               stop_at_step=stop_at_step)
    table_ref = ray.put(read_shards(prepared, stage, ROW_COLUMNS))
    t0 = time.time()
    result = fit(train_loop, {"job": job, "table_ref": table_ref}, sc, run_name=run_name, storage_path=storage_path)
    summary = result.return_value
    if summary is None:  # a resumed run that had nothing left to return, or an older Ray
        summary = storage.read_json(storage.join(out, "summary.json"))
    return {**summary, "run_name": run_name, "fit_wall_time_s": time.time() - t0,
            "checkpoint": result.checkpoint.path if result.checkpoint else None, "metrics": result.metrics}


def fit(
    loop: Callable[[dict[str, Any]], Any], config: dict[str, Any], sc: TrainStageConfig, *, run_name: str,
    storage_path: str, callbacks: list[Any] | None = None,
) -> Any:
    """One Ray Train run of `loop(config)` on the stage's workers; its `ray.train.Result`."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if not sc.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # else DeepSpeed probes for CUDA and warns before falling back
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {})}
    fs, inner = storage.pyarrow_filesystem(storage_path) if storage.is_remote(storage_path) else (
        None, os.path.abspath(storage_path))
    trainer = TorchTrainer(
        _loop_from_object_store,
        # Ray Train's controller unpickles train_loop_config: handed a ref, it never imports the loop's code
        # (torch, transformers: 7-9 s of every training stage's start, before any worker is created).
        train_loop_config={"loop_and_config": ray.put((loop, config))},
        scaling_config=ray.train.ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=inner, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env}, callbacks=callbacks or []),
    )
    return trainer.fit()


def _loop_from_object_store(config: dict[str, Any]) -> Any:
    """Each Train worker's entry: the loop and its config, from the object store (see `fit`)."""
    import ray

    loop, loop_config = ray.get(config["loop_and_config"])
    return loop(loop_config)
