"""The `evaluate.<benchmark>` stage: one benchmark answered by the run's warm generation pool, scored, written.

Every benchmark job of a run shares one warm pool per model (pool.py): replicas start and load the model
once. The benchmark's folder is read as the storage names it: question files are fetched on this node,
images by each generation replica on its own. Outputs are written locally, then uploaded (s3://) when the
job succeeds. Heavy libraries are imported when the stage runs, so planning reads this signature cheaply.
"""

from __future__ import annotations

from typing import Annotated, Any

from components.core import storage
from components.core.fields import SCHEDULING, DataFile, ModelPath
from components.core.stage_run import StageRun
from components.core.templates import TemplateName

from .judge import ENV_API_KEY, JudgeConfig, JudgeFailed, JudgeNotConfigured
from .spec import Replicas


def run_evaluate(*, benchmark: str, folder: DataFile, model: ModelPath, template: TemplateName, batch_size: int,
                 use_gpu: bool, limit: int | None, parity_sample: int, blank_images: bool,
                 judge: JudgeConfig | JudgeNotConfigured | None, replicas: Annotated[Replicas, SCHEDULING],
                 run: StageRun) -> dict[str, Any]:
    """Answer and score `benchmark` (its questions in `folder`) with `model`; with `blank_images`, score it a
    second time with every image blank (the image-dependence check). Returns the benchmark's metric, its
    status, and the parity check's mismatches. A judge that failed raises `JudgeFailed`: not a result to cache."""
    from .harness import evaluate_benchmarks
    from .pool import PoolSpec, warm_pool

    pool = warm_pool(PoolSpec(model, template, batch_size, replicas.num_actors, use_gpu, replicas.cpus_per_actor))
    with storage.staged_dir(run.out) as out:
        common = dict(model_dir=model, template=template, batch_size=batch_size, num_actors=replicas.num_actors,
                      use_gpu=use_gpu, limit=limit, judge=judge, pool=pool)
        (result,) = evaluate_benchmarks({benchmark: folder}, out_dir=out, parity_sample=parity_sample,
                                        mlflow=run.mlflow, **common)
        if result["status"] == "judge_failed":  # raised, so nothing is committed and a rerun asks the judge again
            raise JudgeFailed(f"evaluate.{benchmark}: {result.get('reason', 'the judge failed')}; nothing was "
                              f"cached: rerun once the judge answers (on a cluster its key is the cluster's "
                              f"{ENV_API_KEY})")
        metrics: dict[str, Any] = {"status": result["status"]}
        if result["status"] == "skipped":
            metrics["reason"] = result.get("reason", "")
        if result.get("value") is not None:
            metrics[result["metric"]] = result["value"]
        if result.get("parity") is not None:
            metrics["parity_mismatches"] = len(result["parity"])
        if blank_images:
            (blank,) = evaluate_benchmarks({benchmark: folder}, out_dir=storage.join(out, "blank_images"),
                                           blank_images=True, **common)
            if blank.get("value") is not None:
                metrics[f"blank_images_{blank['metric']}"] = blank["value"]
    return metrics
