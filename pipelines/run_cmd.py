"""`llava-pipeline run` and `plan`: plan the DAG, run what is not cached, report."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from components.core.config import PipelineConfig

from .artifacts import storage_root
from .executor import PlannedStage, execute, make_plan
from .llava15 import build_stages

# Metrics shown in the final table, when a stage has them.
KEY_METRICS = ("finetune_kept", "pretrain_kept", "final_loss", "initial_loss", "resumed_from_step", "accuracy",
               "blank_images_accuracy", "mean_f1", "perception", "circular_accuracy", "img_accuracy",
               "parity_mismatches", "registered_version", "parity_ok")


def format_plan(plan: list[PlannedStage]) -> str:
    lines = [f"{'stage':22s} {'action':7s} {'fingerprint':17s} why"]
    for p in plan:
        lines.append(f"{p.stage.name:22s} {p.action:7s} {p.fingerprint:17s} {'; '.join(p.why)}")
    return "\n".join(lines)


def _short(metrics: dict[str, Any]) -> str:
    parts = []
    for k, v in metrics.items():
        if k in KEY_METRICS or k.endswith("accuracy") or (k == "status" and v != "ok"):
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts[:5])


def format_results(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'stage':22s} {'status':8s} {'duration':>9s}  key metrics"]
    for name, r in results.items():
        lines.append(f"{name:22s} {r['status']:8s} {r['duration_s']:8.1f}s  {_short(r.get('metrics', {}))}")
        if r.get("error"):
            lines.append(f"{'':22s} error: {r['error']}")
    return "\n".join(lines)


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
        ray.init(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False, configure_logging=False)


def run_pipeline(
    cfg: PipelineConfig, *, only: list[str], from_: list[str], force: list[str], dry_run: bool, as_json: bool,
    command: str = "run",
) -> int:
    root = storage_root(cfg)
    stages = build_stages(cfg)
    plan = make_plan(cfg, stages, root, only=only, from_=from_, force=force)
    if dry_run:
        if as_json:
            print(json.dumps({"stages": {p.stage.name: {"action": p.action, "fingerprint": p.fingerprint,
                                                        "why": p.why} for p in plan}}))
        else:
            print(format_plan(plan))
        return 0
    print(format_plan(plan), file=sys.stderr if as_json else sys.stdout, flush=True)
    if any(p.action == "run" for p in plan):
        init_ray()  # an all-cached rerun needs no Ray: it only reads manifests and logs to MLflow
    from .diagram import dag_png
    from .tracking import PipelineTracker

    tracker = PipelineTracker(cfg, root, command)
    results = execute(cfg, plan, root, tracker, concurrency=cfg.evaluate.concurrency)
    tracker.finish(results, dag_png(stages, results))
    failed = any(r["status"] == "failed" for r in results.values())
    if as_json:
        print(json.dumps({"stages": {k: {f: v.get(f) for f in ("status", "fingerprint", "duration_s", "metrics",
                                                                "mlflow_run_id", "error")}
                                     for k, v in results.items()},
                          "mlflow_parent_run_id": tracker.parent, "tracking_uri": tracker.uri}, default=str))
    else:
        print()
        print(format_results(results))
        print(f"\nMLflow: parent run {tracker.parent}; open the UI with:\n  mlflow ui --backend-store-uri {tracker.uri}")
    for r in results.values():
        if r.get("traceback"):
            print(r["traceback"], file=sys.stderr)
    return 1 if failed else 0
