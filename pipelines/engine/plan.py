"""A pipeline's plan, with `auto` resolved in a pre-pass.

A config with `auto` values (in LLaVA-1.5: `model.connector: auto`, `model.vision.image_size: auto`) takes
them from one stage's output (the sweep's best.json); `Pipeline` names that stage and how to resolve. The stages up to the sweep (its "head": synth, prepare, sweep) are planned, and run, with
the config as written; then the config is resolved with the sweep's choices and the remaining stages (the
"tail") are planned with it, as a plain DAG. Until the sweep has an output, the tail is `pending`: its
fingerprints are known once the sweep has run. A config without `auto` is one plain plan (no head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from components.core.fingerprint import MISSING, describe_args
from components.core.redact import redact

from .attempts import read_manifest
from .executor import (
    PipelineError,
    PlannedStage,
    Stage,
    execute,
    make_plan,
    missing_files,
    outputs_of,
    selection,
)

PENDING = "pending"  # the fingerprint of a stage whose config waits for the sweep's choice
Config = Any  # a pipeline's config; the engine only hands it back to the pipeline
Build = Callable[[Config], list[Stage]]
Resolve = Callable[[Config, str], tuple[Config, dict[str, Any]]]


def _no_auto(cfg: Config) -> list[str]:
    return []


@dataclass(frozen=True)
class Pipeline:
    """What the engine knows of a pipeline: its stages for a config, and the stage whose output fills the
    config's `auto` keys (`resolve`: the config with them filled from that output folder, and the choices)."""

    build: Build
    auto_keys: Callable[[Config], list[str]] = _no_auto
    auto_source: str = ""
    resolve: Resolve | None = None


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
    pipeline: Pipeline
    cfg: Config  # as written
    root: str
    stages: list[Stage]  # built from the config as written (names and edges are the same after resolving)
    head: list[PlannedStage]  # planned with the config as written
    tail: list[PlannedStage] = field(default_factory=list)  # planned with `auto` resolved (or pending)
    resolved: Config | None = None  # the config the tail runs with
    chosen: tuple[set[str], set[str]] = (set(), set())  # (wanted, forced) over all stages
    head_done: bool = False  # set by the runner once the head has run (its output is then the one to use)

    @property
    def planned(self) -> list[PlannedStage]:
        return [*self.head, *self.tail]

    @property
    def pending(self) -> bool:
        return any(p.fingerprint == PENDING for p in self.tail)

    def missing_inputs(self) -> list[str]:
        """`stage: key = path does not exist` for each data file or folder that a stage about to run reads
        (its arguments typed as read by content: the user's paths; the synthetic world's are the synth stage's
        output). Such a stage would fail, maybe hours into the run, after everything before it. A planned
        stage's digests already say so; a pending one (after the sweep) is checked here."""
        known = {p.stage.name: p.fingerprint for p in self.planned}
        found = []
        for p in self.planned:
            if p.action != "run":
                continue
            if p.fingerprint != PENDING:
                found += [f"{p.stage.name}: {line} does not exist" for line in missing_files(p)]
                continue
            args = p.stage.args(outputs_of(self.root, {d: known.get(d, PENDING) for d in p.stage.deps}))
            digest = describe_args(p.stage.run, args)
            found += [f"{p.stage.name}: {key} = {digest.values.get(key)} does not exist"
                      for key, d in digest.files.items() if d == MISSING]
        return found

    def plan_tail(self) -> None:
        """Plan the stages after the sweep with its choices, or as pending while it has no output."""
        source = self.head[-1]
        head_names = {p.stage.name for p in self.head}
        wanted, forced = self.chosen
        rest = [s for s in self.stages if s.name not in head_names]
        manifest = read_manifest(source.out)  # after the head has run, its output is there
        keys, name = ", ".join(self.pipeline.auto_keys(self.cfg)), source.stage.name
        if manifest is None or (source.action == "run" and not self.head_done):
            if source.action == "skip" and manifest is None and any(s.name in wanted for s in rest):
                raise PipelineError(
                    f"{keys} is auto: it takes the {name}'s best value, but the {name}'s output (fingerprint "
                    f"{source.fingerprint}) does not exist; run `llava-pipeline run --from {name}` (or without "
                    f"--only/--from) first")
            why = f"{keys} auto: fingerprint known once the {name} has run"
            self.tail = [PlannedStage(s, PENDING, {}, "", "run" if s.name in wanted else "skip",
                                      [why] if s.name in wanted else ["not selected"], forced=s.name in forced)
                         for s in rest]
            return
        assert self.pipeline.resolve is not None
        self.resolved, choices = self.pipeline.resolve(self.cfg, source.out)
        rest = [s for s in self.pipeline.build(self.resolved) if s.name not in head_names]
        self.tail = make_plan(rest, self.root, chosen=self.chosen, upstream=self.head)
        for p in self.tail:
            p.choices, p.choices_from = dict(choices), f"{name} {source.fingerprint}"


def plan_pipeline(pipeline: Pipeline, cfg: Config, root: str, *, only: list[str] | None = None,
                  from_: list[str] | None = None, force: list[str] | None = None) -> PipelinePlan:
    """The plan for `run`/`plan`. With `auto`, the head is planned first and the tail after it (pending
    when the source stage has yet to run); call `plan_tail()` again once the head has run."""
    stages = pipeline.build(cfg)
    source = pipeline.auto_source
    if not pipeline.auto_keys(cfg) or source not in {s.name for s in stages}:
        chosen = selection(stages, only=only, from_=from_, force=force)
        return PipelinePlan(pipeline, cfg, root, stages, make_plan(stages, root, chosen=chosen), chosen=chosen)
    head_names = ancestors(stages, source) | {source}
    head_stages = [s for s in stages if s.name in head_names]
    # For --from/--force, the stages after the source are downstream of it: they run with its choice.
    linked = [s if s.name in head_names else replace(s, deps=(*s.deps, source)) for s in stages]
    chosen = selection(linked, only=only, from_=from_, force=force)
    wanted, forced = chosen
    head = make_plan(head_stages, root, chosen=(wanted & head_names, forced & head_names))
    plan = PipelinePlan(pipeline, cfg, root, stages, head, chosen=chosen)
    plan.plan_tail()
    return plan


def run_plan(pipeline: PipelinePlan, tracker: Any = None,
             announce: Callable[[list[PlannedStage]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run the head (everything when nothing is `auto`); then, with the sweep's choices, the tail (planned
    now if it was pending; `announce` shows that plan)."""
    results = execute(pipeline.head, pipeline.root, tracker)
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
    results.update(execute(pipeline.tail, pipeline.root, tracker))
    return results
