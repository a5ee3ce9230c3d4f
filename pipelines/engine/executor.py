"""A small stage executor: fingerprints, a content-addressed cache, explainable plans, MLflow runs.

It is not a distributed engine: stages run their own work on Ray. Outputs live under
`{storage}/artifacts/{stage}/{fingerprint}/` and count as done only once the executor's manifest
(`MANIFEST`, a name no stage writes) exists there, so a half-written output is never taken as done.

A stage is a function (`run_<stage>` of a component) and the arguments it is called with, built by the
pipeline from the config and the upstream outputs at plan time. Its fingerprint covers exactly those
arguments, walked by the types its signature declares (components/core/fields.py: scheduling settings left
out, data files and checkpoints by content, paths in upstream outputs by the upstream's fingerprint), plus
the upstream fingerprints and the code it runs (its import closure within this project). What it is not
passed, it cannot read.

One run of a stage at a time, and outputs committed atomically: see pipelines/engine/attempts.py.

The executor is a plain DAG runner: a config's `auto` values are resolved before it plans the stages that
use them (pipelines/engine/plan.py), so every stage it sees has fixed arguments.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from components.core import storage
from components.core.fields import NOT_CONFIGURED
from components.core.fingerprint import (
    MISSING,
    OutputPath,
    code_version,
    describe_args,
    explain,
    fingerprint,
    materialize,
    stage_inputs,
)
from components.core.stage_run import StageRun

from .attempts import MANIFEST, commit, parse_manifest, read_manifest, start_attempt, take_lease

Outputs = dict[str, OutputPath]  # upstream stage → its output folder


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    run: Callable[..., dict[str, Any]]  # the component's run_<stage>(**args, run=StageRun): returns metrics
    args: Callable[[Outputs], dict[str, Any]]  # its arguments, from its upstream stages' outputs
    group: str = ""  # fan-out family (e.g. "evaluate"); `--only evaluate` selects all of it
    concurrency: int = 1  # stages of its group run at once (scheduling)


@dataclass
class PlannedStage:
    stage: Stage
    fingerprint: str
    inputs: dict[str, Any]
    out: str
    action: str  # "cached" | "run" | "skip"
    why: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    args: dict[str, Any] = field(default_factory=dict)  # what run_<stage> is called with
    choices: dict[str, Any] = field(default_factory=dict)  # `auto` values it runs with (pipelines/engine/plan.py)
    choices_from: str = ""  # "<stage> <fingerprint>" that made the choices
    forced: bool = False


class PipelineError(RuntimeError):
    """A user-facing pipeline problem (missing upstream output, unknown stage name, ...)."""


def artifact_dir(root: str, stage: str, fp: str) -> str:
    return storage.join(root, "artifacts", stage, fp)


def latest_manifest(root: str, stage: str) -> dict[str, Any] | None:
    """The newest committed manifest of a stage, whatever its fingerprint (for explaining changes)."""
    fs, inner = storage.filesystem(storage.join(root, "artifacts", stage))
    if not fs.exists(inner):
        return None
    best = None
    for path in fs.glob(inner.rstrip("/") + "/*/" + MANIFEST):
        with fs.open(path, "rb") as f:
            m = parse_manifest(f.read())
        if m is None:
            continue
        if best is None or m.get("finished_at", 0) > best.get("finished_at", 0):
            best = m
    return best


def select(stages: list[Stage], names: list[str]) -> set[str]:
    """Stage names matching names or groups; unknown ones are an error naming the valid choices."""
    chosen: set[str] = set()
    for n in names:
        hit = {s.name for s in stages if s.name == n or s.group == n}
        if not hit:
            valid = sorted({s.name for s in stages} | {s.group for s in stages if s.group})
            raise PipelineError(f"unknown stage {n!r}; stages are: {', '.join(valid)}")
        chosen |= hit
    return chosen


def downstream(stages: list[Stage], roots: set[str]) -> set[str]:
    out = set(roots)
    for s in stages:  # stages are in topological order
        if any(d in out for d in s.deps):
            out.add(s.name)
    return out


def outputs_of(root: str, fingerprints: dict[str, str]) -> Outputs:
    return {name: OutputPath(artifact_dir(root, name, fp), name) for name, fp in fingerprints.items()}


def inputs_of(s: Stage, args: dict[str, Any], upstream: dict[str, str]) -> dict[str, Any]:
    """Everything the stage's output depends on, as fingerprinted."""
    digest = describe_args(s.run, args)
    return stage_inputs(s.name, digest.values, upstream, code_version(s.run), digest.files)


def missing_files(p: PlannedStage) -> list[str]:
    """`key = path` of each content-typed path the stage reads that does not exist."""
    files, values = p.inputs.get("files", {}), p.inputs.get("args", {})
    return [f"{key} = {values.get(key)}" for key, digest in files.items() if digest == MISSING]


def _decide(s: Stage, upstream: dict[str, str], root: str, *, selected: bool, forced: bool) -> PlannedStage:
    """Fingerprint one stage (its upstream fingerprints known) and decide cached / run / skip, with reasons."""
    args = s.args(outputs_of(root, upstream))
    inputs = inputs_of(s, args, upstream)
    fp = fingerprint(inputs)
    out = artifact_dir(root, s.name, fp)
    manifest = read_manifest(out)
    if not selected:
        action, why = "skip", ["not selected"]
    elif forced:
        action, why = "run", ["forced (--force)"]
    elif manifest is not None:
        action, why = "cached", [f"output {fp} exists"]
    else:
        action = "run"
        why = explain((latest_manifest(root, s.name) or {}).get("inputs"), inputs)
    if action != "skip":
        why += [f"skipped: no {key} configured" for key, v in inputs["args"].items() if v == NOT_CONFIGURED]
    return PlannedStage(s, fp, inputs, out, action, why, manifest, args=args, forced=forced)


def selection(stages: list[Stage], *, only: list[str] | None = None, from_: list[str] | None = None,
              force: list[str] | None = None) -> tuple[set[str], set[str]]:
    """(the stages to run or reuse, the stages to rerun) for --only / --from / --force."""
    forced = downstream(stages, select(stages, force or []))
    if only:
        return select(stages, only), forced
    if from_:
        return downstream(stages, select(stages, from_)), forced
    return {s.name for s in stages}, forced


def make_plan(
    stages: list[Stage], root: str, *, only: list[str] | None = None,
    from_: list[str] | None = None, force: list[str] | None = None,
    chosen: tuple[set[str], set[str]] | None = None, upstream: Sequence[PlannedStage] = (),
) -> list[PlannedStage]:
    """Fingerprint every stage and decide cached / run / skip, with reasons. Touches no Ray.
    `chosen`: (wanted, forced) from `selection` instead of only/from_/force; `upstream`: stages planned
    before (outside `stages`) that these depend on."""
    wanted, forced = chosen or selection(stages, only=only, from_=from_, force=force)
    known = {p.stage.name: p for p in upstream}
    plan: list[PlannedStage] = []
    for s in stages:
        p = _decide(s, {d: known[d].fingerprint for d in s.deps}, root, selected=s.name in wanted,
                    forced=s.name in forced)
        known[s.name] = p
        plan.append(p)
    for p in plan:
        if p.action == "skip":
            continue
        for d in p.stage.deps:
            up = known[d]
            if up.action == "skip" and up.manifest is None:
                raise PipelineError(
                    f"stage {p.stage.name} needs the output of {d} (fingerprint {up.fingerprint}), which does "
                    f"not exist; run `llava-pipeline run --from {d}` (or without --only/--from) first"
                )
    return plan


def _run_one(p: PlannedStage, root: str, tracker: Any) -> dict[str, Any]:
    """Run (or reuse) one stage; never raises — a failure is reported in the result."""
    started = time.time()
    run_id = tracker.start_stage(p) if tracker else None
    result: dict[str, Any] = {"status": "", "fingerprint": p.fingerprint, "duration_s": 0.0, "metrics": {},
                              "mlflow_run_id": run_id, "why": p.why, "output": p.out}
    try:
        lease, manifest = ((None, p.manifest) if p.action == "cached"
                           else take_lease(p.out, forced=p.forced, stage=p.stage.name))
        if lease is None:
            assert manifest is not None
            result.update(status="cached", metrics=manifest.get("metrics", {}),
                          source_run_id=manifest.get("mlflow_run_id"))
        else:
            try:
                with lease.keep_alive():
                    attempt, folder = start_attempt(p.out, forced=p.forced)
                    run = StageRun(p.stage.name, folder, root, p.fingerprint, attempt,
                                   tracker.target(run_id) if tracker else None, output=p.out)
                    metrics = p.stage.run(**materialize(p.args), run=run) or {}
                    commit(p.out, folder, {
                        "stage": p.stage.name, "fingerprint": p.fingerprint, "inputs": p.inputs, "metrics": metrics,
                        "mlflow_run_id": run_id, "attempt": attempt, "started_at": started,
                        "finished_at": time.time(), "duration_s": time.time() - started}, lease)
                    result.update(status="ran", metrics=metrics)
            finally:
                lease.release()
    except Exception as e:  # reported per stage; the pipeline stops after this level
        result.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    result["duration_s"] = round(time.time() - started, 2)
    if tracker:
        tracker.end_stage(run_id, p, result)
    return result


def execute(plan: list[PlannedStage], root: str, tracker: Any = None) -> dict[str, dict[str, Any]]:
    """Run a plan in dependency order; the stages of one fan-out group run side by side (up to their
    `concurrency`). Stages planned before (`plan_pipeline`'s head) are read through their outputs."""
    results: dict[str, dict[str, Any]] = {}
    names = {p.stage.name for p in plan}
    pending = [p for p in plan if p.action != "skip"]
    for p in plan:
        if p.action == "skip":
            results[p.stage.name] = {"status": "skipped", "fingerprint": p.fingerprint, "duration_s": 0.0,
                                     "metrics": {}, "mlflow_run_id": None, "why": p.why}

    def waits_for(p: PlannedStage) -> list[str]:
        return [d for d in p.stage.deps if d in names]

    while pending:
        blocked = [None]
        while blocked:  # a failure skips everything below it, however deep
            blocked = [p for p in pending if any(results.get(d, {}).get("status") == "failed" or
                                                 results.get(d, {}).get("blocked") for d in waits_for(p))]
            for p in blocked:
                results[p.stage.name] = {"status": "skipped", "fingerprint": p.fingerprint, "duration_s": 0.0,
                                         "metrics": {}, "mlflow_run_id": None, "why": ["an upstream stage failed"],
                                         "blocked": True}
            pending = [p for p in pending if p not in blocked]
        ready = [p for p in pending if all(results.get(d, {}).get("status") in ("cached", "ran", "skipped")
                                           for d in waits_for(p))]
        if not ready:
            break
        # One level at a time: a fan-out group (all evaluate jobs) shares the pool.
        group = ready[0].stage.group
        level = [p for p in ready if group and p.stage.group == group] or ready[:1]
        workers = max(1, min(max(p.stage.concurrency for p in level), len(level)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            runs = pool.map(lambda q: _run_one(q, root, tracker), level)
            for p, r in zip(level, runs, strict=True):
                results[p.stage.name] = r
        pending = [p for p in pending if p not in level]
    return results
