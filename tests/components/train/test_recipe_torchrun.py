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


@pytest.mark.parametrize("zero", [2, 3])
def test_a_resume_from_s3_fetches_each_ranks_own_shards(zero, world, s3_server, tmp_path):
    """Two ranks with the checkpoints in S3, ZeRO-2 (per-rank optimizer shards) and ZeRO-3 (per-rank optimizer
    and parameter shards): DeepSpeed's own `load_checkpoint` resumes on each rank from its own shards and the
    shared files only (each file fetched once on this one node), and the run continues as the uninterrupted one."""
    import re

    import s3fs

    root, _ = world
    ds = ("--set", f"pretrain.deepspeed=deepspeed/zero{zero}.json")
    s3 = s3fs.S3FileSystem()
    bucket = f"torchrun-zero{zero}"
    s3.mkdir(bucket)
    _torchrun(root, tmp_path / "full", *ds)
    out, run_dir = tmp_path / "segments", f"s3://{bucket}/pretrain"
    _torchrun(root, out, "--run-dir", run_dir, "--stop-at-step", "2", *ds)
    resumed = _torchrun(root, out, "--run-dir", run_dir, *ds)
    summary = json.loads((out / "summary.json").read_text())
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["zero_stage"] == zero and summary["resumed_from_step"] == 2
    assert summary["losses"] == full["losses"]

    files = {path: info["size"] for path, info in s3.find(f"{bucket}/pretrain/checkpoint_000002", detail=True).items()}
    own = [sum(size for path, size in files.items() if re.search(rf"zero_pp_rank_{r}_", path)) for r in (0, 1)]
    shared, fetched = sum(files.values()) - sum(own), summary["resume_fetched_bytes"]
    assert min(own) > 0 and shared > 0
    assert all(own[r] <= fetched[r] <= own[r] + shared for r in (0, 1))  # never the other rank's shard
    assert sum(fetched) == sum(files.values())  # both ranks on one node: every file once
    assert "resumed at step 2 (fetched per rank: " in resumed
    print(f"ZeRO-{zero}: checkpoint {sum(files.values())} B, own shards {own} B, shared {shared} B, "
          f"fetched per rank {fetched} B")
