"""What each stage of the LLaVA-1.5 pipeline needs, from its config alone: the `Need`s the placement places.

Model sizes are exact (components/models/sizes.py, the meta device); training memory and checkpoints come from
components/train/memory.py, replicas from components/evaluate/footprint.py, the export from
components/export/footprint.py, training time from the throughput table (components/train/throughput.yaml)
over the stage's tokens (pipelines/resources/data.py).

Process footprints (PSS, host memory) measured with `python -m bench.resources_measure tiny --breakdown` on this project's
2-core CPU machine (Ray 2.60, torch 2.13 CPU, 2026-12-07): the `llava-pipeline run` driver ~600 MiB; a Ray
process that imported torch, transformers and DeepSpeed (a Ray Train worker) ~600 MiB; a generation actor
~400 MiB; Ray Train's controller and its four helper actors ~860 MiB and Ray Data's two ~240 MiB, on the
driver's node; a Ray Data task of prepare or of the training loader ~130 MiB. A GPU process adds the CUDA
runtime's and libraries' host memory: CUDA_HOST, an allowance (no GPU here to measure it), and each GPU holds
CUDA_DEVICE beyond what PyTorch allocates (context, NCCL and cuBLAS workspaces, allocator slack).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from components.evaluate.footprint import replica_bytes
from components.export.footprint import export_bytes
from components.models.sizes import ModelSizes, model_sizes
from components.train.length_mix import DataShape
from components.train.memory import TrainFootprint, train_footprint, trainable_params
from components.train.spec import TrainStageConfig
from components.train.throughput import find_row
from pipelines.config import PipelineConfig
from pipelines.engine.placement import Need, Timing

from .data import stage_data

MiB, GiB = 2**20, 2**30
DRIVER_BASE = 600 * MiB
TORCH_PROCESS = 600 * MiB
GENERATOR_PROCESS = 400 * MiB
TRAIN_ACTORS = 860 * MiB  # TrainController, PlacementGroupCleaner, DatasetManager, SynchronizationActor, PreemptionWatcher
DATA_ACTORS = 240 * MiB  # Ray Data's _StatsActor and _AutoscalingCoordinatorActor, from the first dataset on
DATA_TASK = 130 * MiB
CUDA_HOST = 1536 * MiB
CUDA_DEVICE = 2 * GiB
RAY_TRAIN_KEEP = 2  # stage.py: CheckpointConfig(num_to_keep=2)
SYNTH_TINY_BYTES = 27_768_796  # `llava-pipeline synth --size tiny` (seed 0): files' bytes; other sizes scale with it
# ...and what its 8,281 files take on a local filesystem (`du`: each file fills whole 4 KiB blocks), measured
# on this machine's overlay/ext4: 60% more than their bytes, so a local disk is planned with this.
SYNTH_TINY_DISK = 44_548_096
SUMMARY_ROW = 1024  # bytes per record of prepare's summary rows in the driver (Python dicts of 9 fields)
JSON_OBJECTS = 8  # a parsed JSON annotation file holds about this many times its bytes as Python objects
TRACKING_BYTES = 4 * MiB  # MLflow's sqlite store and the run's log


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 3600:.1f} h"


def _stage_tokens(shape: DataShape | None, sc: TrainStageConfig, counting: str) -> float | None:
    """Tokens the stage feeds, counted the way a throughput row counts them (padded or useful)."""
    if shape is None:
        return None
    steps = math.ceil(sc.epochs * shape.records / sc.global_batch)
    if sc.max_steps:
        steps = min(steps, sc.max_steps)
    per_sample = shape.padded if counting == "padded" else shape.useful
    return steps * sc.global_batch * per_sample


def _train_timing(name: str, sc: TrainStageConfig, sizes: ModelSizes, shape: DataShape | None,
                  fp: TrainFootprint, steps: int | None) -> Callable[[str | None], Timing]:
    def timing(gpu: str | None) -> Timing:
        if not sc.use_gpu:
            return Timing(None, "no throughput rows for CPU training")
        if gpu is None:
            return Timing(None, "GPU type unknown (a manifest's nodeSelector, --gpu TYPE)")
        row, note = find_row(gpu, name, sizes.llm, lora=sc.lora is not None)
        if row is None:
            return Timing(None, note)
        tokens = _stage_tokens(shape, sc, row.tokens)
        if tokens is None:
            return Timing(None, f"{note}; the data's size is unknown")
        seconds = tokens / (row.tokens_per_s * sc.num_workers)
        timed = checkpoint_saves(sc, steps, seconds) - checkpoint_saves(sc, steps, None)  # the time cadence's
        return Timing(seconds, f"{tokens / 1e9:.2f}B {row.tokens} tokens at {note}"
                      + (f"; {timed} more checkpoints on the {sc.checkpoint_every_minutes:g}-minute cadence"
                         if timed else ""), storage=timed * fp.checkpoint_total(sc.num_workers))
    return timing


def checkpoint_saves(sc: TrainStageConfig, steps: int | None, seconds: float | None) -> int:
    """Checkpoints a run writes: every `checkpoint_every` steps, every `checkpoint_every_minutes`, and at the end."""
    saves = 1
    if steps and sc.checkpoint_every:
        saves += (steps - 1) // sc.checkpoint_every
    if seconds and sc.checkpoint_every_minutes:
        saves += int(seconds // (60 * sc.checkpoint_every_minutes))
    return min(saves, steps) if steps else saves


def _token_table(shape: DataShape | None, records: int | None, image_tokens: int) -> int:
    """The stage's token columns as the driver reads them and puts them in the object store (twice)."""
    if not records:
        return 0
    compact = (shape.useful - image_tokens) if shape else 256  # one <image> id per row, not the block
    return 2 * records * int(100 + 8 * max(compact, 1))


def train_need(name: str, cfg: PipelineConfig, sizes: ModelSizes) -> Need:
    sc: TrainStageConfig = getattr(cfg, name)
    data = cfg.data.pretrain if name == "pretrain" else cfg.data.finetune
    synth = cfg.data.synth.size if cfg.data.synth else None
    shape, records, notes = stage_data(data, sc, sizes.image_tokens, synth)
    trainable = trainable_params(cfg.model.spec(), cfg.model.tokenizer, sc)
    fp = train_footprint(sizes, trainable, sc, sc.num_workers, shape)
    steps = None if records is None else min(math.ceil(sc.epochs * records / sc.global_batch),
                                             sc.max_steps or 10**18)
    process = TORCH_PROCESS + (CUDA_HOST if sc.use_gpu else 0)
    offloaded = sum(fp.host_offload.values())
    # Host: each worker builds the whole model before DeepSpeed places it, and holds its largest optimizer
    # tensor while saving; without a GPU everything the device would hold lives in the worker's memory.
    held = max(fp.build, fp.save_transient) if sc.use_gpu else fp.build + fp.device_total
    total = fp.checkpoint_total(sc.num_workers)
    saves = checkpoint_saves(sc, steps, None)
    # Stored at once: Ray Train keeps RAY_TRAIN_KEEP and one more is in flight, but never more than are saved
    # (a time cadence may add saves the step count does not show). The tiny run saves once: one copy, measured.
    copies = RAY_TRAIN_KEEP + 1 if sc.checkpoint_every_minutes else min(saves, RAY_TRAIN_KEEP + 1)
    return Need(
        stage=name, where="gpu" if sc.use_gpu else "cpu", tasks=sc.num_workers, cpus_each=sc.cpus_per_worker,
        gpus_each=1 if sc.use_gpu else 0, host_each=process + held + offloaded + DATA_TASK,
        host_first=fp.build if name == "finetune" else 0,  # rank 0 gathers the full model to write model/
        gpu_each=fp.device_total + CUDA_DEVICE if sc.use_gpu else 0,
        disk_each=fp.checkpoint_rank, disk_first=fp.checkpoint_rank0 - fp.checkpoint_rank + fp.output,
        # A resume fetches on each node only its ranks' shards and the shared files (components/train/shards.py):
        # what the node writes when it saves, so the save term covers it (disk_resume 0).
        disk_node=sizes.download_bytes,
        head_host=TRAIN_ACTORS + DATA_ACTORS + _token_table(shape, records, sizes.image_tokens),
        storage=saves * total + fp.output, storage_kept=fp.output + min(sc.keep_checkpoints, saves) * total,
        storage_peak=fp.output + copies * total,
        timing=_train_timing(name, sc, sizes, shape, fp, steps),
        notes=tuple(notes) + (f"ZeRO-{fp.zero_stage}, {trainable:,} trainable parameters; checkpoint "
                              f"{total / GiB:,.1f} GiB each, {saves} by step count and at the end",))


def _annotation_bytes(path: str, records: int, text_tokens: float) -> int:
    """A local annotation file's size, else about 4.4 characters per token of text plus ~60 per record's keys."""
    local = Path(path)
    if "://" not in path and not path.startswith("{") and local.is_file():
        return local.stat().st_size
    return int(text_tokens * 4.4) + 60 * records


def prepare_need(cfg: PipelineConfig, sizes: ModelSizes) -> Need:
    """Ray Data tasks over every CPU of the CPU nodes; one task parses each annotation file whole; the driver
    collects one summary row per record."""
    synth = cfg.data.synth.size if cfg.data.synth else None
    records, text_tokens, largest = 0, 0.0, 0
    for name in ("pretrain", "finetune"):
        sources = getattr(cfg.data, name)
        shape, n, _ = stage_data(sources, getattr(cfg, name), sizes.image_tokens, synth)
        tokens = (n or 0) * (shape.useful - sizes.image_tokens if shape else 64)
        records, text_tokens = records + (n or 0), text_tokens + tokens
        for src in sources:
            largest = max(largest, _annotation_bytes(src.annotations, (n or 0) // len(sources), tokens / len(sources)))
    bits = math.log2(max(sizes.vocab, 2))
    shards = int(records * 48 + text_tokens * bits / 8 * 1.5) + 2 * MiB  # Parquet ~ the ids' entropy, + labels
    return Need(
        stage="prepare", where="cpu", fill=True, cpus_each=cfg.prepare.cpus_per_task, host_each=DATA_TASK,
        host_first=JSON_OBJECTS * largest, head_host=DATA_ACTORS + records * SUMMARY_ROW,
        storage=shards, storage_kept=shards, storage_peak=shards, notes=(f"{records:,} records",))


def evaluate_need(cfg: PipelineConfig, sizes: ModelSizes) -> Need:
    """One warm pool of replicas serves every benchmark job (the export closes it before it starts)."""
    from components.evaluate.benchmarks import get_benchmark

    ev = cfg.evaluate
    longest = max((get_benchmark(b).max_new_tokens for b in ev.benchmarks), default=128)
    device = replica_bytes(sizes, batch_size=ev.batch_size, max_new_tokens=longest, use_gpu=ev.use_gpu)
    model_dtype = 2 if cfg.finetune.precision == "bf16" else 4
    folder = sizes.total * model_dtype  # the finetuned model as saved, fetched once per node
    host = GENERATOR_PROCESS + (CUDA_HOST + sizes.total * 2 if ev.use_gpu else sum(device.values()))
    return Need(
        stage="evaluate", where="gpu" if ev.use_gpu else "cpu", tasks=ev.num_actors, cpus_each=ev.cpus_per_actor,
        gpus_each=1 if ev.use_gpu else 0, host_each=host,
        gpu_each=sum(device.values()) + CUDA_DEVICE if ev.use_gpu else 0, disk_node=folder,
        storage=len(ev.benchmarks) * MiB, storage_kept=len(ev.benchmarks) * MiB,
        storage_peak=len(ev.benchmarks) * MiB,
        notes=(f"{len(ev.benchmarks)} benchmark jobs share {ev.num_actors} replicas (batch {ev.batch_size}, up to "
               f"{longest} new tokens)",))


def export_need(cfg: PipelineConfig, sizes: ModelSizes) -> Need:
    ex = cfg.export
    use_gpu = bool(getattr(ex, "use_gpu", False))
    saved = 2 if cfg.finetune.precision == "bf16" else 4
    b = export_bytes(sizes, use_gpu=use_gpu, saved_dtype_bytes=saved)
    return Need(
        stage="export", where="gpu" if use_gpu else "cpu", tasks=1, cpus_each=float(getattr(ex, "cpus", 1.0)),
        gpus_each=1 if use_gpu else 0, host_each=TORCH_PROCESS + (CUDA_HOST if use_gpu else 0) + b["host"],
        gpu_each=b["gpu"] + CUDA_DEVICE if use_gpu else 0, disk_first=2 * b["folder"],
        storage=2 * b["folder"], storage_kept=2 * b["folder"], storage_peak=2 * b["folder"],
        notes=("parity in 16-bit on the GPU" if use_gpu else "parity in fp32 on the CPU",))


def synth_need(cfg: PipelineConfig) -> Need:
    from components.synth.world import SCALES

    assert cfg.data.synth is not None
    world = int(SYNTH_TINY_BYTES * SCALES[cfg.data.synth.size])
    on_disk = int(SYNTH_TINY_DISK * SCALES[cfg.data.synth.size])
    return Need(stage="synth", where="head", head_host=world // 4, storage=world, storage_kept=on_disk,
                storage_peak=on_disk, notes=("generated in the driver",))


def largest_candidate(cfg: PipelineConfig) -> tuple[PipelineConfig, str | None]:
    """`cfg` with its `auto` model keys (the sweep's to choose) set to the sweep's candidate with the most
    parameters (the largest connector, the largest resolution): every choice the sweep can make fits what is
    planned for this one. Unchanged, with no note, without `auto`."""
    from pipelines.llava15 import auto_keys, resolve_auto

    if not auto_keys(cfg):
        return cfg, None
    space = cfg.sweep.space
    best: tuple[tuple[int, int], PipelineConfig, str] | None = None
    for connector in space.connector or [None]:
        for res in space.resolution or [None]:
            choice = {"connector": connector, "resolution": res.model_dump(mode="json") if res else None}
            resolved, made = resolve_auto(cfg, choice, source="plan --resources (the sweep's largest candidate)")
            sizes = model_sizes(resolved.model.spec(), resolved.model.tokenizer)
            key = (sizes.total, sizes.image_tokens)
            if best is None or key > best[0]:
                best = key, resolved, ", ".join(f"{k}={v}" for k, v in made.items())
    assert best is not None
    return best[1], f"sized for the sweep's largest candidate ({best[2]})"


def stage_needs(cfg: PipelineConfig) -> list[Need]:
    """Every stage of the config's pipeline, in run order (the evaluate jobs as one pool). The sweep's trials
    are not planned here (their resources are `sweep.resources`)."""
    cfg, sized_for = largest_candidate(cfg)
    sizes = model_sizes(cfg.model.spec(), cfg.model.tokenizer)
    needs = [synth_need(cfg)] if cfg.data.synth is not None else []
    if cfg.evaluate.model is None:
        needs += [prepare_need(cfg, sizes), train_need("pretrain", cfg, sizes), train_need("finetune", cfg, sizes)]
    if cfg.evaluate.benchmarks:
        needs.append(evaluate_need(cfg, sizes))
    if cfg.export.enabled and cfg.evaluate.model is None:
        needs.append(export_need(cfg, sizes))
    if sized_for:
        needs = [replace(n, notes=(*n.notes, sized_for)) if n.stage in ("pretrain", "finetune") else n for n in needs]
    return needs
