"""The recipe without Ray: `torchrun --nproc_per_node 2 -m components.train.recipe` on CPU (DeepSpeed on gloo).

The ranks get a Ray address nobody listens on, so any use of Ray would fail the run. A first launch stops at
step 2 of 3 (a segment, with its checkpoint); a second launch resumes from that checkpoint and finishes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _torchrun(root, out, *args):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_ADDRESS": "127.0.0.1:1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "components.train.recipe", "pretrain", "--config", "tiny", "--prepared", str(root / "prep"),
           "--out", str(out), "--set", "pretrain.max_steps=3", "--set", "pretrain.global_batch=16",
           "--set", "pretrain.per_device_batch=8", "--set", "pretrain.threads_per_worker=1", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def test_two_ranks_train_resume_and_write_outputs_without_ray(world, tmp_path):
    root, _ = world
    out = tmp_path / "pretrain"
    first = _torchrun(root, out, "--stop-at-step", "2")
    assert "[pretrain] step 2/3" in first and "step 3/3" not in first
    assert (out / "checkpoints" / "checkpoint_000002" / "COMMITTED").exists()

    _torchrun(root, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 2
    assert summary["steps"] == 3 and summary["samples"] == 3 * 16
    assert summary["resumed"] is True and summary["resumed_from_step"] == 2
    assert all(math.isfinite(x) for x in summary["losses"])
    assert (out / "connector.safetensors").stat().st_size > 0


def test_compile_llm_trains_as_eager(world, tmp_path):
    """`pretrain.compile_llm=true` reaches the recipe: the same two steps, eager and with the language model
    compiled (inductor), give the same losses (1e-4 relative: inductor may reorder float32 sums)."""
    root, _ = world
    eager = _torchrun(root, tmp_path / "eager", "--set", "pretrain.max_steps=2")
    compiled = _torchrun(root, tmp_path / "compiled", "--set", "pretrain.max_steps=2",
                         "--set", "pretrain.compile_llm=true")
    losses = [json.loads((tmp_path / out / "summary.json").read_text())["losses"] for out in ("eager", "compiled")]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert "language model compiled" in compiled and "language model compiled" not in eager
