"""The export stage: finetuned model → plain transformers folder → parity check → MLflow Model Registry.

Writes under `out/`: `model/` (the LlavaForConditionalGeneration folder, see package.py), `parity.json`
(every parity prompt with both answers) and `export.json` (what was exported and where it is registered).
A remote `out` (s3://…) is written to a local temporary folder first, then uploaded. A parity mismatch
fails the stage after parity.json is written and logged, and nothing is registered.

Where it runs: this function is the job's driver (on the head node) and only orchestrates. It reads the
model's config.json and the evaluations' metrics.json, fails early on what it can check without weights,
and hands the work (job.py: load, write, parity, register) to a Ray task with `resources` (a GPU for a
7B/13B model), on whatever node Ray places it. The driver's memory stays flat as the model grows.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from components.core import storage
from components.core.fields import SCHEDULING, DataFile
from components.core.stage_run import StageRun
from components.core.templates import TemplateName

from .job import ExportJob, Registration
from .spec import ExportResources

log = logging.getLogger(__name__)

WAIT_REPORT_S = 60.0  # how often a wait for a node says what it waits for


class ExportUnplaced(RuntimeError):
    """No node of the Ray cluster took the export's resources in time; the message names the settings."""


def _asked(resources: ExportResources) -> str:
    return f"{resources.cpus:g} CPU" + (" and 1 GPU" if resources.use_gpu else "")


def _wait_placed(pg: Any, resources: ExportResources) -> str:
    """The id of the node that reserved the export's resources; an error naming the settings when none did
    within start_timeout_s (an autoscaler may add a node meanwhile: the wait says what it waits for)."""
    import ray
    from ray.util.placement_group import placement_group_table

    ready = pg.ready()
    deadline = time.monotonic() + resources.start_timeout_s
    while True:
        done, _ = ray.wait([ready], timeout=max(0.0, min(WAIT_REPORT_S, deadline - time.monotonic())))
        if done:
            return str(placement_group_table(pg)["bundles_to_node_id"][0])
        total, free = ray.cluster_resources(), ray.available_resources()
        have = (f"the cluster has {total.get('CPU', 0):g} CPUs ({free.get('CPU', 0):g} free) and "
                f"{total.get('GPU', 0):g} GPUs ({free.get('GPU', 0):g} free)")
        if time.monotonic() >= deadline:
            fix = ("add a GPU node, or set export.use_gpu: false to run it on a CPU node with the memory"
                   if resources.use_gpu else "lower export.cpus, or add a node with that many CPUs")
            raise ExportUnplaced(f"export: no Ray node could take the export ({_asked(resources)}) within "
                                 f"{resources.start_timeout_s:g} s; {have}: {fix}")
        log.info("export: waiting for a node with %s (export.use_gpu, export.cpus); %s", _asked(resources), have)


def _on_ray(job: ExportJob, resources: ExportResources) -> dict[str, Any]:
    """export_model(job) as a Ray task holding `resources`, on the node Ray places it; what it returns (small:
    no weights). The resources are reserved first (a placement group), so the wait for a node is bounded and
    reported apart from the export's own run time, however long that takes."""
    import ray
    from ray.exceptions import NodeDiedError, OutOfMemoryError, WorkerCrashedError
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from components.evaluate.pool import close_warm_pools

    from .job import export_model

    # The export runs after every evaluate job of this run (they are its inputs): their warm generation
    # replicas hold GPUs (one per replica, all of a node in the 7B/13B configs) that the export may need.
    close_warm_pools()
    gpus = 1 if resources.use_gpu else 0
    pg = placement_group([{"CPU": resources.cpus, **({"GPU": gpus} if gpus else {})}])
    try:
        node = _wait_placed(pg, resources)
        log.info("export: running on node %s with %s", node, _asked(resources))
        task = ray.remote(export_model).options(
            num_cpus=resources.cpus, num_gpus=gpus, max_retries=0,  # a rerun of the stage retries, not Ray
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0))
        try:
            return ray.get(task.remote(job))
        except (WorkerCrashedError, OutOfMemoryError, NodeDiedError) as e:  # the process died, not the export
            raise RuntimeError(f"export: the export task on node {node} ({_asked(resources)}) died: {e}") from None
    finally:
        remove_placement_group(pg)


def run_export(
    *,
    model: str,
    evaluations: dict[str, str],
    benchmark_folders: dict[str, DataFile],
    template: TemplateName,
    parity_sample: int,
    allow_custom_connector: bool,
    registered_name: str,
    pipeline: str,
    resources: Annotated[ExportResources, SCHEDULING],
    run: StageRun,
    parity_max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Export the finetuned `model` to `out/model`, check parity, register it; returns the stage metrics.

    `evaluations` maps each evaluated benchmark to its evaluation output (metrics.json → registry tags;
    answers → parity prompts), `benchmark_folders` to its folder of questions (parity prompts with their
    images). `parity_sample` questions are answered by plain transformers and by our path and must match;
    `parity_max_new_tokens` caps each answer (default: PARITY_MAX_NEW_TOKENS). The model is registered as
    `registered_name`, tagged with the `pipeline` and this stage's fingerprint. The work runs in a Ray task
    with `resources` (CPUs, a GPU with `use_gpu`: the parity check then runs in bf16 on it).
    """
    from .chat_template import chat_template
    from .package import CUSTOM_LOADER, check_connector, model_card, saved_connector_spec
    from .parity import PARITY_MAX_NEW_TOKENS, parity_failure
    from .registry import eval_tags, read_eval_results

    model_dir, out, fingerprint, name = model, run.out, run.fingerprint, registered_name
    # What can be checked without weights fails now, before a node is asked for: the connector, the template.
    spec = saved_connector_spec(model_dir)
    custom = check_connector(spec, allow_custom_connector)
    jinja = chat_template(template)
    tags = eval_tags(read_eval_results(evaluations))
    loader = CUSTOM_LOADER if custom else "transformers"
    summary = {"model": storage.join(run.committed, "model"), "registered_model": name, "mm_projector_type": spec,
               "loader": loader, "pipeline_fingerprint": fingerprint, "source_model_dir": model_dir,
               "eval_tags": tags}
    registration = Registration(
        name=name, as_pyfunc=not custom,
        tags={**tags, "pipeline_fingerprint": fingerprint, "pipeline": pipeline, "mm_projector_type": spec,
              "loader": loader, "export_path": summary["model"]},
        description=f"Exported from {model_dir} by pipeline {pipeline} (fingerprint {fingerprint}).")
    job = ExportJob(
        model_dir=model_dir, out=out, template=template, chat_template=jinja,
        card=model_card(name=name, spec=spec, custom=custom, fingerprint=fingerprint, eval_tags=tags),
        custom_connector=custom, evaluations=dict(evaluations), benchmark_folders=dict(benchmark_folders),
        parity_sample=parity_sample, parity_max_new_tokens=parity_max_new_tokens or PARITY_MAX_NEW_TOKENS,
        summary=summary, registration=registration, mlflow=run.mlflow, use_gpu=resources.use_gpu,
        cpus=resources.cpus)

    done = _on_ray(job, resources)
    report, version = done["report"], done["version"]
    if report["ok"] is False:
        raise parity_failure(report, storage.join(out, "parity.json"))
    metrics: dict[str, Any] = {
        "parity_checked": report["n_checked"],
        "parity_mismatches": report["n_mismatches"],
        "registered_model": name,
        "registered_version": version,
        "registry": "registered" if version is not None else "skipped: no MLflow tracking",
        "custom_connector": custom,
        "model_mb": round(done["summary"]["bytes"] / 2**20, 3),
    }
    if report["ok"] is not None:
        metrics["parity_ok"] = report["ok"]
    return metrics
