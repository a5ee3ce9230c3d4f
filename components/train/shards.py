"""A resume's checkpoint files on a node: each rank fetches the files it reads, and each file once per node.

DeepSpeed writes one set of ZeRO files per data-parallel rank r: `[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt`
(its optimizer state and fp32 master weights, ZeRO-2 and ZeRO-3) and, under ZeRO-3,
`zero_pp_rank_{r}_mp_rank_00_model_states.pt` (its parameter partition). With `elastic_checkpoint` off (DeepSpeed's
default, and the only mode ZeRO-3 has), `load_checkpoint` opens rank r's files only (engine.py
`_get_all_zero_checkpoint_state_dicts` passes None for the others, and the ZeRO optimizers' `load_state_dict` read
the current rank's entry). So a rank needs its own ZeRO files and the shared ones (meta.json, `latest`, ZeRO-2's
`mp_rank_00_model_states.pt`, the RNG files: a few KB each, and their count tells an older checkpoint's world
size), not the whole checkpoint: a node holds only its ranks' shards. Ranks on one node share a folder, so a
shared file is fetched once there (a node lock per file; written aside and renamed, so a copy cut short is never
read). After every rank has loaded, the node's local rank 0 removes the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import torch.distributed as dist

from components.core.node_lock import node_lock

_ZERO_FILE = re.compile(r"(?:^|_)zero_pp_rank_(\d+)_")


def rank_files(rank: int) -> Callable[[str], bool]:
    """Whether rank `rank` reads a checkpoint file (path relative to the checkpoint): all but other ranks' ZeRO
    files."""

    def wanted(rel: str) -> bool:
        m = _ZERO_FILE.search(PurePosixPath(rel).name)
        return m is None or int(m.group(1)) == rank

    return wanted


@contextlib.contextmanager
def fetched(source: str, listing: dict[str, int], wanted: Callable[[str], bool] | None,
            copy: Callable[[str, str], None], local_rank: int) -> Iterator[tuple[str, int]]:
    """(local folder, bytes this process copied): the `wanted` files of `listing` (relative path → size) of the
    checkpoint at `source`, copied by `copy(rel, local_path)`. Collective on exit (a barrier, then the node's
    local rank 0 removes the folder); a block that raises removes the folder at once, without the barrier."""
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "llava-restore" / key
    locks = folder.with_name(f"{key}.locks")
    copied = 0
    for rel in sorted(listing):
        if wanted is not None and not wanted(rel):
            continue
        local = folder / rel
        if local.exists():
            continue
        with node_lock(locks / hashlib.sha256(rel.encode()).hexdigest()):
            if local.exists():  # another rank of this node fetched it while this one waited
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(local.name + ".partial")
            copy(rel, str(partial))
            partial.rename(local)
            copied += listing[rel]
    try:
        yield str(folder), copied
    except BaseException:  # this rank fails, and with it the worker group: nothing to wait for, no disk to hold
        shutil.rmtree(folder, ignore_errors=True)  # (the lock files stay: a waiting rank may still hold one)
        raise
    dist.barrier()  # every rank of the node has loaded its files
    if local_rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(locks, ignore_errors=True)
