"""The pipeline's plan, with `auto` resolved in a pre-pass.

A config with `model.connector: auto` (or `model.vision.image_size: auto`) takes those values from the
sweep's best.json. The stages up to the sweep (its "head": synth, prepare, sweep) are planned, and run, with
the config as written; then the config is resolved with the sweep's choices and the remaining stages (the
"tail") are planned with it, as a plain DAG. Until the sweep has an output, the tail is `pending`: its
fingerprints are known once the sweep has run. A config without `auto` is one plain plan (no head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from components.core.config import PipelineConfig
from components.core.redact import redact
from components.sweep.space import auto_keys

from .attempts import read_manifest
from .executor import PipelineError, PlannedStage, Stage, execute, make_plan, selection
from .llava15 import build_stages, resolve_from_sweep

PENDING = "pending"  # the fingerprint of a stage whose config waits for the sweep's choice
SOURCE = "sweep"  # the stage whose output resolves `auto`
Build = Callable[[PipelineConfig], list[Stage]]
Resolve = Callable[[PipelineConfig, str], tuple[PipelineConfig, dict[str, Any]]]


def ancestors(stages: list[Stage], name: str) -> set[str]:
    by_name = {s.name: s for s in stages}
    found: set[str] = set()
    todo = list(by_name[name].deps)
    while todo:
        d = todo.pop()
        if d not in found:
            found.add(d)
            todo += by_name[d].deps
    return found


@dataclass
class PipelinePlan:
    cfg: PipelineConfig  # as written
    root: str
    stages: list[Stage]  # built from the config as written (names and edges are the same after resolving)
    head: list[PlannedStage]  # planned with the config as written
    tail: list[PlannedStage] = field(default_factory=list)  # planned with `auto` resolved (or pending)
    resolved: PipelineConfig | None = None  # the config the tail runs with
    chosen: tuple[set[str], set[str]] = (set(), set())  # (wanted, forced) over all stages
    head_done: bool = False  # set by the runner once the head has run (its output is then the one to use)
    build: Build = build_stages
    resolve: Resolve = resolve_from_sweep

    @property
    def planned(self) -> list[PlannedStage]:
        return [*self.head, *self.tail]

    @property
    def pending(self) -> bool:
        return any(p.fingerprint == PENDING for p in self.tail)

    def plan_tail(self) -> None:
        """Plan the stages after the sweep with its choices, or as pending while it has no output."""
        source = self.head[-1]
        head_names = {p.stage.name for p in self.head}
        wanted, forced = self.chosen
        rest = [s for s in self.stages if s.name not in head_names]
        manifest = read_manifest(source.out)  # after the head has run, its output is there
        if manifest is None or (source.action == "run" and not self.head_done):
            if source.action == "skip" and manifest is None and any(s.name in wanted for s in rest):
                raise PipelineError(
                    f"{', '.join(auto_keys(self.cfg))} is auto: it takes the sweep's best value, but the sweep's "
                    f"output (fingerprint {source.fingerprint}) does not exist; run `llava-pipeline run --from "
                    f"sweep` (or without --only/--from) first")
            why = f"{', '.join(auto_keys(self.cfg))} auto: fingerprint known once the sweep has run"
            self.tail = [PlannedStage(s, PENDING, {}, "", "run" if s.name in wanted else "skip",
                                      [why] if s.name in wanted else ["not selected"], forced=s.name in forced)
                         for s in rest]
            return
        self.resolved, choices = self.resolve(self.cfg, source.out)
        rest = [s for s in self.build(self.resolved) if s.name not in head_names]
        self.tail = make_plan(self.resolved, rest, self.root, chosen=self.chosen, upstream=self.head)
        for p in self.tail:
            p.choices, p.choices_from = dict(choices), f"{SOURCE} {source.fingerprint}"


def plan_pipeline(cfg: PipelineConfig, root: str, *, only: list[str] | None = None, from_: list[str] | None = None,
                  force: list[str] | None = None, build: Build = build_stages,
                  resolve: Resolve = resolve_from_sweep) -> PipelinePlan:
    """The plan for `run`/`plan`. With `auto`, the head is planned first and the tail after it (pending
    when the sweep has yet to run); call `plan_tail()` again once the head has run."""
    stages = build(cfg)
    chosen = selection(stages, only=only, from_=from_, force=force)
    if not auto_keys(cfg) or SOURCE not in {s.name for s in stages}:
        return PipelinePlan(cfg, root, stages, make_plan(cfg, stages, root, chosen=chosen), chosen=chosen)
    head_names = ancestors(stages, SOURCE) | {SOURCE}
    head_stages = [s for s in stages if s.name in head_names]
    # For --from/--force, the stages after the sweep are downstream of it: they run with its choice.
    linked = [s if s.name in head_names else replace(s, deps=(*s.deps, SOURCE)) for s in stages]
    chosen = selection(linked, only=only, from_=from_, force=force)
    wanted, forced = chosen
    head = make_plan(cfg, head_stages, root, chosen=(wanted & head_names, forced & head_names))
    plan = PipelinePlan(cfg, root, stages, head, chosen=chosen, build=build, resolve=resolve)
    plan.plan_tail()
    return plan


def run_plan(pipeline: PipelinePlan, tracker: Any = None,
             announce: Callable[[list[PlannedStage]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run the head (everything when nothing is `auto`); then, with the sweep's choices, the tail (planned
    now if it was pending; `announce` shows that plan)."""
    cfg, concurrency = pipeline.cfg, pipeline.cfg.evaluate.concurrency
    results = execute(cfg, pipeline.head, pipeline.root, tracker, concurrency=concurrency)
    if not pipeline.tail:
        return results
    if pipeline.pending:  # still pending after this only when nothing after the sweep was selected
        source = results[pipeline.head[-1].stage.name]
        error = source.get("error") if source["status"] == "failed" else None
        if error is None:
            pipeline.head_done = True
            try:
                pipeline.plan_tail()
            except Exception as e:  # e.g. an unusable best.json: nothing after the sweep can run
                error = f"{type(e).__name__}: {e}"
        if error is not None:
            for p in pipeline.tail:
                results[p.stage.name] = {"status": "skipped", "fingerprint": p.fingerprint, "duration_s": 0.0,
                                         "metrics": {}, "mlflow_run_id": None, "blocked": True,
                                         "why": [f"the sweep's choice is not available: {redact(error)}"]}
            return results
        if announce is not None:
            announce(pipeline.tail)
    results.update(execute(pipeline.resolved or cfg, pipeline.tail, pipeline.root, tracker, concurrency=concurrency,
                           upstream=pipeline.head))
    return results
