"""Resumable training state: DeepSpeed's checkpoint + meta.json + per-rank RNG, saved through the runtime.

Our own files hold no pickles (RNG as safetensors, meta as JSON). DeepSpeed's checkpoint loader does unpickle
its own files, so the checkpoint storage must be writable only by the pipeline (see cluster/README.md).

Every rank writes its own ZeRO shard and RNG file into a scratch folder on its node, rank 0 adds meta.json
(step, data position, losses so far), and every rank hands it to the runtime (`runtime.py`: Ray Train merges the
folders into one checkpoint in run storage; without Ray each rank writes into the step's folder); the scratch
folder is removed once the runtime has committed it. A resume fetches only the rank's own shards and the shared
files (shards.py). Frozen parameters are left out (they are rebuilt from the model config on resume), so a
pretraining checkpoint holds the connector and its optimizer state, not the LLM.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .shards import rank_files

if TYPE_CHECKING:
    from .runtime import Runtime

META = "meta.json"


class CheckpointMismatch(RuntimeError):
    """The run's checkpoint cannot be resumed by this run as configured (the message says what to change)."""


class CheckpointDiskFull(OSError):
    """A local folder a checkpoint is written to has too little space (the message names stage, path, bytes)."""


def lower_bound_bytes(engine: Any, world: int) -> int:
    """Bytes this rank's checkpoint takes at least: Adam's fp32 master copy and two moments of its share of the
    trainable parameters (ZeRO partitions them; under ZeRO-3 a parameter's own numel is 0, `ds_numel` is its
    size). The real checkpoint adds the module's weights and small files; once one is written, its size is used."""
    n = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad)
    return 12 * n // max(1, world)


def folder_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _is_disk_full(e: BaseException, folder: str, needed: int) -> bool:
    """ENOSPC anywhere in the chain, or a failed write on a folder with less room left than the checkpoint needs
    (torch.save reports a full disk as a RuntimeError without errno: "unexpected pos", "iostream error")."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return shutil.disk_usage(folder).free < needed


def _disk_full(stage: str, step: int, folder: str, needed: int, what: str) -> CheckpointDiskFull:
    free = shutil.disk_usage(folder).free
    return CheckpointDiskFull(  # one argument: the message reads as it is, without "[Errno 28]" before it
        f"{stage}: no space for the checkpoint at step {step} in {folder}: {what} {needed:,} bytes, "
        f"{free:,} free. Free space there, point TMPDIR (the scratch folder) or the run storage at a larger "
        f"disk, or lower keep_checkpoints; a rerun resumes from the last checkpoint")


def ensure_space(stage: str, step: int, folder: str | None, needed: int, what: str) -> None:
    """Raise CheckpointDiskFull before writing when the local `folder` (None: remote storage) has less free
    space than `needed` bytes."""
    if folder is not None and os.path.isdir(folder) and shutil.disk_usage(folder).free < needed:
        raise _disk_full(stage, step, folder, needed, what)


def rng_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rng_rank{rank}.safetensors"


def save_rng_state(path: Path) -> None:
    """This process's torch (and CUDA) RNG state as safetensors: plain tensors, nothing to unpickle on load."""
    from safetensors.torch import save_file

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    save_file(state, str(path))


def load_rng_state(path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine: Any, meta: dict[str, Any], metrics: dict[str, float], rt: Runtime, expected_bytes: int = 0) -> int:
    """Collective: every rank must call it at the same step. The local copy is gone when it returns: `rt.save`
    returns once the files are in run storage (Ray Train's report uploads synchronously). Returns the bytes this
    rank wrote (pass them as `expected_bytes` next time: the space check then knows the real size).

    A local folder too small for the checkpoint (the scratch folder, or run storage on a local disk) fails with
    CheckpointDiskFull naming the stage, the folder and the bytes needed: before writing when the shortfall is
    known, else at the failed write. The rank that fails ends the attempt (the runtime stops the others)."""
    stage, step = meta["stage"], meta["step"]
    needed = expected_bytes or lower_bound_bytes(engine, rt.world)
    scratch = tempfile.gettempdir()
    ensure_space(stage, step, scratch, needed,
                 "this rank's share needs" if expected_bytes else "this rank's share needs at least")
    with tempfile.TemporaryDirectory(prefix="llava-ckpt-") as tmp:
        tag = f"step_{step}"
        try:
            engine.save_checkpoint(tmp, tag=tag, exclude_frozen_parameters=True)
            save_rng_state(rng_file(tmp, rt.rank))
            if rt.rank == 0:
                (Path(tmp) / META).write_text(json.dumps({**meta, "tag": tag}, indent=2))
        except (OSError, RuntimeError) as e:
            if _is_disk_full(e, tmp, needed):
                raise _disk_full(stage, step, scratch, max(needed, folder_bytes(tmp) + 1),
                                 "this rank's share needs more than") from e
            raise
        written = folder_bytes(tmp)
        ensure_space(stage, step, rt.checkpoint_dir(), written, "this rank's share needs")
        dist.barrier()  # all shards on disk before any rank uploads
        try:
            rt.save(tmp, metrics)
        except OSError as e:
            if _is_disk_full(e, rt.checkpoint_dir() or tmp, written):
                raise _disk_full(stage, step, rt.checkpoint_dir() or tmp, written, "this rank's share needs") from e
            raise
    return written


def restore(engine: Any, rt: Runtime, stage: str) -> dict[str, Any] | None:
    """Load the run's latest checkpoint into the engine (module, optimizer, schedule, RNG); its meta, or None.

    A checkpoint of another stage (the sweep trains pretrain then finetune in one run) is not resumed from.
    Collective. Each rank fetches only the files it loads, unless the DeepSpeed config asks for ZeRO-2's
    `elastic_checkpoint` (then every rank reads every rank's optimizer files).
    """
    wanted = None if engine.zero_elastic_checkpoint() else rank_files(rt.rank)
    with rt.latest_checkpoint(wanted) as folder:
        if folder is None:
            return None
        meta = json.loads((Path(folder) / META).read_text())
        if meta.get("stage", stage) != stage:
            return None
        # Every rank saves its RNG file: an older checkpoint without world_size in its meta says so by their count.
        saved = meta.get("world_size") or len(list(Path(folder).glob("rng_rank*.safetensors")))
        if saved != rt.world:  # ZeRO partitions optimizer state per rank: another world cannot load it as is
            raise CheckpointMismatch(
                f"{stage}: the checkpoint at step {meta['step']} was written by {saved} workers, and this run "
                f"has {rt.world}; ZeRO keeps one optimizer shard per worker. Set {stage}.num_workers={saved} to "
                f"resume from it, or rerun with --force {stage} to start {stage} over on {rt.world} workers")
        # Frozen weights are not in the checkpoint (see module docstring), hence not strict.
        load_path, _ = engine.load_checkpoint(folder, tag=meta["tag"], load_module_strict=False)
        if load_path is None:
            raise RuntimeError(f"{folder}: DeepSpeed found no checkpoint under tag {meta['tag']!r}")
        load_rng_state(rng_file(folder, rt.rank))
    return meta
