"""A small stage executor: fingerprints, a content-addressed cache, explainable plans, MLflow runs.

It is not a distributed engine: stages run their own work on Ray. Outputs live under
`{storage}/artifacts/{stage}/{fingerprint}/` and count as done only once the executor's manifest
(`MANIFEST`, a name no stage writes) exists there, so a half-written output is never taken as done.

A stage's fingerprint covers exactly what it declares it reads — config key paths, data files (by content),
environment-derived settings — plus its upstream fingerprints and the code its body runs (the import closure
within this project, derived from the source). See components/core/fingerprint.py.

One run of a stage at a time, and outputs committed atomically: see pipelines/attempts.py.

A stage may refine the config of the stages after it from its output (`Stage.resolves`: the sweep fills
`auto` with its best values). Stages that wait for such an output (`Stage.after`) are fingerprinted with the
refined config: from the cached output at plan time, or, when that stage has yet to run, as soon as it has
(until then their fingerprint is "pending"). So `plan` needs no Ray, and a changed choice changes them.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from components.core import storage
from components.core.config import PipelineConfig
from components.core.fingerprint import code_version, explain, fingerprint, flatten, path_digest, stage_inputs
from components.tracking import MlflowTarget

from .attempts import MANIFEST, commit, parse_manifest, read_manifest, start_attempt, take_lease

PENDING = "pending"  # fingerprint of a stage whose config waits for an upstream output
NOT_CONFIGURED = "not configured"  # an env setting without a value: the plan says the stage will skip
Resolver = Callable[[PipelineConfig, str], tuple[PipelineConfig, dict[str, Any]]]


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
    after: tuple[str, ...] = ()  # also waits for these, whose outputs refine its config (not its upstream)
    # For the stages after it: (config refined by this stage's output folder, the values it chose).
    resolves: Resolver | None = None


@dataclass
class StageContext:
    cfg: PipelineConfig
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
    cfg: PipelineConfig | None = None  # the config the stage runs with (refined by `resolves` stages)
    choices: dict[str, Any] = field(default_factory=dict)  # values taken from an upstream output (`after`)
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
        if any(d in out for d in (*s.deps, *s.after)):
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


@dataclass
class _Refined:
    """The config as refined by the `resolves` stages whose outputs exist so far."""

    cfg: PipelineConfig
    choices: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def apply(self, p: PlannedStage) -> None:
        assert p.stage.resolves is not None
        self.cfg, chosen = p.stage.resolves(self.cfg, p.out)
        self.choices.update(chosen)
        self.source = f"{p.stage.name} {p.fingerprint}"

    def attach(self, p: PlannedStage) -> None:
        if p.stage.after:
            p.choices, p.choices_from = dict(self.choices), self.source


def make_plan(
    cfg: PipelineConfig, stages: list[Stage], root: str, *, only: list[str] | None = None,
    from_: list[str] | None = None, force: list[str] | None = None,
) -> list[PlannedStage]:
    """Fingerprint every stage and decide cached / run / skip, with reasons. Touches no Ray."""
    forced = downstream(stages, select(stages, force or []))
    if only:
        wanted = select(stages, only)
    elif from_:
        wanted = downstream(stages, select(stages, from_))
    else:
        wanted = {s.name for s in stages}
    refined = _Refined(cfg)
    fps: dict[str, str] = {}
    waiting: set[str] = set()  # stages whose output (or fingerprint) is not known before they run
    providers = {s.name for s in stages if s.resolves is not None}
    plan: list[PlannedStage] = []
    for s in stages:
        blockers = [d for d in (*s.deps, *s.after) if d in waiting]
        if blockers:
            waiting.add(s.name)
            fps[s.name] = PENDING
            why = [f"config takes values from {b}'s output: fingerprint known once it has run" if b in providers
                   else f"upstream {b} pending" for b in blockers]
            p = PlannedStage(s, PENDING, {}, "", "run" if s.name in wanted else "skip",
                             why if s.name in wanted else ["not selected"], forced=s.name in forced)
        else:
            p = _decide(s, refined.cfg, {d: fps[d] for d in s.deps}, root, selected=s.name in wanted,
                        forced=s.name in forced)
            fps[s.name] = p.fingerprint
            refined.attach(p)
            if s.resolves is not None:
                if p.manifest is not None and p.action != "run":
                    refined.apply(p)
                else:
                    waiting.add(s.name)
        plan.append(p)
    by_name = {p.stage.name: p for p in plan}
    for p in plan:
        if p.action == "skip":
            continue
        for d in (*p.stage.deps, *p.stage.after):
            up = by_name[d]
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
                    ctx = StageContext(p.cfg or cfg, p.stage, p.fingerprint, folder,
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
) -> dict[str, dict[str, Any]]:
    """Run a plan in dependency order; stages of one fan-out group run concurrently. A pending stage is
    fingerprinted (and may turn out cached) once the stages it waits for are done."""
    results: dict[str, dict[str, Any]] = {}
    names = {p.stage.name for p in plan}
    refined = _Refined(cfg)
    pending = [p for p in plan if p.action != "skip"]
    for p in plan:
        if p.action == "skip":
            results[p.stage.name] = {"status": "skipped", "fingerprint": p.fingerprint, "duration_s": 0.0,
                                     "metrics": {}, "mlflow_run_id": None, "why": p.why}
            if p.stage.resolves is not None and p.manifest is not None:
                refined.apply(p)

    def waits_for(p: PlannedStage) -> list[str]:
        return [d for d in (*p.stage.deps, *p.stage.after) if d in names]

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
        for p in level:
            if p.fingerprint == PENDING:
                decided = _decide(p.stage, refined.cfg, {d: results[d]["fingerprint"] for d in p.stage.deps}, root,
                                  selected=True, forced=p.forced)
                refined.attach(decided)
                for name in ("fingerprint", "inputs", "out", "action", "why", "manifest", "cfg", "choices",
                             "choices_from"):
                    setattr(p, name, getattr(decided, name))
        outs = {q.stage.name: q.out for q in plan}
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(level)))) as pool:
            runs = pool.map(lambda q, o=outs: _run_one(q, cfg, root, o, tracker), level)
            for p, r in zip(level, runs, strict=True):
                results[p.stage.name] = r
                if p.stage.resolves is not None and r["status"] in ("cached", "ran"):
                    try:
                        refined.apply(p)
                    except Exception as e:  # an unusable output: the stages waiting for it cannot run
                        r.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        pending = [p for p in pending if p not in level]
    return results
