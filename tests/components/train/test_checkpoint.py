"""Our checkpoint files hold no pickles: the RNG state round-trips through safetensors. A checkpoint written at
another world size is refused with what to do about it. A resuming rank asks only for the files it loads."""

import contextlib
import json
from pathlib import Path

import pytest
import torch

from components.train.checkpoint import (
    META,
    CheckpointMismatch,
    load_rng_state,
    restore,
    rng_file,
    save_rng_state,
)
from components.train.shards import rank_files


def test_rng_state_round_trips_without_pickle(tmp_path):
    path = rng_file(tmp_path, 3)
    torch.manual_seed(7)
    save_rng_state(path)
    expected = torch.rand(5)
    torch.rand(100)  # move the generator on
    load_rng_state(path)
    assert torch.equal(torch.rand(5), expected)
    assert path.name == "rng_rank3.safetensors"
    # A safetensors file: an 8-byte header length, then a JSON header; no pickle opcodes anywhere.
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and b"\x80\x02" not in raw[:16]


class _Engine:
    """Records what DeepSpeed would be asked to load."""

    def __init__(self, elastic=False):
        self.loaded, self.elastic = [], elastic

    def zero_elastic_checkpoint(self):
        return self.elastic

    def load_checkpoint(self, folder, tag, load_module_strict):
        self.loaded.append((folder, tag, load_module_strict))
        return folder, {}


class _Runtime:
    def __init__(self, folder, world, rank=0):
        self.folder, self.world, self.rank = folder, world, rank
        self.asked = []

    @contextlib.contextmanager
    def latest_checkpoint(self, wanted=None):
        self.asked.append(wanted)
        yield self.folder


def test_restore_refuses_a_checkpoint_of_another_world_size(tmp_path):
    """ZeRO keeps one optimizer shard per worker: a checkpoint written by 2 workers cannot be loaded by 1.
    The error says what to change (num_workers back, or start the stage over), before DeepSpeed is asked."""
    meta = {"stage": "finetune", "step": 5, "world_size": 2, "tag": "step_5"}
    (tmp_path / META).write_text(json.dumps(meta))
    for rank in (0, 1):  # every rank saves its RNG state
        save_rng_state(rng_file(tmp_path, rank))
    engine = _Engine()
    with pytest.raises(CheckpointMismatch) as e:
        restore(engine, _Runtime(str(tmp_path), world=1), "finetune")
    msg = str(e.value)
    assert "step 5" in msg and "2 workers" in msg and "has 1" in msg
    assert "finetune.num_workers=2" in msg and "--force finetune" in msg
    assert engine.loaded == []
    # The same checkpoint at its own world size resumes; another stage's checkpoint is not resumed from.
    assert restore(engine, _Runtime(str(tmp_path), world=2), "finetune") == meta
    assert engine.loaded == [(str(tmp_path), "step_5", False)]
    assert restore(_Engine(), _Runtime(str(tmp_path), world=1), "pretrain") is None
    assert restore(_Engine(), _Runtime(None, world=1), "finetune") is None
    # A checkpoint from before world_size was recorded: its ranks' RNG files say it.
    (tmp_path / META).write_text(json.dumps({k: v for k, v in meta.items() if k != "world_size"}))
    with pytest.raises(CheckpointMismatch, match="written by 2 workers"):
        restore(_Engine(), _Runtime(str(tmp_path), world=1), "finetune")


ZERO2 = ["meta.json", "rng_rank0.safetensors", "rng_rank1.safetensors", "step_4/mp_rank_00_model_states.pt",
         "step_4/zero_pp_rank_0_mp_rank_00_optim_states.pt", "step_4/zero_pp_rank_1_mp_rank_00_optim_states.pt",
         "latest", "zero_to_fp32.py"]
ZERO3_BF16 = ["meta.json", "rng_rank0.safetensors", "rng_rank1.safetensors", "rng_rank12.safetensors",
              "step_4/zero_pp_rank_1_mp_rank_00_model_states.pt", "step_4/zero_pp_rank_12_mp_rank_00_model_states.pt",
              "step_4/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
              "step_4/bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt"]


def test_a_rank_fetches_its_own_zero_files_and_the_shared_ones():
    """DeepSpeed's per-rank files (ZeRO-2 optimizer shards; ZeRO-3 optimizer and parameter shards, bf16 or not):
    rank r keeps only its own; shared files (ZeRO-2's module states, meta, RNG, latest) go to every rank."""
    assert [f for f in ZERO2 if rank_files(1)(f)] == [
        "meta.json", "rng_rank0.safetensors", "rng_rank1.safetensors", "step_4/mp_rank_00_model_states.pt",
        "step_4/zero_pp_rank_1_mp_rank_00_optim_states.pt", "latest", "zero_to_fp32.py"]
    assert [f for f in ZERO3_BF16 if rank_files(1)(f)] == [
        "meta.json", "rng_rank0.safetensors", "rng_rank1.safetensors", "rng_rank12.safetensors",
        "step_4/zero_pp_rank_1_mp_rank_00_model_states.pt", "step_4/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert [f for f in ZERO3_BF16 if "zero_pp" in f and rank_files(12)(f)] == [
        "step_4/zero_pp_rank_12_mp_rank_00_model_states.pt", "step_4/bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt"]


def test_restore_asks_for_the_ranks_files_unless_zero2_is_elastic(tmp_path):
    """ZeRO-2's `elastic_checkpoint` makes every rank read every rank's optimizer files: then all are fetched."""
    (tmp_path / META).write_text(json.dumps({"stage": "finetune", "step": 4, "world_size": 2, "tag": "step_4"}))
    save_rng_state(rng_file(tmp_path, 1))
    rt = _Runtime(str(tmp_path), world=2, rank=1)
    restore(_Engine(), rt, "finetune")
    assert [f for f in ZERO2 if rt.asked[-1](f)] == [f for f in ZERO2 if "rank_0_" not in f]
    restore(_Engine(elastic=True), rt, "finetune")
    assert rt.asked[-1] is None


def test_ray_runtime_fetches_only_the_ranks_files_from_s3(s3_server, monkeypatch):
    """The Ray Train side of a resume from S3 (Ray hands the worker a `Checkpoint` on the run's pyarrow
    filesystem): rank 1 copies its own ZeRO file and the shared ones, and the local copy is gone afterwards."""
    import boto3
    import ray.train
    import torch.distributed as dist

    from components.core import storage
    from components.train.runtime import RayRuntime, free_port

    body = {name: bytes(100 + i) for i, name in enumerate(ZERO2)}
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="ray-resume")
    for name, data in body.items():
        s3.put_object(Bucket="ray-resume", Key=f"run/checkpoint_1/{name}", Body=data)
    fs, inner = storage.pyarrow_filesystem("s3://ray-resume/run/checkpoint_1")
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(inner, filesystem=fs))
    rt = object.__new__(RayRuntime)  # outside a Ray Train worker: the context its __init__ reads is not there
    rt.rank, rt.world, rt.local_rank, rt.fetched_bytes = 1, 2, 0, 0
    started = not dist.is_initialized()
    if started:  # the copy ends in a barrier of the run's ranks: here one process
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with rt.latest_checkpoint(rank_files(1)) as folder:
            got = {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}
    finally:
        if started:
            dist.destroy_process_group()
    wanted = [name for name in ZERO2 if "rank_0_" not in name]
    assert got == {name: body[name] for name in wanted}
    assert rt.fetched_bytes == sum(len(body[name]) for name in wanted)
    assert not Path(folder).exists()
