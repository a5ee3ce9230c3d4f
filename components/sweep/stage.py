"""The sweep on Ray Tune: one function trainable per grid point, each driving one Ray Train run (Train V2 pattern).

A trial is one Train run on one worker group: the proxy pretrain, then the proxy finetune in `rungs`
segments (each resumes from the previous one's checkpoint; the schedule spans the whole proxy). After each
segment rank 0 evaluates the dev benchmark in its own process, on the worker's own device (CPU, or the GPU it
trains on: a generation actor would wait for a spare GPU, which a cluster busy with trials does not have) and
every rank reports: `TuneReportCallback` hands rank 0's metrics to Tune, whose ASHA
decides at the rungs. The trial actor writes the decision next to the Train run (`_trainable`), the workers
wait for it, and a stopped run ends itself, leaving no Train controller or placement group behind. Every
trial reads the one prepared dataset (image tokens are expanded per resolution at collate time), so nothing
resolution-independent is recomputed.

Each trial is a nested MLflow run under the sweep stage's run (params: connector, resolution; metrics per
rung; cost). The stage writes best.json, ablation.csv / ablation.md and heatmap.png, also logged to MLflow.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.fields import DataFile
from components.core.mlflow_target import MlflowTarget
from components.core.stage_run import StageRun
from components.core.templates import TemplateName
from components.models.spec import ModelSpec
from components.train.spec import TrainStageConfig

from .report import best_json, heatmap_png, table_rows, to_csv, to_markdown
from .space import TrialPoint, TrialSetup, grid, point_for, rung_steps, trial_setup
from .spec import SweepConfig

LOSS_METRICS = ("train_loss", "pretrain_loss")
REPORTED = ("rung", "wall_s", "train_s", "eval_s", "pretrain_steps", "finetune_steps", *LOSS_METRICS)


@dataclass(frozen=True)
class SweepSetup:
    """What every trial needs (shipped to the trial processes)."""

    sweep: SweepConfig
    model: ModelSpec  # the searched dimensions `auto`: each trial sets its point
    pretrain: TrainStageConfig
    finetune: TrainStageConfig
    seed: int
    template: TemplateName  # the prompt template of the dev evaluation
    prepared: str  # the prepare stage's output: tokenizer + shards, shared by every trial
    dev_folder: str  # the dev benchmark's folder (local or s3://)
    out: str  # the sweep stage's output folder
    train_storage: str  # Ray Train run storage
    run_prefix: str  # unique per sweep attempt; trial runs are named from it
    metric: str
    mlflow: MlflowTarget | None  # the sweep stage's run: trials nest under it

    def trial(self, point: TrialPoint) -> TrialSetup:
        return trial_setup(self.sweep, self.model, self.pretrain, self.finetune, point)


def dev_benchmark(sweep: SweepConfig) -> Any:
    """The registry entry of sweep.dev.benchmark, checked to be usable for a sweep."""
    from components.evaluate.benchmarks import UnknownBenchmark, get_benchmark

    try:
        bench = get_benchmark(sweep.dev.benchmark)
    except UnknownBenchmark as e:
        raise ValueError(f"sweep.dev.benchmark: {e}") from None
    if bench.needs_judge:
        raise ValueError(f"sweep.dev.benchmark: {bench.name} is scored by a GPT judge; pick an exactly scored "
                         "benchmark (gqa, pope, ...)")
    return bench


def sweep_metric(sweep: SweepConfig, bench: Any) -> str:
    metric = sweep.metric or bench.metric
    allowed = (bench.metric, *LOSS_METRICS)
    if metric not in allowed:
        raise ValueError(f"sweep.metric: {metric!r} is not reported by the trials; choose one of {list(allowed)}")
    return metric


def _trial_run(job: SweepSetup, point: TrialPoint, trial_id: str) -> MlflowTarget | None:
    """The trial's nested MLflow run (under the sweep stage's run), with the point as params."""
    if job.mlflow is None:
        return None
    client = job.mlflow.client()
    parent = client.get_run(job.mlflow.run_id)
    run = client.create_run(parent.info.experiment_id, run_name=f"trial {point.key}", tags={
        "mlflow.parentRunId": job.mlflow.run_id, "stage": "sweep.trial", "trial_id": trial_id,
        "sweep_attempt": job.run_prefix, "sweep_point": point.key})
    res = point.resolution
    for key, value in {"connector": point.connector, "resolution": point.resolution_label,
                       "image_size": res.image_size if res else "model",
                       "vision": (res.name_or_path if res and res.name_or_path else "model")}.items():
        client.log_param(run.info.run_id, key, str(value))
    return MlflowTarget(job.mlflow.tracking_uri, run.info.run_id)


# The Tune actor's running trial: the folder of its Train run, where the trial's scheduler decisions are written
# for the workers (`go_<rung>`: continue after that rung; `STOP`: stopped). One trial per actor at a time.
_GATE: list[str] = []


def _decided(files: tuple[str, ...]) -> None:
    """In the trial actor: publish a decision of Tune's scheduler to the trial's Train workers."""
    if _GATE:
        for name in files:
            storage.write_bytes(storage.join(_GATE[0], name), b"")


def _trainable(job: SweepSetup) -> Any:
    """The trial as a Tune function trainable that tells its Train run what the scheduler decided.

    Tune calls `train()` for a trial's next result only when its scheduler let the trial continue, and `stop()`
    (cleanup) when it stops it: those publish `go_<rung>` / `STOP`, which the workers wait for after each rung.
    A stopped Train run so ends itself, and no controller or placement group outlives the trial (Ray's cleaner
    for those needs the dashboard).
    """
    from ray import tune
    from ray.train._internal.session import get_session
    from ray.tune.trainable.function_trainable import wrap_function

    class Trial(wrap_function(tune.with_parameters(_trial, job=job))):  # type: ignore[misc]
        def train(self) -> dict[str, Any]:
            if self.iteration:
                _decided((f"go_{self.iteration}",))
            return super().train()

        def cleanup(self) -> None:
            _decided(("STOP",))
            thread = getattr(get_session(), "training_thread", None)
            if thread is not None and thread.is_alive():
                thread.join(timeout=300)  # the trial function returns once its Train run has ended
            super().cleanup()

    return tune.with_resources(Trial, {"cpu": job.sweep.resources.driver_cpus})


def _await_decision(gate: str, rung: int, rank: int, timeout_s: float = 600.0) -> bool:
    """Collective, after a rung's report: True if the trial continues (rank 0 waits for Tune's decision)."""
    import torch
    import torch.distributed as dist

    go = torch.zeros(1)
    if rank == 0:
        deadline = time.monotonic() + timeout_s
        while not storage.exists(storage.join(gate, f"go_{rung}")):
            if storage.exists(storage.join(gate, "STOP")):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate}: no scheduler decision {timeout_s:.0f} s after rung {rung}")
            time.sleep(0.2)
        else:
            go[0] = 1
    dist.broadcast(go, src=0)
    return bool(go.item())


def _trial(config: dict[str, Any], job: SweepSetup) -> None:
    """Tune function trainable: one Ray Train run (proxy pretrain, then the finetune's rungs) reporting to Tune."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from components.train.data import ROW_COLUMNS, read_shards
    from components.train.stage import fit

    class RungsToTune(TuneReportCallback):
        """Train → Tune for the rung reports only (the checkpoint reports carry step metrics)."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if "rung" in metrics[0]:
                super().after_report(run_context, metrics, None)

    point = point_for(job.sweep, job.model, config["connector"], config["image_size"])
    trial = job.trial(point)
    target = _trial_run(job, point, tune.get_context().get_trial_id())
    name = f"{job.run_prefix}-{point.key}"
    _GATE[:] = [storage.join(job.train_storage, name)]
    rows = {stage: ray.put(read_shards(job.prepared, stage, ROW_COLUMNS)) for stage in ("pretrain", "finetune")}
    fit(_trial_loop, {"job": job, "point": point, "mlflow": target, "rows": rows, "gate": _GATE[0],
                      "started": time.time()},
        trial.finetune, run_name=name, storage_path=job.train_storage, callbacks=[RungsToTune()])


def _stage(job: Any, rt: Any) -> dict[str, Any] | None:
    """Train one stage of the trial, or take its summary when a previous attempt of the run finished it."""
    from components.train.recipe import train

    done = storage.join(job.out, "summary.json")
    if storage.exists(done):
        return storage.read_json(done) if rt.rank == 0 else None
    return train(job, rt)


def _trial_loop(config: dict[str, Any]) -> None:
    """Each Train worker of a trial: proxy pretrain, then finetune segments; after each, rank 0 evaluates the
    dev benchmark and every rank reports (rank 0's metrics reach Tune, whose ASHA may then stop the trial)."""
    from components.train.recipe import plan
    from components.train.runtime import RayRuntime, StopRequested

    job: SweepSetup = config["job"]
    point: TrialPoint = config["point"]
    target: MlflowTarget | None = config["mlflow"]
    sweep, trial = job.sweep, job.trial(point)
    bench = dev_benchmark(sweep)
    folder = storage.join(job.out, "trials", point.key)
    started, gate = config["started"], config["gate"]
    stop_file = storage.join(gate, "STOP")
    try:
        t0 = time.time()
        rt = RayRuntime(config["rows"]["pretrain"], stop_file)
        pre = _stage(plan("pretrain", trial.pretrain, trial.model, job.seed, prepared=job.prepared,
                          out=storage.join(folder, "pretrain"), mlflow=target), rt)
        train_s, eval_s = time.time() - t0, 0.0
        connector = storage.join(folder, "pretrain", "connector.safetensors")
        rt = RayRuntime(config["rows"]["finetune"], stop_file)
        finetune = plan("finetune", trial.finetune, trial.model, job.seed, prepared=job.prepared, out="")
        stops = rung_steps(finetune.total_steps, sweep.rungs)
        for rung, stop in enumerate(stops, 1):
            seg = storage.join(folder, f"rung{rung}")
            reported = storage.join(seg, "reported.json")
            if not storage.exists(reported):  # a restarted worker group skips the rungs Tune has
                t0 = time.time()
                fin = _stage(plan("finetune", trial.finetune, trial.model, job.seed, prepared=job.prepared,
                                  out=storage.join(seg, "finetune"), init_connector=connector, mlflow=target,
                                  stop_at_step=stop), rt)
                train_s += time.time() - t0
                metrics: dict[str, Any] = {}
                if rt.rank == 0:  # the others wait in the report below
                    assert pre is not None and fin is not None
                    t0 = time.time()
                    value = _dev_value(job, trial, bench, seg)
                    eval_s += time.time() - t0
                    metrics = {
                        bench.metric: float(value) if value is not None else math.nan, "rung": rung,
                        "train_loss": fin.get("final_loss_mean"), "pretrain_loss": pre.get("final_loss_mean"),
                        "pretrain_steps": pre["steps"], "finetune_steps": fin["steps"],
                        "wall_s": time.time() - started, "train_s": train_s, "eval_s": eval_s,
                        "mlflow_run_id": target.run_id if target else "",
                    }
                    if target is not None:
                        target.log_metrics({f"sweep/{k}": v for k, v in metrics.items()
                                            if k not in ("rung", "mlflow_run_id")}, step=rung)
                    print(f"[sweep] {point.key} rung {rung}/{len(stops)}: {bench.metric} {value} after "
                          f"{fin['steps']} finetune steps, {metrics['wall_s']:.0f} s", flush=True)
                rt.report(metrics)  # Train → Tune (RungsToTune): its scheduler decides on this rung
                if rt.rank == 0:
                    storage.write_json(reported, metrics)
                    _remove(storage.join(seg, "finetune", "model"))  # evaluated; the summary and answers stay
            if rung < len(stops) and not _await_decision(gate, rung, rt.rank):
                raise StopRequested(f"stopped by the scheduler after rung {rung}")
    except StopRequested as e:
        print(f"[sweep] {point.key}: {e}", flush=True)


def _dev_value(job: SweepSetup, trial: TrialSetup, bench: Any, seg: str) -> float | None:
    """The dev benchmark's metric for the rung's model (rank 0, in this process, on its device)."""
    from components.evaluate.harness import evaluate_benchmarks

    dev = job.sweep.dev
    with storage.staged_dir(storage.join(seg, "eval")) as eval_out:
        (result,) = evaluate_benchmarks(
            {bench.name: job.dev_folder},  # as stored (maybe s3://): its questions are fetched to this node
            model_dir=storage.join(seg, "finetune", "model"), out_dir=eval_out, template=job.template,
            batch_size=dev.batch_size, num_actors=1, use_gpu=trial.finetune.use_gpu, limit=dev.limit,
            cpus_per_actor=max(1.0, job.sweep.resources.driver_cpus), in_process=True)
    return result.get("value")


def _remove(path: str) -> None:
    """Best effort: delete a folder (local or remote) that is no longer needed."""
    fs, inner = storage.filesystem(path)
    try:
        if fs.exists(inner):
            fs.rm(inner, recursive=True)
    except OSError as e:
        print(f"[sweep] could not remove {path}: {e}", flush=True)


def _records(results: Any, job: SweepSetup, metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """One record per grid point (grid order), from Tune's results: every reported rung, status, error."""
    by_point: dict[tuple[str, int | None], Any] = {}
    for r in results:
        by_point[(r.config["connector"], r.config["image_size"])] = r
    keep = tuple(dict.fromkeys((*metrics, *REPORTED)))
    records = []
    for point in grid(job.sweep, job.model):
        r = by_point.get((point.connector, point.image_size))
        rungs: list[dict[str, Any]] = []
        run_id, trial_id, error = None, None, None
        if r is not None:
            frame = r.metrics_dataframe
            for row in ([] if frame is None else frame.to_dict("records")):
                rungs.append({k: _plain(row.get(k)) for k in keep})
                run_id = row.get("mlflow_run_id") or run_id
            trial_id = (r.metrics or {}).get("trial_id") or Path(str(r.path)).name
            error = f"{type(r.error).__name__}: {r.error}" if r.error else None
        else:
            error = "Tune returned no result for this point"
        status = "error" if error else ("completed" if len(rungs) >= job.sweep.rungs else "stopped")
        records.append({**point.as_dict(), "key": point.key, "trial_id": trial_id, "status": status,
                        "rungs": rungs, "error": error, "mlflow_run_id": run_id or None})
    return records


def _plain(x: Any) -> Any:
    """numpy scalars and NaN to JSON-friendly values."""
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _close_trial_runs(job: SweepSetup, records: list[dict[str, Any]]) -> None:
    """Tune kills a trial's process at its last report (or it failed), so the driver finishes each trial's
    MLflow run: status, ASHA decision, cost. Runs are found by their tags, also for trials that never reported."""
    if job.mlflow is None:
        return
    from mlflow.exceptions import MlflowException

    client = job.mlflow.client()
    parent = client.get_run(job.mlflow.run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{job.mlflow.run_id}' and "
                              f"tags.sweep_attempt = '{job.run_prefix}'", max_results=1000)
    by_point = {r.data.tags.get("sweep_point"): r.info.run_id for r in runs}
    for t in records:
        t["mlflow_run_id"] = by_point.get(t["key"], t["mlflow_run_id"])
        if not t["mlflow_run_id"]:
            continue
        last = t["rungs"][-1] if t["rungs"] else {}
        try:
            client.set_tag(t["mlflow_run_id"], "status", t["status"])
            client.set_tag(t["mlflow_run_id"], "asha", "stopped_early" if t["status"] == "stopped" else "kept")
            if t["error"]:
                client.set_tag(t["mlflow_run_id"], "error", t["error"][:5000])
            target = MlflowTarget(job.mlflow.tracking_uri, t["mlflow_run_id"])
            target.log_metrics({f"cost/{k}": last.get(k) for k in ("wall_s", "pretrain_steps", "finetune_steps")
                                if last.get(k) is not None} | {"rungs_done": len(t["rungs"])})
            client.set_terminated(t["mlflow_run_id"], "FAILED" if t["error"] else "FINISHED")
        except MlflowException as e:
            print(f"[sweep] could not finish MLflow run of {t['key']}: {e}", flush=True)


def run_sweep(*, sweep: SweepConfig, model: ModelSpec, pretrain: TrainStageConfig, finetune: TrainStageConfig,
              seed: int, prepared: str, dev_folder: DataFile, template: TemplateName, run: StageRun) -> dict[str, Any]:
    """Search connector × resolution (each trial: a proxy pretrain and finetune of `prepared` with `model` at its
    point, scored on the dev benchmark in `dev_folder` after each rung); write the outputs; return the metrics."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    bench = dev_benchmark(sweep)
    metric = sweep_metric(sweep, bench)
    attempt = time.strftime("%Y%m%d-%H%M%S")
    job = SweepSetup(sweep=sweep, model=model, pretrain=pretrain, finetune=finetune, seed=seed, template=template,
                     prepared=prepared, dev_folder=dev_folder, out=run.out,
                     train_storage=storage.join(run.storage, "ray_train"),
                     run_prefix=f"sweep-{run.fingerprint}-{attempt}", metric=metric, mlflow=run.mlflow)
    points = grid(sweep, model)
    for point in points:  # every trial's setup is valid before any trial starts
        job.trial(point)
    out, mlflow, storage_root = run.out, run.mlflow, run.storage
    tune_storage = storage.join(storage_root, "ray_tune")
    fs, inner = storage.pyarrow_filesystem(tune_storage) if storage.is_remote(tune_storage) else (
        None, os.path.abspath(tune_storage))
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=sweep.rungs,
                               grace_period=sweep.asha.grace_period, reduction_factor=sweep.asha.reduction_factor)
                 if sweep.asha.enabled else FIFOScheduler())
    connectors = list(dict.fromkeys(p.connector for p in points))
    sizes = list(dict.fromkeys(p.image_size for p in points))
    trainable = _trainable(job)
    tuner = tune.Tuner(
        trainable,
        param_space={"connector": tune.grid_search(connectors), "image_size": tune.grid_search(sizes)},
        tune_config=tune.TuneConfig(metric=metric, mode=sweep.mode, scheduler=scheduler, num_samples=1,
                                    max_concurrent_trials=sweep.max_concurrent_trials,
                                    trial_dirname_creator=lambda t: f"{t.config['connector']}-{t.config['image_size']}"),
        run_config=tune.RunConfig(name=job.run_prefix, storage_path=inner, storage_filesystem=fs, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    started = time.time()
    results = tuner.fit()
    wall = time.time() - started
    records = _records(results, job, (metric, bench.metric))
    _close_trial_runs(job, records)
    for point in points:  # the trials' Train runs (checkpoints between rungs) served the sweep only
        _remove(storage.join(job.train_storage, f"{job.run_prefix}-{point.key}"))
    experiment = storage.join(tune_storage, job.run_prefix)
    summary = best_json(records, metric, sweep.mode, sweep.rungs,
                        {"wall_s": wall, "tune_experiment": experiment, "dev": sweep.dev.model_dump(mode="json"),
                         "asha": sweep.asha.model_dump(mode="json")})
    files = {
        "best.json": json.dumps(summary, indent=2, sort_keys=True, default=str).encode(),
        "ablation.csv": to_csv(table_rows(records, metric)).encode(),
        "ablation.md": to_markdown(records, metric, sweep.mode, next(t for t in records if t["key"] ==
                                                                        summary["best"]["key"]), sweep.rungs).encode(),
        "heatmap.png": heatmap_png(records, metric, sweep.mode, sweep.rungs),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        if mlflow is not None:
            client = mlflow.client()
            client.log_artifacts(mlflow.run_id, tmp, "sweep")
            best = summary["best"]
            params = {"best.connector": best["connector"], "best.resolution": best["label"],
                      "sweep.metric": metric, "sweep.mode": sweep.mode}
            for k, v in params.items():
                client.log_param(mlflow.run_id, k, str(v))
        # best.json goes last: readers take its presence as a complete output
        for name in [n for n in files if n != "best.json"] + ["best.json"]:
            storage.write_bytes(storage.join(out, name), files[name])
    counts = summary["counts"]
    best = summary["best"]
    return {"trials": counts["trials"], "completed": counts["completed"], "stopped_early": counts["stopped_early"],
            "errors": counts["errors"], "best_connector": best["connector"], "best_resolution": best["label"],
            f"best_{metric}": best["value"], "sweep_wall_s": round(wall, 1)}
