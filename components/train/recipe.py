"""The training recipe, pretrain and finetune alike: one DeepSpeed engine per rank, in one readable flow.

Reads in run order: `plan` (driver: step count and data order, the same on every rank) → `train` (setup:
model, trainable parts, engine, resume → data → optimizer steps: micro-batches, backward, step, log,
checkpoint → outputs). Every rank builds the same model from the same seed, so ranks start identical
without a broadcast. Where it runs is a `Runtime` (runtime.py): a Ray Train worker (`train_loop`, started by
stage.py, the pipeline's path) or, without Ray, torchrun or one plain process (`main`):

    python -m components.train.recipe pretrain --config tiny --prepared runs/tiny/artifacts/prepare/<fp> \
        --out /tmp/pre --set pretrain.max_steps=1                            # one process, one CPU
    torchrun --nproc_per_node 2 -m components.train.recipe finetune ...      # two ranks on gloo
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from components.core import storage
from components.core.mlflow_target import MlflowTarget
from components.models.spec import ModelSpec

from .checkpoint import restore, save
from .collate import PACK_MULTIPLE, CollateSpec, collate, sample_length, use_packed_attention
from .data import grouping_inputs
from .env import DELAY_ENV, FAULT_ENV, PROBE_ENV
from .flops import FlopCounts, mfu, peak_flops
from .grouping import rank_positions, sample_stream
from .loss import supervised_loss
from .lost_samples import gather_lost_samples, mask_lost_samples
from .outputs import write_export_probe, write_finetune_output, write_pretrain_output, write_summary
from .runtime import LocalRuntime, RayRuntime, Runtime, StopRequested
from .schedule import lr_lambda
from .spec import TrainStageConfig
from .zero import deepspeed_config, frozen_fingerprint


def _local_file(path: str) -> str:
    if not storage.is_remote(path):
        return path
    fd, local = tempfile.mkstemp(suffix=os.path.basename(path))
    with os.fdopen(fd, "wb") as f:
        f.write(storage.read_bytes(path))
    return local


def _track(
    mlflow: MlflowTarget | None, metrics: dict[str, float | None], step: int, tags: dict[str, Any] | None = None
) -> None:
    """Off the step's path: the entry goes to this process's journal and a background sender delivers it
    (through server outages: components/core/mlflow_sender.py). Only a local disk error can fail it, and that
    must not kill a training run."""
    if mlflow is None:
        return
    try:
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=step, background=True)
        if tags:
            mlflow.set_tags(tags, background=True)
    except OSError as e:
        log.warning("MLflow entry of step %d not kept: %s", step, e)


log = logging.getLogger(__name__)
Stage = Literal["pretrain", "finetune"]


@dataclass(frozen=True)
class TrainPlan:
    """What every rank trains: the stage, its model, its data order and its step budget."""

    stage_name: Stage
    train: TrainStageConfig
    model: ModelSpec
    seed: int  # initialises the model's random parts, the same on every rank
    prepared: str  # prepare output root (tokenizer/, <stage>/shards)
    out: str  # stage output folder
    init_connector: str | None  # connector.safetensors of the pretrain stage (finetune)
    total_steps: int
    num_rows: int
    stop_at: int  # last optimizer step of this run (< total_steps for one segment of a longer run; the sweep's)
    stream: np.ndarray  # row number at each stream position (the epochs' orders back to back)
    mlflow: MlflowTarget | None


def total_steps(num_rows: int, global_batch: int, epochs: float, max_steps: int | None) -> int:
    """ceil(epochs × N / global batch), capped by max_steps."""
    steps = math.ceil(epochs * num_rows / global_batch)
    return max(1, min(steps, max_steps) if max_steps else steps)


def plan(
    stage: Stage, sc: TrainStageConfig, model: ModelSpec, seed: int, *, prepared: str, out: str,
    init_connector: str | None = None, mlflow: MlflowTarget | None = None, stop_at_step: int | None = None,
) -> TrainPlan:
    """The stage's step count and sample stream (length-grouped, seeded: identical wherever it is computed)."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    lengths, has_image = grouping_inputs(prepared, stage)
    steps = total_steps(len(lengths), sc.global_batch, sc.epochs, sc.max_steps)
    if stop_at_step is not None and not 0 < stop_at_step <= steps:
        raise ValueError(f"{stage}: stop_at_step {stop_at_step} is outside the run's steps 1..{steps}")
    epochs_needed = math.ceil(steps * sc.global_batch / len(lengths))
    stream = sample_stream(lengths, has_image, epochs=epochs_needed, batch_size=sc.per_device_batch,
                           num_chunks=sc.num_workers * sc.gradient_accumulation, seed=sc.seed,
                           group_by_modality=sc.group_by_modality_length)
    return TrainPlan(stage_name=stage, train=sc, model=model, seed=seed, prepared=prepared, out=out,
                     init_connector=init_connector, total_steps=steps, num_rows=len(lengths),
                     stop_at=stop_at_step or steps, stream=stream, mlflow=mlflow)


def train(job: TrainPlan, rt: Runtime, clock: Callable[[], float] = time.monotonic) -> dict[str, Any] | None:
    """Run the plan on this rank; rank 0 returns the summary (also written to `out`/summary.json).

    Returns None on other ranks; raises StopRequested on every rank when the runtime says stop. `clock`
    (seconds) times `checkpoint_every_minutes`; only rank 0's is read for it (tests pass a fake one).
    """
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    from components.models.assembly import (
        build_model,
        compile_language_model,
        num_image_tokens,
        vision_image_size,
    )
    from components.models.connectors import load_connector, unwrap_llava
    from components.models.tokenizer import image_token_id, load_tokenizer

    from .trainable import apply_lora, param_groups, parameter_counts, set_trainable

    name, stage = job.stage_name, job.train
    rank, world = rt.rank, rt.world
    batch, accum = stage.per_device_batch, stage.global_batch // (stage.per_device_batch * world)
    if batch * accum * world != stage.global_batch:
        raise ValueError(f"{name}: global_batch {stage.global_batch} is not per_device_batch {batch} × gradient "
                         f"accumulation × {world} workers; change per_device_batch or num_workers")
    attempt_start = time.time()
    if stage.threads_per_worker:
        torch.set_num_threads(stage.threads_per_worker)
    torch.manual_seed(stage.seed + rank)  # dropout differs per rank; weights come from job.seed below

    # ---- model: identical on every rank (same seed), frozen parts per stage
    tokenizer = load_tokenizer(storage.join(job.prepared, "tokenizer"))
    dtype = torch.bfloat16 if stage.precision == "bf16" else torch.float32
    model = build_model(job.model, tokenizer, dtype=dtype, seed=job.seed)
    if job.init_connector:
        load_connector(model, _local_file(job.init_connector))
    if stage.lora is not None:
        model = apply_lora(model, stage.lora)
    else:
        set_trainable(model, stage.trainable)
    counts = parameter_counts(model)
    llava = unwrap_llava(model)
    if stage.packed:
        use_packed_attention(llava, "cuda" if stage.use_gpu else "cpu")
    if stage.gradient_checkpointing:
        llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        llava.enable_input_require_grads()  # as the reference: inputs of checkpointed blocks need grads
    if stage.compile_llm:
        compile_language_model(llava)

    # ---- engine: client AdamW (a DeepSpeed-config optimizer would JIT-build fused Adam) + our schedule
    total = job.total_steps
    sched = stage.schedule
    optimizer = torch.optim.AdamW(param_groups(model, stage.optim), lr=stage.optim.lr, betas=stage.optim.betas,
                                  eps=stage.optim.eps)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer,
        lr_scheduler=lambda opt: LambdaLR(opt, lambda s: lr_lambda(s, total, sched.warmup_ratio, sched.kind)),
        config=deepspeed_config(stage, world, llava.config.text_config.hidden_size))
    meta = restore(engine, rt, name)
    start = meta["step"] if meta else 0
    history: dict[str, Any] = meta or {"losses": [], "samples": 0, "tokens": 0, "restarts": -1,
                                       "resumed_from": []}
    history.setdefault("lost", 0)  # samples whose image could not be read (all ranks); older checkpoints lack it
    history.setdefault("lost_samples", [])  # and which, with the reason (gathered to rank 0 at each checkpoint)
    lost_here: list[dict[str, Any]] = []  # this rank's lost samples since the last checkpoint
    history["restarts"] += 1
    fetched: list[int] | None = None  # bytes each rank copied from storage to resume (0: read in place)
    if meta:
        history["resumed_from"].append(start)
        per_rank = torch.zeros(world, dtype=torch.int64, device=engine.device)
        per_rank[rank] = rt.fetched_bytes
        dist.all_reduce(per_rank)
        fetched = per_rank.tolist()
    if rank == 0:
        print(f"[{name}] setup {time.time() - attempt_start:.1f}s; global batch {stage.global_batch} = {batch} per "
              f"device × {accum} accumulation × {world} workers; {total} steps over {job.num_rows} samples; "
              + (f"resumed at step {start} (fetched per rank: {', '.join(f'{b / 1e6:.1f}' for b in fetched)} MB)"
                 if fetched is not None else "fresh start")
              + ("; language model compiled (the first steps compile)" if stage.compile_llm else ""), flush=True)
        if meta:
            _track(job.mlflow, {f"{name}/resumed_from_step": start}, start,
                   {f"{name}.resumed_from_step": start, f"{name}.restarts": history["restarts"]})

    # ---- data: this rank's micro-batches from the resume position on
    end = min(total, job.stop_at)
    size, n_img = vision_image_size(job.model.vision), num_image_tokens(job.model.vision)
    spec = CollateSpec(image_id=image_token_id(tokenizer), num_image_tokens=n_img, max_length=stage.max_length,
                       pad_id=tokenizer.pad_token_id, image_size=size,
                       pack_multiple=PACK_MULTIPLE if stage.packed else None)
    positions = rank_positions(start, end, rank=rank, world=world, batch_size=batch, accumulation=accum)
    if len(positions) and positions.max() >= len(job.stream):
        raise RuntimeError(f"{name}: stream of {len(job.stream)} positions is too short for step {end}")
    batches = rt.batches(job.stream[positions], batch_size=batch, mode=stage.image_mode, size=size)
    vc = llava.config.vision_config
    flops = FlopCounts(
        vision=sum(counts["vision_tower"].values()), connector_trained=counts["connector"]["trainable"],
        connector_frozen=counts["connector"]["frozen"], llm_trained=counts["language_model"]["trainable"],
        llm_frozen=counts["language_model"]["frozen"],
        vision_tokens_per_image=(vc.image_size // vc.patch_size) ** 2 + 1)
    peak = peak_flops(torch.cuda.get_device_name(), stage.precision) if stage.use_gpu else None
    fault_step = int(os.environ.get(FAULT_ENV) or 0)
    step_delay = float(os.environ.get(DELAY_ENV) or 0)

    # ---- train: one optimizer step = `accum` micro-batches on every rank
    engine.train()
    inputs, train_start = None, time.time()
    save_every_s, last_save = stage.checkpoint_every_minutes * 60, clock()
    ckpt_bytes = 0  # this rank's last checkpoint size (the next save's space check)
    for step in range(start, end):
        t0 = time.perf_counter()
        lr = engine.get_lr()[0]  # the lr this step's update uses
        # loss sum, tokens, samples, images, stop requested, checkpoint due, samples lost: rank 0 decides
        # stop and due for every rank (its runtime and its clock; ranks' clocks differ and a save is
        # collective), the sum tells all
        totals = torch.zeros(7, dtype=torch.float64, device=engine.device)
        for _ in range(accum):
            rows = next(batches)
            images = rows.column("image").to_pylist()
            pixels = [p if img else None for p, img in zip(rows.column("pixels").to_pylist(), images, strict=True)]
            ids, names = rows.column("input_ids").to_pylist(), rows.column("id").to_pylist()
            labels = mask_lost_samples(rows.column("labels").to_pylist(), rows.column("image_error").to_pylist(),
                                       names, images, step + 1, lost_here)
            inputs = collate(ids, labels, pixels, spec, names=names, device=engine.device, ensure_image=True)
            loss = supervised_loss(engine, inputs)  # mean over this micro-batch's supervised tokens
            engine.backward(loss)  # DeepSpeed scales by 1/accum and reduces across ranks at the boundary
            engine.step()  # a no-op except at the accumulation boundary
            # Summed on the device: no host sync until the step's single all-reduce.
            totals[0] += loss.detach().double()
            totals[1] += sum(sample_length(row, spec) for row in ids)  # real tokens, either layout
            totals[2] += len(images)
            totals[3] += sum(1 for img in images if img)
            totals[6] += sum(1 for e in rows.column("image_error").to_pylist() if e)
        totals[4] = float(rank == 0 and rt.should_stop())
        totals[5] = float(rank == 0 and save_every_s > 0 and clock() - last_save >= save_every_s)
        dist.all_reduce(totals)
        seconds = time.perf_counter() - t0
        loss_mean, tokens, samples, n_images, stop, due, lost = totals.tolist()
        if stop:  # the sweep's scheduler stopped this trial: every rank leaves together, writing nothing
            raise StopRequested(f"{name}: told to stop at step {step + 1}")
        loss_mean /= accum * world
        done = step + 1
        # Not one of a step's images could be read: the storage is gone, not a file (a step of a few images can
        # lose them all by chance, hence the 4)
        if n_images >= 4 and lost == n_images:
            raise RuntimeError(f"{name}: none of the {int(n_images)} images of step {done} could be read; first: "
                               f"{lost_here[-1]['message'] if lost_here else 'on another rank'}")
        if not math.isfinite(loss_mean):
            raise FloatingPointError(f"{name}: loss is {loss_mean} at step {done}; lower optim.lr or check the "
                                     "data")
        history["losses"].append(loss_mean)
        history["samples"] += int(samples)
        history["tokens"] += int(tokens)
        grad_norm = engine.get_global_grad_norm()
        history["lost"] += int(lost)
        metrics = {"loss": loss_mean, "lr": lr, "lost_samples": history["lost"],
                   "grad_norm": None if grad_norm is None else float(grad_norm),
                   "tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds,
                   "mfu": mfu(flops.step_flops(int(tokens), int(n_images) * n_img, int(n_images)), seconds, world,
                              peak)}
        if rank == 0:
            eta = (time.time() - train_start) / (done - start) * (total - done)
            print(f"[{name}] step {done}/{total} loss {loss_mean:.4f} lr {lr:.2e} {tokens / seconds:,.0f} tok/s "
                  f"ETA {timedelta(seconds=round(eta))}", flush=True)
            _track(job.mlflow, {f"{name}/{k}": v for k, v in metrics.items()}, done)
        if step_delay:
            time.sleep(step_delay)
        if done == fault_step and meta is None and rank == (1 if world > 1 else 0):
            registered = rt.wait_until_saved()
            print(f"[{name}] {FAULT_ENV}={fault_step}: rank {rank} is SIGKILLed after step {done} (checkpoint "
                  f"registered: {registered})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a preempted node: no cleanup runs
        every = bool(stage.checkpoint_every) and done % stage.checkpoint_every == 0
        if due or every or done == end:
            history["lost_samples"] += gather_lost_samples(lost_here)  # collective, as the save
            lost_here.clear()
            state = {**history, "stage": name, "step": done, "world_size": world, "position": done * stage.global_batch,
                     "epoch": done * stage.global_batch / job.num_rows}
            t_save = time.perf_counter()
            ckpt_bytes = save(engine, state, {"step": done, **{k: v for k, v in metrics.items() if v is not None}},
                              rt, expected_bytes=ckpt_bytes)
            if rank == 0:
                why = "end" if done == end else f"every {stage.checkpoint_every} steps" if every else (
                    f"{stage.checkpoint_every_minutes:g} minutes since the last")
                print(f"[{name}] checkpoint at step {done} ({why}) saved in {time.perf_counter() - t_save:.1f}s",
                      flush=True)
            last_save = clock()  # the next one counts from here: a slow save never makes every step save

    # ---- outputs (collectives first, then rank 0 writes)
    if os.environ.get(PROBE_ENV) and inputs is not None:
        write_export_probe(engine.module, inputs, job.out, rank)
    if name == "pretrain":
        write_pretrain_output(engine.module, job.out, rank)
    else:
        write_finetune_output(engine.module, stage, tokenizer, job.out, rank)
    frozen = frozen_fingerprint(engine.module, rank)
    if rank != 0:
        return None
    losses = history["losses"]
    k = max(1, min(5, len(losses) // 4))
    summary = {
        "stage": name, "steps": len(losses), "total_steps": total, "stopped_at": end, "samples": history["samples"],
        "tokens": history["tokens"], "epochs": len(losses) * stage.global_batch / job.num_rows,
        "global_batch": stage.global_batch, "world_size": world, "gradient_accumulation": accum,
        "initial_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "initial_loss_mean": float(np.mean(losses[:k])) if losses else None,
        "final_loss_mean": float(np.mean(losses[-k:])) if losses else None, "losses": losses,
        "wall_s": time.time() - attempt_start, "resumed": bool(history["resumed_from"]),
        "resumed_from_step": history["resumed_from"][-1] if history["resumed_from"] else None,
        "resume_fetched_bytes": fetched,
        "lost_samples": history["lost"], "lost_sample_list": history["lost_samples"],
        "restarts": history["restarts"], "trainable": counts, "frozen_sha256": frozen,
        "init_connector": job.init_connector, "lora": stage.lora is not None,
        "zero_stage": engine.zero_optimization_stage(), "precision": stage.precision,
        "threads_per_worker": torch.get_num_threads(),
    }
    write_summary(summary, job.out)
    if job.mlflow is not None:  # a bounded wait: what is still unsent stays kept on this node (mlflow_sender.py)
        job.mlflow.flush()
    return summary


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's `train_loop_per_worker` (stage.py): the job on this worker's runtime."""
    return train(config["job"], RayRuntime(config["table_ref"], config.get("stop_file")))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Train one stage without Ray: one process, or every rank of `torchrun`. Rank 0 prints the summary."""
    from components.core.config import load_section
    from components.models.spec import ModelConfig

    p = argparse.ArgumentParser(prog="python -m components.train.recipe", description=main.__doc__)
    p.add_argument("stage", choices=["pretrain", "finetune"])
    p.add_argument("--config", default="tiny", help="a config name or file (as `llava-pipeline run`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--prepared", required=True, help="the prepare stage's output folder")
    p.add_argument("--out", required=True, help="the stage's output folder")
    p.add_argument("--run-dir", help="checkpoint folder (default: <out>/checkpoints); a rerun resumes from it")
    p.add_argument("--init-connector", help="finetune: the pretrain stage's connector.safetensors")
    p.add_argument("--stop-at-step", type=int, help="end after this optimizer step (a segment of the run)")
    args = p.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    overrides = [*args.set, f"{args.stage}.num_workers={world}"]  # the batch math's world
    sc = load_section(args.config, args.stage, TrainStageConfig, overrides)
    model = load_section(args.config, "model", ModelConfig, overrides).spec()
    seed = load_section(args.config, "seed", int, overrides, default=0)  # PipelineConfig's default
    rt = LocalRuntime(args.prepared, args.stage, args.run_dir or storage.join(args.out, "checkpoints"),
                      use_gpu=sc.use_gpu)
    job = plan(args.stage, sc, model, seed, prepared=args.prepared, out=args.out,
               init_connector=args.init_connector, stop_at_step=args.stop_at_step)
    try:
        summary = train(job, rt)
    finally:
        dist.destroy_process_group()
    if summary is not None:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, default=str), flush=True)
    return summary


if __name__ == "__main__":
    main()
