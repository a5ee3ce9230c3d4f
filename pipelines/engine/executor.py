"""A small stage executor: fingerprints, a content-addressed cache, explainable plans, MLflow runs.

It is not a distributed engine: stages run their own work on Ray. Outputs live under
`{storage}/artifacts/{stage}/{fingerprint}/` and count as done only once the executor's manifest
(`MANIFEST`, a name no stage writes) exists there, so a half-written output is never taken as done.

A stage's fingerprint covers exactly what it declares it reads — config key paths, data files (by content),
environment-derived settings — plus its upstream fingerprints and the code its body runs (the import closure
within this project, derived from the source). See components/core/fingerprint.py.

A stage body gets a view of the config with only the keys it declares (components/core/config_view.py):
reading another key fails loudly, so what a stage reads and what it is fingerprinted on cannot drift.

One run of a stage at a time, and outputs committed atomically: see pipelines/engine/attempts.py.

The executor is a plain DAG runner: a config's `auto` values are resolved before it plans the stages that
use them (pipelines/engine/plan.py), so every stage it sees has a fixed config.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from components.core import storage
from components.core.config import PipelineConfig
from components.core.config_view import ConfigView, view
from components.core.fingerprint import code_version, explain, fingerprint, flatten, path_digest, stage_inputs
from components.core.mlflow_target import MlflowTarget

from .attempts import MANIFEST, commit, parse_manifest, read_manifest, start_attempt, take_lease

NOT_CONFIGURED = "not configured"  # an env setting without a value: the plan says the stage will skip


def _no_files(cfg: PipelineConfig) -> dict[str, str]:
    return {}


def _no_env() -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    reads: tuple[str, ...]  # config key paths its output depends on (a section covers every key under it)
    run: Callable[[StageContext], dict[str, Any]]  # does the work, returns metrics; its code is fingerprinted
    files: Callable[[PipelineConfig], dict[str, str]] = _no_files  # data files/folders read: name → path
    env: Callable[[], dict[str, Any]] = _no_env  # settings from the environment (never secrets)
    resources: tuple[str, ...] = ()  # key paths read only to schedule the work (CPUs, actors): not fingerprinted
    group: str = ""  # fan-out family (e.g. "evaluate"); `--only evaluate` selects all of it


@dataclass
class StageContext:
    cfg: ConfigView  # the config as the stage declared it: reading any other key is an error
    stage: Stage
    fingerprint: str
    out: str  # this attempt's output folder (committed to the stage's output folder when the body returns)
    inputs: dict[str, str]  # upstream stage → its output folder
    storage: str
    mlflow: MlflowTarget | None = None
    attempt: str = ""  # this attempt's id: a resumed attempt keeps it, --force starts a new one


@dataclass
class PlannedStage:
    stage: Stage
    fingerprint: str
    inputs: dict[str, Any]
    out: str
    action: str  # "cached" | "run" | "skip"
    why: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    cfg: PipelineConfig | None = None  # the config the stage runs with (`auto` resolved)
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


def _under(key: str, paths: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in paths)


def config_slice(cfg: PipelineConfig, paths: tuple[str, ...], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The declared keys' values, flattened: ('pretrain.optim',) → {'pretrain.optim.lr': 0.002, ...};
    keys under `exclude` left out."""
    dump = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for path in paths:
        node: Any = dump
        for part in path.split("."):
            node = node[part]  # a KeyError here is a stage declaring a key the config does not have
        out.update(flatten(node, path) if isinstance(node, dict) else {path: node})
    return {k: v for k, v in out.items() if not _under(k, exclude)}


def inputs_of(s: Stage, cfg: PipelineConfig, upstream: dict[str, str]) -> dict[str, Any]:
    """Everything the stage's output depends on, as fingerprinted."""
    files = {name: path_digest(path) for name, path in s.files(cfg).items()}
    return stage_inputs(s.name, config_slice(cfg, s.reads, s.resources), upstream, code_version(s.run), files, s.env())


def _decide(s: Stage, cfg: PipelineConfig, upstream: dict[str, str], root: str, *, selected: bool,
            forced: bool) -> PlannedStage:
    """Fingerprint one stage (its upstream fingerprints known) and decide cached / run / skip, with reasons."""
    inputs = inputs_of(s, cfg, upstream)
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
        why += [f"skipped: no {key} configured" for key, v in inputs["env"].items() if v == NOT_CONFIGURED]
    return PlannedStage(s, fp, inputs, out, action, why, manifest, cfg=cfg, forced=forced)


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
    cfg: PipelineConfig, stages: list[Stage], root: str, *, only: list[str] | None = None,
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
        p = _decide(s, cfg, {d: known[d].fingerprint for d in s.deps}, root, selected=s.name in wanted,
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


def _run_one(p: PlannedStage, cfg: PipelineConfig, root: str, outs: dict[str, str],
             tracker: Any) -> dict[str, Any]:
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
                    target = tracker.target(run_id) if tracker else None
                    declared = view(p.cfg or cfg, (*p.stage.reads, *p.stage.resources), p.stage.name)
                    ctx = StageContext(declared, p.stage, p.fingerprint, folder,
                                       {d: outs[d] for d in p.stage.deps}, root, target, attempt)
                    metrics = p.stage.run(ctx) or {}
                    commit(p.out, folder, {
                        "stage": p.stage.name, "fingerprint": p.fingerprint, "inputs": p.inputs, "metrics": metrics,
                        "mlflow_run_id": run_id, "attempt": attempt, "started_at": started,
                        "finished_at": time.time(), "duration_s": time.time() - started})
                    result.update(status="ran", metrics=metrics)
            finally:
                lease.release()
    except Exception as e:  # reported per stage; the pipeline stops after this level
        result.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    result["duration_s"] = round(time.time() - started, 2)
    if tracker:
        tracker.end_stage(run_id, p, result)
    return result


def execute(
    cfg: PipelineConfig, plan: list[PlannedStage], root: str, tracker: Any = None, concurrency: int = 1,
    upstream: Sequence[PlannedStage] = (),
) -> dict[str, dict[str, Any]]:
    """Run a plan in dependency order; stages of one fan-out group run concurrently. `upstream`: stages
    planned (and done) before, whose outputs these read."""
    results: dict[str, dict[str, Any]] = {}
    names = {p.stage.name for p in plan}
    outs = {q.stage.name: q.out for q in (*upstream, *plan)}
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
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(level)))) as pool:
            runs = pool.map(lambda q: _run_one(q, cfg, root, outs, tracker), level)
            for p, r in zip(level, runs, strict=True):
                results[p.stage.name] = r
        pending = [p for p in pending if p not in level]
    return results
