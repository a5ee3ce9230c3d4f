"""Training data: the prepared shards, read once by the driver, streamed to each worker through Ray Data.

The driver reads the token columns of a stage's shards into one Arrow table and puts it in the object store
(workers and Ray Data tasks map it zero-copy). Each worker turns its stream positions (`rank_positions`) into
a Ray Data pipeline of one block per micro-batch; CPU tasks take the rows, decode and transform the images
(PixelLoader) and ship uint8 pixels, and the worker iterates the micro-batches in order. A resumed worker
simply starts at a later position: nothing is replayed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.core import storage

from .pixels import PixelLoader

ROW_COLUMNS = ["id", "image", "input_ids", "labels"]


def shard_files(prepared: str, stage: str) -> list[str]:
    """The stage's shard files under the prepare output, sorted (a fixed row order)."""
    root = storage.join(prepared, stage, "shards")
    fs, inner = storage.filesystem(root)
    if not fs.exists(inner):
        raise FileNotFoundError(f"{root}: no prepared shards (run the prepare stage first, or check `prepared`)")
    files = sorted(p for p in fs.find(inner) if p.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: holds no .parquet shards")
    return files


def read_shards(prepared: str, stage: str, columns: list[str]) -> pa.Table:
    """The given columns of all the stage's shards, in shard order."""
    root = storage.join(prepared, stage, "shards")
    fs, _ = storage.filesystem(root)
    tables = []
    for path in shard_files(prepared, stage):
        try:
            tables.append(pq.read_table(path, columns=columns, filesystem=fs))
        except (KeyError, pa.ArrowInvalid) as e:
            raise ValueError(f"{path}: cannot read columns {columns} of a prepared shard: {e}") from None
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise ValueError(f"{root}: the prepared {stage} dataset has no rows")
    return table


def grouping_inputs(prepared: str, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, has_image) per row: the reference's modality length magnitude and the image flag."""
    table = read_shards(prepared, stage, ["modality_length", "image"])
    lengths = np.abs(table.column("modality_length").to_numpy()).astype(np.int64)
    has_image = np.asarray([bool(x) for x in table.column("image").to_pylist()])
    return lengths, has_image


class RowLoader:
    """Ray Data map function: micro-batch numbers → their rows with uint8 pixels (order kept)."""

    def __init__(self, table_ref: Any, indices: np.ndarray, mode: Literal["pad", "square"], size: int) -> None:
        self.table_ref = [table_ref]  # in a list, so Ray never resolves it on our behalf
        self.indices = indices  # (micro-batches, batch) row numbers into the table
        self.pixels = PixelLoader(mode, size)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import ray

        table = ray.get(self.table_ref[0])
        rows = table.take(pa.array(self.indices[batch["id"]].reshape(-1)))
        return self.pixels(rows)


def worker_batches(
    table_ref: Any, indices: np.ndarray, *, batch_size: int, mode: Literal["pad", "square"], size: int,
    prefetch: int = 2,
) -> Iterator[pa.Table]:
    """The micro-batches of `indices` (row numbers, a multiple of batch_size), in order, pixels loaded."""
    import ray

    if len(indices) % batch_size:
        raise ValueError(f"{len(indices)} rows is not a whole number of micro-batches of {batch_size}")
    micro = len(indices) // batch_size
    if micro == 0:
        return iter(())
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # micro-batch k must arrive k-th
    ctx.enable_progress_bars = False  # one bar per worker would drown the step lines
    ds = ray.data.range(micro, override_num_blocks=micro).map_batches(
        RowLoader(table_ref, indices.reshape(micro, batch_size), mode, size), batch_format="numpy",
        batch_size=None)
    return ds.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=prefetch)
