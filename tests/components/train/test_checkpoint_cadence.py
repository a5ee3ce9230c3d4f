"""`checkpoint_every_minutes`: the recipe saves by the clock, not only by step count, every rank at the same
step, and a run resumed from a checkpoint the clock triggered continues exactly as the uninterrupted run.

The recipe runs on two ranks under `torchrun` without Ray (LocalRuntime, DeepSpeed on gloo), in fresh processes
per run, with fake clocks in place of `time.monotonic`: rank 0's reads are 12 minutes apart, so with a 30-minute
cadence a save falls due on every third read whatever this machine's speed; rank 1's clock never moves. Rank 0
decides for both (a save is collective: ranks deciding by their own clocks would deadlock in it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

RUN = """
import itertools, json, os, sys
from components.train.recipe import plan, train
from components.train.runtime import LocalRuntime
from pipelines.config import load_config

prepared, out, run_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
reads = itertools.count()
if os.environ["RANK"] == "0":
    clock = lambda: next(reads) * 12 * 60.0  # every read 12 minutes after the previous one
else:
    clock = lambda: 0.0  # never due by this rank's clock
cfg = load_config("tiny", overrides)
rt = LocalRuntime(prepared, "pretrain", run_dir)
job = plan("pretrain", cfg.pretrain, cfg.model.spec(), cfg.seed, prepared=prepared, out=out)
summary = train(job, rt, clock=clock)
if summary is not None:
    print("SUMMARY " + json.dumps(summary["losses"]) + " " + str(summary["resumed_from_step"]))
"""


def _train(world, tmp_path, out, run_dir) -> tuple[str, list[float], str]:
    """(stdout, losses, resumed_from_step) of one pretrain run of 8 steps on two ranks."""
    root, overrides = world
    overrides = [*overrides, "pretrain.num_workers=2", "pretrain.max_steps=8", "pretrain.global_batch=16",
                 "pretrain.per_device_batch=8", "pretrain.threads_per_worker=1", "pretrain.checkpoint_every=4",
                 "pretrain.checkpoint_every_minutes=30"]
    script = tmp_path / "run_recipe.py"
    script.write_text(RUN)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_ADDRESS": "127.0.0.1:1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(root / "prep"), str(out), str(run_dir), json.dumps(overrides)],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    losses, resumed = proc.stdout.split("SUMMARY ")[1].splitlines()[0].rsplit(" ", 1)
    return proc.stdout, json.loads(losses), resumed.strip()


def test_checkpoints_fall_due_by_time_and_resume_exactly(world, tmp_path):
    runs = tmp_path / "runs"
    stdout, losses, resumed_from = _train(world, tmp_path, tmp_path / "full", runs)
    assert resumed_from == "None" and len(losses) == 8
    saves = re.findall(r"\[pretrain\] checkpoint at step (\d+) \(([^)]*)\)", stdout)
    # Reads at the start, after each step and after each save, 12 minutes apart: 36 minutes after the start at
    # step 3 (time); step 4 by the step cadence (which restarts the clock), then 36 minutes later at step 7.
    assert saves == [("3", "30 minutes since the last"), ("4", "every 4 steps"), ("7", "30 minutes since the last"),
                     ("8", "end")]
    assert sorted(p.name for p in runs.iterdir()) == ["checkpoint_000007", "checkpoint_000008"]  # 2 kept
    assert all((runs / name / "COMMITTED").exists() for name in ("checkpoint_000007", "checkpoint_000008"))

    # A failure after step 7: the run resumes from the checkpoint the clock triggered and ends as the
    # uninterrupted one (same losses, same connector).
    resumed_runs = tmp_path / "resumed_runs"
    shutil.copytree(runs / "checkpoint_000007", resumed_runs / "checkpoint_000007")
    stdout, resumed_losses, resumed_from = _train(world, tmp_path, tmp_path / "resumed", resumed_runs)
    assert resumed_from == "7" and "resumed at step 7" in stdout
    assert resumed_losses == losses
    assert ((tmp_path / "resumed" / "connector.safetensors").read_bytes()
            == (tmp_path / "full" / "connector.safetensors").read_bytes())
