"""Where each stage of a plan lands on a cluster, what the busiest node it uses must hold, and whether it fits.

A pipeline describes each stage's needs (`Need`: processes with their CPUs, GPUs, memory and disk, what runs
on the head, what it writes to storage, how long it takes on a GPU type); this module places them on the node
groups of a `Cluster` the way Ray would (Ray Train and actor pools pack their processes onto as few nodes as
the GPUs and CPUs allow) and checks the busiest node against what the group's nodes have. Pure arithmetic.

Ray's own processes are part of every node (measured with `python -m bench.resources_measure tiny --breakdown`, Ray 2.60,
PSS on this project's CPU machine): the head's GCS, dashboard (a dozen processes), raylet and agents ~600 MiB;
a worker node's raylet, dashboard agent, runtime-env agent and log monitor ~190 MiB; and Ray keeps up to one
idle worker process per CPU once tasks ran, ~120 MiB each (the CPUs Ray schedules: `num-cpus`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .cluster import Cluster, NodeGroup

MiB, GiB = 2**20, 2**30
RAY_HEAD_SYSTEM = 600 * MiB
RAY_NODE_SYSTEM = 190 * MiB
RAY_IDLE_WORKER = 120 * MiB


@dataclass(frozen=True)
class Timing:
    seconds: float | None  # None: no estimate (the note says why)
    note: str
    storage: int = 0  # bytes written that depend on the time (checkpoints on a time cadence)


@dataclass(frozen=True)
class Need:
    """One stage's needs. `tasks` processes (Ray Train workers, actors, tasks) of cpus_each/gpus_each/host_each
    land on nodes of the group `where` names; *_node amounts once per node used, *_first on the first node
    only (rank 0, the stage's coordinator); `head_host` runs on the head (the driver's share and the stage's
    coordinating actors)."""

    stage: str
    where: Literal["head", "cpu", "gpu"]
    tasks: int = 0
    fill: bool = False  # as many tasks as the node's CPUs allow (Ray Data)
    cpus_each: float = 0.0
    gpus_each: int = 0
    host_each: int = 0
    host_node: int = 0
    host_first: int = 0
    gpu_each: int = 0  # bytes on each GPU a task holds
    disk_each: int = 0
    disk_node: int = 0
    disk_first: int = 0
    disk_resume: int = 0  # per node while a resume copies the checkpoint in (not at the same time as saving)
    head_host: int = 0
    storage: int = 0  # bytes written to storage
    storage_kept: int = 0  # of which still stored once the stage is done
    storage_peak: int = 0  # stored at once while it runs (checkpoints in flight included)
    timing: Callable[[str | None], Timing] | None = None  # by the GPU type the stage runs on
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placed:
    need: Need
    group: NodeGroup | None
    nodes: int
    per_node: int  # tasks on the busiest node
    host: int  # bytes of host memory on the busiest node, Ray's own processes included
    gpu: int  # bytes per GPU
    disk: int  # bytes of local disk on the busiest node
    timing: Timing
    errors: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        return self.need.tasks * self.need.gpus_each

    @property
    def gpu_hours(self) -> float | None:
        return None if self.timing.seconds is None or not self.gpus else self.gpus * self.timing.seconds / 3600


@dataclass(frozen=True)
class Placement:
    cluster: Cluster
    stages: tuple[Placed, ...]
    head_host: int  # the head's peak: Ray's processes, the driver and the stages' share on it
    head_errors: tuple[str, ...] = ()
    storage_local: bool = False  # storage lives on the single node's disk (counted in its disk)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> list[str]:
        return [*self.head_errors, *(e for p in self.stages for e in p.errors)]


def _gb(n: float) -> str:
    return f"{n / GiB:,.1f} GiB" if n < 1000 * GiB else f"{n / 2**40:,.2f} TiB"


def gpu_memory(group: NodeGroup) -> int | None:
    if not group.gpu_type:
        return None
    from components.train.throughput import gpu_type

    try:
        return int(gpu_type(group.gpu_type).memory_gib * GiB)
    except ValueError:
        return None


def candidates(cluster: Cluster, need: Need) -> list[NodeGroup]:
    """The groups a stage may land on: the head for driver work, GPU groups for GPU work, CPU-only worker
    groups for CPU work (any group with CPUs when there is none: a single machine)."""
    if need.where == "head" or cluster.single_node:
        return [cluster.head]
    if need.where == "gpu":
        return [g for g in cluster.groups if g.gpus > 0]
    cpu_only = [g for g in cluster.groups if not g.head and g.cpus > 0 and g.gpus == 0]
    return cpu_only or [g for g in cluster.groups if g.cpus > 0]


def _per_node(need: Need, group: NodeGroup) -> int:
    limits = []
    if need.cpus_each:
        limits.append(math.floor(group.cpus / need.cpus_each + 1e-9))
    if need.gpus_each:
        limits.append(group.gpus // need.gpus_each)
    if need.fill:
        return max(0, min(limits)) if limits else 1
    return max(0, min([need.tasks, *limits]))


def ray_system(group: NodeGroup, *, idle_pool: bool = True) -> int:
    """Ray's own processes on a node; `idle_pool`: with its idle worker processes, one per CPU."""
    idle = int(group.cpus) * RAY_IDLE_WORKER if idle_pool else 0
    return (RAY_HEAD_SYSTEM if group.head else RAY_NODE_SYSTEM) + idle


def _place(need: Need, group: NodeGroup, cluster: Cluster, storage_disk: int, head_extra: int) -> Placed:
    errors: list[str] = []
    tasks = need.tasks
    per_node = _per_node(need, group) if (need.tasks or need.fill) else 0
    where = f"{group.name} ({group.source})"
    if (need.tasks or need.fill) and per_node == 0:
        gpu_short = need.gpus_each > group.gpus
        what = f"{need.gpus_each} GPU" if gpu_short else f"{need.cpus_each:g} CPUs"
        have = f"{group.gpus} GPUs" if gpu_short else f"{group.cpus:g} CPUs"
        errors.append(f"{need.stage}: {'GPUs' if gpu_short else 'CPUs'}: a process needs {what}; a node of "
                      f"{where} has {have}")
        per_node = 1
    if need.fill:
        tasks = per_node
    nodes = math.ceil(tasks / per_node) if tasks else (1 if need.where != "head" else 0)
    if nodes > group.max_nodes:
        errors.append(f"{need.stage}: nodes: {tasks} processes at {per_node} per node need {nodes} nodes of "
                      f"{where}; the group allows {group.max_nodes}")
    k = min(tasks, per_node)
    tasks_host = k * need.host_each
    if need.fill:  # Ray Data tasks run in Ray's pooled worker processes: they are the idle pool, busy
        tasks_host = max(0, tasks_host - int(group.cpus) * RAY_IDLE_WORKER)
    # A stage that runs in the driver (synth, first of all) starts no Ray worker, and Ray forks its idle pool
    # only once tasks ran: measured on the tiny run, synth's peak was Ray's head processes and the driver alone.
    host = (ray_system(group, idle_pool=need.where != "head") + need.host_node + need.host_first + tasks_host
            + (head_extra if group.head else 0))
    disk = need.disk_node + max(need.disk_first + k * need.disk_each, need.disk_resume) + (
        storage_disk if cluster.single_node else 0)
    gpu = need.gpu_each
    if host > group.memory:
        errors.append(f"{need.stage}: host memory: needs {_gb(host)} on a node of {where}; the node has "
                      f"{_gb(group.memory)}")
    limit = gpu_memory(group)
    if gpu and limit is not None and gpu > limit:
        errors.append(f"{need.stage}: GPU memory: needs {_gb(gpu)} per GPU; a {group.gpu_type} of {where} has "
                      f"{_gb(limit)}")
    if group.disk is not None and disk > group.disk:
        errors.append(f"{need.stage}: disk: needs {_gb(disk)} of local disk on a node of {where}; the node has "
                      f"{_gb(group.disk)}")
    timing = need.timing(group.gpu_type if need.gpus_each else None) if need.timing else Timing(None, "")
    return Placed(need=need, group=group, nodes=nodes, per_node=k, host=host, gpu=gpu, disk=disk,
                  timing=timing, errors=tuple(errors))


def place(needs: list[Need], cluster: Cluster, *, driver_base: int, storage_local: bool = False) -> Placement:
    """Each stage on the first candidate group it fits (else on the first candidate, with its errors), and the
    head's peak: Ray's head processes, the driver's `driver_base` and the largest `head_host` of a stage."""
    placed: dict[str, Placed] = {}
    kept = 0  # storage still held by the stages before (on the single node's disk when storage is local)
    for need in needs:
        storage_disk = kept + need.storage_peak if storage_local else 0
        head_extra = driver_base + need.head_host
        options = [_place(need, g, cluster, storage_disk, head_extra) for g in candidates(cluster, need)]
        if not options:
            placed[need.stage] = Placed(need=need, group=None, nodes=0, per_node=0, host=0, gpu=0, disk=0,
                                        timing=Timing(None, ""), errors=(
                f"{need.stage}: the cluster has no node group with {'GPUs' if need.where == 'gpu' else 'CPUs'} "
                f"({cluster.name})",))
        else:
            placed[need.stage] = next((p for p in options if not p.errors), options[0])
        kept += need.storage_kept
    head = cluster.head
    peak = ray_system(head) + driver_base + max((n.head_host for n in needs), default=0)
    head_errors = []
    if not cluster.single_node and peak > head.memory:
        worst = max(needs, key=lambda n: n.head_host).stage if needs else "-"
        head_errors.append(f"driver: host memory: the head needs {_gb(peak)} (Ray's processes, the driver and "
                           f"{worst}'s share); the head of {head.source} has {_gb(head.memory)}")
    return Placement(cluster=cluster, stages=tuple(placed.values()), head_host=peak,
                     head_errors=tuple(head_errors), storage_local=storage_local)
