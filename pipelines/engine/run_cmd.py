"""`llava-pipeline run` and `plan`: plan the DAG, run what is not cached, report.

stdout is for results: the plan, one line per stage as it starts and ends, the final table (or, with
`--json`, exactly one JSON object and nothing else). What Ray, DeepSpeed and transformers print goes to
`{storage}/logs/<time>-<pid>-run.log` (`-v`: also live on stderr); see `pipelines.engine.console`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

from components.core.redact import redact, redact_json
from pipelines.config import PipelineConfig

from ..llava15 import LLAVA15
from .artifacts import storage_root
from .cluster import LOCAL_RAY_MIN_CPUS
from .console import Console, captured, display_status, log_file, publish_log
from .executor import PipelineError, PlannedStage, downstream
from .plan import plan_pipeline, run_plan

# Metrics shown in the final table and the stage lines, when a stage has them.
KEY_METRICS = ("files", "pretrain_kept", "pretrain_rejected", "finetune_kept", "finetune_rejected", "steps",
               "final_loss", "resumed_from_step", "accuracy", "blank_images_accuracy", "mean_f1", "perception",
               "circular_accuracy", "img_accuracy", "parity_mismatches", "registered_version", "parity_ok")


def format_plan(plan: list[PlannedStage]) -> str:
    lines = [f"{'stage':22s} {'action':7s} {'fingerprint':17s} why"]
    for p in plan:
        lines.append(f"{p.stage.name:22s} {p.action:7s} {p.fingerprint:17s} {'; '.join(p.why)}")
    return "\n".join(lines)


def key_metrics(metrics: dict[str, Any]) -> str:
    """The numbers a person looks at first (kept/rejected, final loss, the benchmark's metric)."""
    parts = []
    for k, v in metrics.items():
        if k in KEY_METRICS or k.endswith("accuracy"):
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if metrics.get("status") == "skipped":
        parts.append(f"skipped: {metrics.get('reason', 'nothing to score')}")
    return " ".join(parts[:6])


def format_results(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'stage':22s} {'status':8s} {'duration':>9s}  key metrics"]
    for name, r in results.items():
        lines.append(f"{name:22s} {display_status(r):8s} {r['duration_s']:8.1f}s  {key_metrics(r.get('metrics', {}))}")
        if r.get("error"):
            lines.append(f"{'':22s} error: {redact(r['error'])}")
    return "\n".join(lines)


class StageLines:
    """The tracker the executor talks to, plus a console line when a stage starts and when it ends."""

    def __init__(self, tracker: Any, console: Console, *, to_err: bool) -> None:
        self.tracker, self.console, self.to_err = tracker, console, to_err
        self.started: dict[str, float] = {}

    def _say(self, text: str) -> None:
        self.console.line(f"{time.strftime('%H:%M:%S')} {text}", to_err=self.to_err)

    def target(self, run_id: str | None) -> Any:
        return self.tracker.target(run_id)

    def start_stage(self, p: PlannedStage) -> str:
        run_id = self.tracker.start_stage(p)
        if p.action == "run":
            self._say(f"{p.stage.name:22s} started   ({'; '.join(p.why)})")
        return run_id

    def end_stage(self, run_id: str, p: PlannedStage, result: dict[str, Any]) -> None:
        self.tracker.end_stage(run_id, p, result)
        status = display_status(result)
        detail = f"error: {redact(result['error'])}" if result.get("error") else key_metrics(result.get("metrics", {}))
        self._say(f"{p.stage.name:22s} {status:9s} {result['duration_s']:7.1f}s  {detail}")


def init_ray() -> None:
    """Join the cluster when running inside one (RAY_ADDRESS / a Ray job); else start a local Ray.

    Locally, logical CPUs are oversubscribed so Ray Data tasks are not starved by training workers on
    a small machine.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=max(LOCAL_RAY_MIN_CPUS, os.cpu_count() or 1), log_to_driver=False,
                 configure_logging=False)


def _json_summary(results: dict[str, dict[str, Any]], tracker: Any, log: str) -> dict[str, Any]:
    fields = ("status", "fingerprint", "duration_s", "metrics", "output", "mlflow_run_id", "error")
    stages = {k: {**{f: v.get(f) for f in fields}, "status": display_status(v)} for k, v in results.items()}
    return {"stages": stages, "outputs": {k: v.get("output") for k, v in results.items() if v.get("output")},
            "log": log, "mlflow_parent_run_id": tracker.parent, "tracking_uri": tracker.uri}


def run_pipeline(
    cfg: PipelineConfig, *, only: list[str], from_: list[str], force: list[str], dry_run: bool, as_json: bool,
    command: str = "run", verbose: bool = False,
) -> int:
    root = storage_root(cfg)
    with contextlib.redirect_stdout(sys.stderr):  # whatever a library prints while planning is not a result
        pipeline = plan_pipeline(LLAVA15, cfg, root, only=only, from_=from_, force=force)
    plan = pipeline.planned
    missing = pipeline.missing_inputs()
    if dry_run:
        if as_json:
            print(json.dumps({"stages": {p.stage.name: {"action": p.action, "fingerprint": p.fingerprint,
                                                        "why": p.why} for p in plan}, "missing_inputs": missing}))
        else:
            print(format_plan(plan))
    if missing:  # before Ray starts: these stages would fail, maybe after hours of training
        failing = downstream(pipeline.stages, {line.split(":", 1)[0] for line in missing})
        keep = [p.stage.name for p in plan if p.action == "run" and p.stage.name not in failing]
        raise PipelineError(
            "inputs missing; these stages would fail:\n  " + "\n  ".join(missing) + "\nfix the paths in the "
            "config, or run without those stages" + (f" (--only {' --only '.join(keep)})" if keep else ""))
    if dry_run:
        return 0
    running = {p.stage.name.split(".")[0] for p in plan if p.action == "run"}
    if running:  # before Ray starts: a stage that cannot fit its node fails there, maybe after hours
        from .resources_cmd import check_fits

        check_fits(cfg, running=running)
    with captured(log_file(root, command), verbose=verbose) as console:
        console.line(format_plan(plan), to_err=as_json)
        console.line(f"logs: {console.log_path}" + ("" if verbose else " (-v shows them here)"), to_err=True)
        if any(p.action == "run" for p in plan):
            init_ray()  # an all-cached rerun needs no Ray: it only reads manifests and logs to MLflow
        from .diagram import dag_png
        from .tracking import PipelineTracker

        tracker = PipelineTracker(cfg, root, command)
        lines = StageLines(tracker, console, to_err=as_json)
        try:
            results = run_plan(pipeline, lines, announce=lambda tail: console.line(format_plan(tail), to_err=as_json))
        finally:
            from components.evaluate.pool import close_warm_pools

            close_warm_pools()
        tracker.finish(results, dag_png(pipeline.stages, results))
    log = publish_log(console.log_path, root)  # redacts the file in place first
    tracker.log_file(str(console.log_path))
    failed = any(r["status"] == "failed" for r in results.values())
    if as_json:
        console.line(json.dumps(redact_json(_json_summary(results, tracker, log)), default=str))
    else:
        console.line("\n" + format_results(results))
        console.line(f"\nMLflow: {tracker.where()}\nLog of this run: {log}")
    for r in results.values():
        if r.get("traceback"):
            console.line(redact(r["traceback"]), to_err=True)
    return 1 if failed else 0
