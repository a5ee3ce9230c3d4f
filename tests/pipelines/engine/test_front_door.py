"""The front door: `llava-pipeline run` as a user types it, from a fresh empty directory with the default's relative
storage root, through the installed console script (not in-process), stdout parsed whole as JSON. Typed in two
terminals at once (a retried job does the same): both succeed, every stage runs once (the other run waits on its
lease and takes the output), every output is readable, and one fresh MLflow store serves both. Then the same
config from another directory is all cache hits, a person's plain output, and `--force finetune`.

The suite runs it on the micro world with few steps; `.ci/run` runs README's Quick start verbatim (set-up in a
fresh venv, then the real default run from an empty directory, with the learning check). The same on an s3://
root: tests/pipelines/engine/test_concurrent_runs.py.
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


def _start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "LLAVA_JUDGE"))}
    sets = [x for s in SMALL for x in ("--set", s)]
    return subprocess.Popen([_cli(), "run", *args, *sets], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = _start(cwd, *args)
    stdout, stderr = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.e2e
def test_two_terminals_run_the_default_from_one_empty_directory(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.engine.executor import read_manifest

    here = tmp_path / "empty"
    here.mkdir()
    procs = [_start(here, "--json") for _ in range(2)]
    runs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=1200)
        assert proc.returncode == 0, stderr[-3000:]
        runs.append((json.loads(stdout), stderr))  # stdout is exactly one JSON object: nothing else printed there
    root = here / "runs" / "tiny"  # the default `storage: ./runs/{name}`, relative to where we typed
    stages = {k: v for k, v in runs[0][0]["stages"].items()}
    assert runs[1][0]["stages"].keys() == stages.keys()
    for name in stages:  # each stage's work was done once: one run ran it, the other took its output
        statuses = sorted(r["stages"][name]["status"] for r, _ in runs)
        # mmvet is judged, and no judge is configured: skipped by both
        assert statuses == (["skipped", "skipped"] if name == "evaluate.mmvet" else ["cached", "ran"]), (name, statuses)
        assert len({r["stages"][name]["fingerprint"] for r, _ in runs}) == 1
        if name != "evaluate.mmvet":
            out = root / "artifacts" / name / stages[name]["fingerprint"]
            assert read_manifest(str(out))["fingerprint"] == stages[name]["fingerprint"]
    ran = {name: next(r["stages"][name] for r, _ in runs if r["stages"][name]["status"] == "ran")
           for name in stages if name != "evaluate.mmvet"}
    assert ran["export"]["metrics"]["parity_ok"] is True
    for summary, stderr in runs:
        assert all(Path(p).is_dir() and Path(p).is_relative_to(root) for p in summary["outputs"].values())
        log = Path(summary["log"])
        assert log.parent == root / "logs" and log.stat().st_size > 0  # library output went here, not to stdout
        # The stage lines went to stderr: one start per stage this run ran.
        n_ran = sum(v["status"] == "ran" for v in summary["stages"].values())
        assert sum(" started " in line for line in stderr.splitlines()) >= n_ran
    gqa = root / "artifacts" / "evaluate.gqa" / stages["evaluate.gqa"]["fingerprint"]
    answers = sorted(gqa.rglob("answers.jsonl"))  # the benchmark's, and its blank-image pass's
    assert [len(a.read_text().splitlines()) for a in answers] == [8, 8] and "blank_images" in str(answers[0])
    assert not list(root.glob("artifacts/*/*.lease")) and not list(root.glob("artifacts/*/.attempts/*"))
    assert not list(root.glob("ray_train/*"))  # committed training stages keep no checkpoints (keep 0)
    # One MLflow store created by two runs at once; each stage's work is one run there, the other a cache hit.
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name("llava-pipeline").experiment_id], max_results=1000)
    misses = sorted(r.data.tags["stage"] for r in found if r.data.tags.get("cache") == "miss"
                    and r.data.tags["stage"] != "evaluate.mmvet")  # skipped: a run of its own in each
    assert misses == sorted(ran)

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

    # --force finetune trains all its steps again, in a fresh Ray Train run, and replaces the output.
    forced = _run(here, "--json", "--force", "finetune")
    assert forced.returncode == 0, forced.stderr[-3000:]
    after = json.loads(forced.stdout)["stages"]
    assert after["finetune"]["status"] == "ran" and after["prepare"]["status"] == "cached"
    assert after["finetune"]["metrics"]["steps"] == ran["finetune"]["metrics"]["steps"] == 2
    assert not after["finetune"]["metrics"].get("resumed_from_step")
    assert after["finetune"]["mlflow_run_id"] != ran["finetune"]["mlflow_run_id"]
