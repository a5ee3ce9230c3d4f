"""The front door: `llava-pipeline run` as a user types it, from a fresh empty directory with the default's relative
storage root, through the installed console script (not in-process), stdout parsed whole as JSON.

The suite runs it on the micro world with few steps; `.ci/run` runs README's Quick start verbatim (set-up in a
fresh venv, then the real default run from an empty directory, with the learning check).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["data.synth.size=micro", "pretrain.max_steps=2", "finetune.max_steps=2", "evaluate.benchmarks=[gqa,mmvet]",
         "evaluate.limit=8", "evaluate.parity_sample=0", "export.parity_sample=2"]


def _cli() -> str:
    """The console script installed next to this interpreter (what `llava-pipeline` means in the venv)."""
    path = Path(sys.executable).parent / "llava-pipeline"
    return str(path) if path.exists() else shutil.which("llava-pipeline") or "llava-pipeline"


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "LLAVA_JUDGE"))}
    sets = [x for s in SMALL for x in ("--set", s)]
    return subprocess.run([_cli(), "run", *args, *sets], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.e2e
def test_default_run_from_an_empty_directory_with_a_relative_storage_root(tmp_path):
    here = tmp_path / "empty"
    here.mkdir()
    first = _run(here, "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)  # stdout is exactly one JSON object: nothing else printed there
    stages = summary["stages"]
    root = here / "runs" / "tiny"  # the default `storage: ./runs/{name}`, relative to where we typed
    assert all(s["status"] in ("ran", "skipped") for s in stages.values()), stages
    assert stages["evaluate.mmvet"]["status"] == "skipped"  # judged, and no judge configured
    assert stages["export"]["metrics"]["parity_ok"] is True
    assert all(Path(p).is_dir() and Path(p).is_relative_to(root) for p in summary["outputs"].values())
    log = Path(summary["log"])
    assert log.parent == root / "logs" and log.stat().st_size > 0  # library output went here, not to stdout
    # The stage lines went to stderr, one start and one end per stage that ran.
    assert sum(" started " in line for line in first.stderr.splitlines()) == len(stages)

    # The same config spelled with an absolute storage root from another directory: every stage is cached.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = _run(elsewhere, "--json", "--set", f"storage={here}/runs/../runs/tiny")
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads(again.stdout)["stages"]
    assert {k: v["status"] for k, v in rerun.items()} == {k: "skipped" if k == "evaluate.mmvet" else "cached"
                                                          for k in stages}
    assert {k: v["fingerprint"] for k, v in rerun.items()} == {k: v["fingerprint"] for k, v in stages.items()}

    # Without --json a person sees the stage table and where the log and the MLflow runs are.
    plain = _run(elsewhere, "--set", f"storage={root}")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "key metrics" in plain.stdout and "Log of this run:" in plain.stdout and "#/experiments/" in plain.stdout
    assert "INFO" not in plain.stdout and "Traceback" not in plain.stdout
