"""The driver of a training stage on Ray: the recipe's plan, the rows in the object store, a `TorchTrainer`.

Rerunning with the same (run_name, storage_path) resumes from the run's latest checkpoint (Ray Train V2
keeps a run snapshot there); a fresh run needs a new name (the pipeline names one per attempt). Worker failures
restart the worker group from the latest checkpoint, up to the stage's `max_failures`. `fit` is the one place
a `TorchTrainer` is built (the sweep runs its trials' own loop through it).
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable
from typing import Any

from components.core import storage
from components.core.config import PipelineConfig, TrainStageConfig
from components.core.mlflow_target import MlflowTarget

from .data import ROW_COLUMNS, read_shards
from .recipe import DELAY_ENV, FAULT_ENV, PROBE_ENV, Stage, plan, total_steps, train_loop

__all__ = ["fit", "prune_checkpoints", "run_train", "total_steps"]
FORWARDED_ENV = (FAULT_ENV, PROBE_ENV, DELAY_ENV, "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR")


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


def run_train(
    cfg: PipelineConfig,
    stage: Stage,
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

    if stage == "finetune" and init_connector is None:
        print("[finetune] no init_connector given: the connector starts from random weights", flush=True)
    job = plan(cfg, stage, prepared=prepared, out=out, init_connector=init_connector, mlflow=mlflow,
               stop_at_step=stop_at_step)
    table_ref = ray.put(read_shards(prepared, stage, ROW_COLUMNS))
    t0 = time.time()
    result = fit(train_loop, {"job": job, "table_ref": table_ref}, getattr(cfg, stage), run_name=run_name,
                 storage_path=storage_path)
    summary = result.return_value
    if summary is None:  # a resumed run that had nothing left to return, or an older Ray
        summary = storage.read_json(storage.join(out, "summary.json"))
    return {**summary, "run_name": run_name, "fit_wall_time_s": time.time() - t0,
            "checkpoint": result.checkpoint.path if result.checkpoint else None, "metrics": result.metrics}


def fit(
    loop: Callable[[dict[str, Any]], Any], config: dict[str, Any], sc: TrainStageConfig, *, run_name: str,
    storage_path: str, callbacks: list[Any] | None = None,
) -> Any:
    """One Ray Train run of `loop` on the stage's workers; its `ray.train.Result`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if not sc.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # else DeepSpeed probes for CUDA and warns before falling back
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {})}
    fs, inner = storage.pyarrow_filesystem(storage_path) if storage.is_remote(storage_path) else (
        None, os.path.abspath(storage_path))
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=inner, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env}, callbacks=callbacks or []),
    )
    return trainer.fit()
