"""The driver of a training stage: data order and step count, then a Ray Train `TorchTrainer` over the recipe.

Rerunning with the same (run_name, storage_path) resumes from the run's latest checkpoint (Ray Train V2
keeps a run snapshot there); a fresh run needs a new name (the pipeline names one per attempt). Worker failures restart the worker group from the
latest checkpoint, up to the stage's `max_failures`.
"""

from __future__ import annotations

import math
import os
import posixpath
import time
from typing import Any, Literal

from components.core import storage
from components.core.config import PipelineConfig
from components.tracking import MlflowTarget

from .data import ROW_COLUMNS, grouping_inputs, read_shards
from .grouping import sample_stream
from .recipe import DELAY_ENV, FAULT_ENV, PROBE_ENV, Job, train_loop

Stage = Literal["pretrain", "finetune"]
FORWARDED_ENV = (FAULT_ENV, PROBE_ENV, DELAY_ENV, "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR")


def total_steps(num_rows: int, global_batch: int, epochs: float, max_steps: int | None) -> int:
    """ceil(epochs × N / global batch), capped by max_steps."""
    steps = math.ceil(epochs * num_rows / global_batch)
    return max(1, min(steps, max_steps) if max_steps else steps)


def stage_steps(cfg: PipelineConfig, stage: Stage, prepared: str) -> int:
    """The optimizer steps a stage will run on this prepared dataset (epochs and max_steps applied)."""
    sc = getattr(cfg, stage)
    lengths, _ = grouping_inputs(prepared, stage)
    return total_steps(len(lengths), sc.global_batch, sc.epochs, sc.max_steps)


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


def run_training(
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
    run_name and a later stop continues from there, exactly as one uninterrupted run would (the sweep
    evaluates its trials this way between segments).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    sc = getattr(cfg, stage)
    if stage == "finetune" and init_connector is None:
        print("[finetune] no init_connector given: the connector starts from random weights", flush=True)

    lengths, has_image = grouping_inputs(prepared, stage)
    num_rows = len(lengths)
    steps = total_steps(num_rows, sc.global_batch, sc.epochs, sc.max_steps)
    epochs_needed = math.ceil(steps * sc.global_batch / num_rows)
    stream = sample_stream(lengths, has_image, epochs=epochs_needed, batch_size=sc.per_device_batch,
                           num_chunks=sc.num_workers * sc.gradient_accumulation, seed=sc.seed,
                           group_by_modality=sc.group_by_modality_length)
    table_ref = ray.put(read_shards(prepared, stage, ROW_COLUMNS))
    if stop_at_step is not None and not 0 < stop_at_step <= steps:
        raise ValueError(f"{stage}: stop_at_step {stop_at_step} is outside the run's steps 1..{steps}")
    job = Job(cfg=cfg, stage_name=stage, prepared=prepared, out=out, init_connector=init_connector,
              total_steps=steps, num_rows=num_rows, stop_at=stop_at_step or steps, stream=stream,
              table_ref=table_ref, mlflow=mlflow)

    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if not sc.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # else DeepSpeed probes for CUDA and warns before falling back
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {})}
    fs, inner = storage.pyarrow_filesystem(storage_path) if storage.is_remote(storage_path) else (
        None, os.path.abspath(storage_path))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=inner, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env}),
    )
    t0 = time.time()
    result = trainer.fit()
    summary = result.return_value
    if summary is None:  # a resumed run that had nothing left to return, or an older Ray
        summary = storage.read_json(storage.join(out, "summary.json"))
    return {**summary, "run_name": run_name, "fit_wall_time_s": time.time() - t0,
            "checkpoint": result.checkpoint.path if result.checkpoint else None, "metrics": result.metrics}
