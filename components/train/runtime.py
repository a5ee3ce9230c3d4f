"""Where the recipe runs: rank, world size, checkpoints, metric reports and the per-rank batch stream.

Two implementations of one small interface:
- `RayRuntime`: inside a Ray Train worker. Checkpoints go through `ray.train.report` / `get_checkpoint` (each
  worker uploads its own files from its node, Ray merges them into one folder and keeps the run's snapshot),
  batches come from a Ray Data pipeline over the rows the driver put in the object store, and a report without
  a checkpoint reaches Ray Tune (the sweep).
- `LocalRuntime`: under `torchrun` or as one plain process, no Ray. Checkpoints are folders
  `{run_dir}/checkpoint_{step:06d}` (local or s3://) that every rank writes into, committed by rank 0's
  marker file; batches are read from the prepared Parquet with pyarrow and shaped in a background thread.
A resume from remote storage fetches on each node only the files its ranks read (shards.py).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from components.core import storage

from .data import ROW_COLUMNS, read_shards, worker_batches
from .pixels import PixelLoader
from .shards import fetched

Mode = Literal["pad", "square"]


class StopRequested(Exception):
    """Raised by the recipe on every rank when `Runtime.should_stop` said so (rank 0 asked, all were told)."""


class Runtime(Protocol):
    rank: int
    world: int
    fetched_bytes: int  # bytes this rank copied from storage for its last `latest_checkpoint`

    def latest_checkpoint(
        self, wanted: Callable[[str], bool] | None = None
    ) -> contextlib.AbstractContextManager[str | None]:
        """Collective: a local folder holding the run's newest checkpoint (None: a fresh run), with at least the
        files `wanted` accepts (paths relative to the checkpoint; None: all of them)."""

    def save(self, folder: str, metrics: dict[str, Any]) -> None:
        """Collective: commit this rank's files in `folder` as the run's newest checkpoint, with metrics."""

    def checkpoint_dir(self) -> str | None:
        """The local folder checkpoints are committed under (its free space is checked before a save); None when
        run storage is remote."""

    def report(self, metrics: dict[str, Any]) -> None:
        """Collective: metrics without a checkpoint (under Ray Tune they reach the trial's scheduler)."""

    def batches(self, indices: np.ndarray, *, batch_size: int, mode: Mode, size: int) -> Iterator[pa.Table]:
        """This rank's micro-batches of `indices` (row numbers), in order, with uint8 pixels."""

    def should_stop(self) -> bool:
        """Rank 0 asks whether the run was told to end early (the sweep's ASHA decision)."""

    def wait_until_saved(self) -> bool:
        """Block until the last saved checkpoint is durable (fault-injection tests kill a worker after it)."""


class RayRuntime:
    """Inside a Ray Train worker; `table_ref` is the object-store ref of the stage's token table."""

    def __init__(self, table_ref: Any, stop_file: str | None = None) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.table_ref = table_ref
        self.stop_file = stop_file
        self._checked = 0.0
        self.fetched_bytes = 0

    @contextlib.contextmanager
    def latest_checkpoint(self, wanted: Callable[[str], bool] | None = None) -> Iterator[str | None]:
        import pyarrow.fs as pafs
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
        if isinstance(fs, pafs.LocalFileSystem):  # read in place (Checkpoint.as_directory does the same)
            yield root
            return
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        listing = {posixpath.relpath(i.path, root): i.size for i in infos if i.type == pafs.FileType.File}

        def copy(rel: str, local: str) -> None:
            pafs.copy_files(posixpath.join(root, rel), local, source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())

        with fetched(f"{fs.type_name}://{root}", listing, wanted, copy, self.local_rank) as (folder, n):
            self.fetched_bytes = n
            yield folder

    def save(self, folder: str, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def checkpoint_dir(self) -> str | None:
        import pyarrow.fs as pafs
        import ray.train

        storage_ctx = ray.train.get_context().get_storage()
        if not isinstance(storage_ctx.storage_filesystem, pafs.LocalFileSystem):
            return None
        folder = storage_ctx.experiment_fs_path
        return folder if os.path.isdir(folder) else storage_ctx.storage_fs_path

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)

    def batches(self, indices: np.ndarray, *, batch_size: int, mode: Mode, size: int) -> Iterator[pa.Table]:
        return iter(worker_batches(self.table_ref, indices, batch_size=batch_size, mode=mode, size=size))

    def should_stop(self) -> bool:
        if self.stop_file is None or time.monotonic() - self._checked < 2.0:  # one storage request per 2 s
            return False
        self._checked = time.monotonic()
        return storage.exists(self.stop_file)

    def wait_until_saved(self, timeout_s: float = 120.0) -> bool:
        """True once Ray Train's controller has registered a reported checkpoint (its snapshot file names one).

        The controller polls workers every few seconds, so a checkpoint reported just before a worker dies may
        never be registered; fault-injection tests call this before killing a worker so the resume is certain.
        """
        import json

        import ray.train

        storage_ctx = ray.train.get_context().get_storage()
        fs, path = storage_ctx.storage_filesystem, storage_ctx.checkpoint_manager_snapshot_path
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with fs.open_input_stream(path) as f:
                    if json.loads(f.read()).get("latest_checkpoint_result"):
                        return True
            except (FileNotFoundError, OSError, ValueError):
                pass  # not written yet, or caught mid-write
            time.sleep(0.5)
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRuntime:
    """Under torchrun (RANK, WORLD_SIZE, MASTER_ADDR/PORT set) or one process (rank 0 of 1), without Ray.

    Starts the torch process group (gloo on CPU, nccl on GPU) if nobody has; DeepSpeed then reuses it.
    """

    KEEP = 2  # newest checkpoints kept, as the Ray path's CheckpointConfig(num_to_keep=2)

    def __init__(self, prepared: str, stage: str, run_dir: str, *, use_gpu: bool = False) -> None:
        if not dist.is_initialized():
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
            if use_gpu:
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            dist.init_process_group("nccl" if use_gpu else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.prepared, self.stage, self.run_dir = prepared, stage, run_dir
        self._table: pa.Table | None = None
        self.fetched_bytes = 0

    def _committed(self) -> list[str]:
        fs, inner = storage.filesystem(self.run_dir)
        if not fs.exists(inner):
            return []
        folders = sorted(p for p in fs.ls(inner, detail=False) if posixpath.basename(p).startswith("checkpoint_"))
        return [p for p in folders if fs.exists(posixpath.join(p, "COMMITTED"))]

    @contextlib.contextmanager
    def latest_checkpoint(self, wanted: Callable[[str], bool] | None = None) -> Iterator[str | None]:
        committed = self._committed()
        if not committed:
            yield None
            return
        if not storage.is_remote(self.run_dir):
            yield committed[-1]
            return
        fs, _ = storage.filesystem(self.run_dir)
        root = committed[-1].rstrip("/")
        listing = {posixpath.relpath(path, root): int(info.get("size") or 0)
                   for path, info in fs.find(root, detail=True).items() if info.get("type", "file") == "file"}
        with fetched(storage.join(self.run_dir, posixpath.basename(root)), listing, wanted,
                     lambda rel, local: fs.get_file(posixpath.join(root, rel), local), self.local_rank) as (folder, n):
            self.fetched_bytes = n
            yield folder

    def save(self, folder: str, metrics: dict[str, Any]) -> None:
        dest = storage.join(self.run_dir, f"checkpoint_{int(metrics['step']):06d}")  # same step on every rank
        storage.upload_dir(folder, dest)  # each rank adds its own shard files
        dist.barrier()
        if self.rank == 0:
            storage.write_json(storage.join(dest, "COMMITTED"), metrics)  # written last: the folder is whole
            fs, _ = storage.filesystem(self.run_dir)
            for old in self._committed()[: -self.KEEP]:
                fs.rm(old, recursive=True)
        dist.barrier()

    def checkpoint_dir(self) -> str | None:
        if storage.is_remote(self.run_dir):
            return None
        os.makedirs(self.run_dir, exist_ok=True)
        return self.run_dir

    def report(self, metrics: dict[str, Any]) -> None:
        dist.barrier()  # a report is collective on the Ray path too

    def batches(self, indices: np.ndarray, *, batch_size: int, mode: Mode, size: int) -> Iterator[pa.Table]:
        if len(indices) % batch_size:
            raise ValueError(f"{len(indices)} rows is not a whole number of micro-batches of {batch_size}")
        if self._table is None:
            self._table = read_shards(self.prepared, self.stage, ROW_COLUMNS)
        table, pixels = self._table, PixelLoader(mode, size)
        chunks = indices.reshape(-1, batch_size)

        def load(rows: np.ndarray) -> pa.Table:
            return pixels(table.take(pa.array(rows)))

        # Images decode in one thread while the step runs; two micro-batches ahead at most.
        with ThreadPoolExecutor(1) as pool:
            ahead = deque(pool.submit(load, c) for c in chunks[:2])
            for nxt in range(2, len(chunks) + 2):
                if nxt < len(chunks):
                    ahead.append(pool.submit(load, chunks[nxt]))
                yield ahead.popleft().result()

    def should_stop(self) -> bool:
        return False

    def wait_until_saved(self) -> bool:
        return True  # save() returns once the checkpoint is committed
