"""`llava-pipeline plan CONFIG --resources [--cluster MANIFEST] [--gpu TYPE] [--json]`, and the fit check that
`run` and `submit` make before anything starts.

The table: per stage, where it runs (node group), its GPUs, the peak host memory of the busiest node it uses,
GPU memory per device, local disk per node, bytes written to storage, wall time and GPU-hours; then the head
(the driver, which must stay flat as the model grows). It needs only the config: missing data files make the
data-dependent numbers approximate, never an error. A stage that does not fit the node it lands on is an
error naming the stage, the resource, what it needs and what the node has.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from components.core import storage
from pipelines.config import PipelineConfig

from .artifacts import storage_root
from .cluster import load_cluster
from .executor import PipelineError
from .placement import Placed, Placement, place

GiB = 2**30


def plan_resources(cfg: PipelineConfig, cluster: str | None = None, gpu: str | None = None) -> Placement:
    from pipelines.resources.needs import DRIVER_BASE, TRACKING_BYTES, stage_needs

    root = storage_root(cfg)
    nodes = load_cluster(cluster, root)
    if gpu:
        from components.train.throughput import gpu_type

        nodes = nodes.with_gpu_type(gpu_type(gpu).name)
    local = not storage.is_remote(root)
    needs = stage_needs(cfg)
    placement = place(needs, nodes, driver_base=DRIVER_BASE, storage_local=local and nodes.single_node)
    return placement if not local else _with_tracking(placement, TRACKING_BYTES)


def _with_tracking(p: Placement, tracking: int) -> Placement:
    from dataclasses import replace

    return replace(p, notes=(*p.notes, f"MLflow's store and the run log: about {tracking / 2**20:.0f} MiB"))


def size(n: float | None) -> str:
    if n is None:
        return "-"
    if n < GiB:
        return f"{n / 2**20:,.0f} MiB"
    return f"{n / GiB:,.1f} GiB" if n < 1000 * GiB else f"{n / 2**40:,.2f} TiB"


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:,.1f} h"


def _row(p: Placed) -> list[str]:
    group = p.group.name if p.group else "-"
    gpus = f"{p.nodes}x{p.per_node}" if p.need.gpus_each else "-"
    return [p.need.stage, group, gpus, size(p.host), size(p.gpu) if p.gpu else "-", size(p.disk),
            size(p.need.storage + p.timing.storage), _hours(p.timing.seconds),
            "-" if p.gpu_hours is None else f"{p.gpu_hours:,.0f}"]


def format_resources(p: Placement) -> str:
    head = ["stage", "runs on", "GPUs", "host mem/node", "GPU mem/GPU", "disk/node", "writes", "time", "GPU-h"]
    rows = [_row(s) for s in p.stages]
    rows.append(["driver (head)", p.cluster.head.name, "-", size(p.head_host), "-", "-", "-", "-", "-"])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"cluster: {p.cluster.name}"]
    for g in p.cluster.groups:
        gpus = f", {g.gpus}x {g.gpu_type or 'GPU of unknown type'}" if g.gpus else ""
        disk = size(g.disk) if g.disk is not None else "not declared"
        lines.append(f"  {g.name}: up to {g.max_nodes} node(s) of {g.cpus:g} CPUs{gpus}, {size(g.memory)} memory, "
                     f"disk {disk}")
    lines += ["", "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    seconds = [s.timing.seconds for s in p.stages if s.timing.seconds is not None]
    gpu_hours = sum(s.gpu_hours or 0 for s in p.stages)
    written = sum(s.need.storage + s.timing.storage for s in p.stages)
    lines.append(f"\ntraining time {_hours(sum(seconds)) if seconds else '-'}, {gpu_hours:,.0f} GPU-hours "
                 f"(stages with a throughput row); {size(written)} written to storage")
    for s in p.stages:
        for note in [s.timing.note, *s.need.notes]:
            if note:
                lines.append(f"  {s.need.stage}: {note}")
    lines += [f"  {n}" for n in p.notes]
    if p.errors:
        lines.append("\ndoes not fit:")
        lines += [f"  {e}" for e in p.errors]
    return "\n".join(lines)


def resources_json(p: Placement) -> dict[str, Any]:
    def stage(s: Placed) -> dict[str, Any]:
        return {"runs_on": s.group.name if s.group else None, "nodes": s.nodes, "processes_per_node": s.per_node,
                "gpus": s.gpus, "host_memory_per_node": s.host, "gpu_memory_per_gpu": s.gpu or None,
                "disk_per_node": s.disk, "storage_written": s.need.storage + s.timing.storage,
                "seconds": s.timing.seconds, "gpu_hours": s.gpu_hours, "time_note": s.timing.note,
                "notes": list(s.need.notes), "errors": list(s.errors)}
    return {
        "cluster": {"name": p.cluster.name, "groups": [
            {"name": g.name, "head": g.head, "max_nodes": g.max_nodes, "cpus": g.cpus, "gpus": g.gpus,
             "gpu_type": g.gpu_type, "memory": g.memory, "disk": g.disk, "source": g.source}
            for g in p.cluster.groups]},
        "stages": {s.need.stage: stage(s) for s in p.stages},
        "driver": {"runs_on": p.cluster.head.name, "host_memory": p.head_host, "errors": list(p.head_errors)},
        "errors": p.errors,
    }


def fit_errors(p: Placement, running: set[str] | None = None) -> list[str]:
    """The plan's errors: the head's, and those of the stages in `running` (every stage when None)."""
    return [*p.head_errors, *(e for s in p.stages if running is None or s.need.stage in running for e in s.errors)]


def check_fits(cfg: PipelineConfig, cluster: str | None = None, running: set[str] | None = None) -> None:
    """Raise before Ray starts when a stage that will run would not fit the node it lands on (`running`: the
    stages, evaluate jobs as "evaluate"; None: all). `run` checks this machine, except inside a Ray cluster
    (RAY_ADDRESS set: a submitted job's driver), which `submit --cluster MANIFEST` checks before submitting.
    A model whose architecture cannot be read offline skips the check with a warning: the run itself fetches it.
    """
    if cluster is None and os.environ.get("RAY_ADDRESS"):
        return
    from components.models.arch import ArchNotFound

    try:
        placement = plan_resources(cfg, cluster)
    except ArchNotFound as e:
        print(f"warning: resource check skipped: {e}", file=sys.stderr)
        return
    errors = fit_errors(placement, running)
    if errors:
        raise PipelineError("the run does not fit its cluster (`llava-pipeline plan CONFIG --resources` shows "
                            "the whole plan):\n  " + "\n  ".join(errors))
