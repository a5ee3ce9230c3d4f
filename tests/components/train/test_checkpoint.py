"""Our checkpoint files hold no pickles: the RNG state round-trips through safetensors. A checkpoint written at
another world size is refused with what to do about it."""

import contextlib
import json

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

    def __init__(self):
        self.loaded = []

    def load_checkpoint(self, folder, tag, load_module_strict):
        self.loaded.append((folder, tag, load_module_strict))
        return folder, {}


class _Runtime:
    def __init__(self, folder, world, rank=0):
        self.folder, self.world, self.rank = folder, world, rank

    @contextlib.contextmanager
    def latest_checkpoint(self):
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
