"""A checkpoint folder without room: the save fails with an error naming the stage, the folder and the bytes
needed, before writing when the shortfall is known and at the failed write otherwise, never with a bare
ENOSPC from deep inside torch.save. A real DeepSpeed engine (one gloo rank, this process) saves into a real
tmpfs mounted small (mounting needs root, as on this project's CI machines)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from components.train.checkpoint import CheckpointDiskFull, lower_bound_bytes, save
from components.train.runtime import LocalRuntime

from .conftest import CFG

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(bytes) -> a folder on a tmpfs of that size (unmounted at teardown)."""
    mounted = []

    def mount(size: int):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)  # a failed write's traceback may hold a file open


@pytest.fixture(scope="module")
def engine_and_runtime(tokenizer, tmp_path_factory):
    """A DeepSpeed ZeRO-2 engine over the tiny model (all of it trained, fp32) on one gloo rank."""
    import deepspeed
    import torch.distributed as dist

    from components.models.assembly import build_model

    root = tmp_path_factory.mktemp("diskfull")
    with pytest.MonkeyPatch.context() as env:
        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.delenv(k, raising=False)
        rt = LocalRuntime(str(root / "prep"), "finetune", str(root / "run"))
        model = build_model(CFG, tokenizer, dtype=torch.float32, seed=1).train()
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
            config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}})
        engine.backward(sum(p.float().pow(2).sum() for p in engine.module.parameters()) * 1e-6)
        engine.step()  # Adam's moments exist from the first step on
        yield engine, rt, root
        dist.destroy_process_group()
        # DeepSpeed keeps a clone of the world group it made; a later test's fresh group must not meet it.
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None


def _meta(step: int) -> dict:
    return {"stage": "finetune", "step": step, "world_size": 1}


def test_a_checkpoint_too_large_for_the_scratch_folder_is_refused_before_writing(
        engine_and_runtime, small_disk, monkeypatch):
    engine, rt, _ = engine_and_runtime
    needed = lower_bound_bytes(engine, rt.world)
    disk = small_disk(needed // 2)
    monkeypatch.setattr("tempfile.tempdir", str(disk))
    with pytest.raises(CheckpointDiskFull) as e:
        save(engine, _meta(3), {"step": 3}, rt)
    msg = str(e.value)
    assert msg.startswith("finetune: no space for the checkpoint at step 3 in ") and str(disk) in msg
    assert f"needs at least {needed:,} bytes" in msg and "free" in msg
    assert not any(disk.iterdir())  # nothing half-written


def test_a_write_that_runs_out_of_space_names_the_folder_and_size(engine_and_runtime, small_disk, monkeypatch):
    engine, rt, root = engine_and_runtime
    written = save(engine, _meta(1), {"step": 1}, rt)  # roomy disk: the real size
    lower = lower_bound_bytes(engine, rt.world)
    assert written > lower
    disk = small_disk((lower + written) // 2)  # passes the check before writing, then fills up
    monkeypatch.setattr("tempfile.tempdir", str(disk))
    with pytest.raises(CheckpointDiskFull) as e:
        save(engine, _meta(2), {"step": 2}, rt)
    msg = str(e.value)
    assert msg.startswith("finetune: no space for the checkpoint at step 2 in ") and str(disk) in msg
    assert "this rank's share needs more than" in msg
    assert not any(disk.iterdir())  # the scratch folder was removed

    # with the real size known, the next save is refused before writing
    with pytest.raises(CheckpointDiskFull, match=f"needs {written:,} bytes"):
        save(engine, _meta(2), {"step": 2}, rt, expected_bytes=written)
    assert (root / "run" / "checkpoint_000001" / "COMMITTED").exists()  # the good checkpoint stays
