"""The nodes a run can land on: node groups read from a cluster manifest, a named machine, or this machine.

`--cluster` takes a KubeRay RayJob/RayCluster manifest (head group + worker groups: the containers' resource
limits, `num-cpus`/`num-gpus` overrides, maxReplicas, ephemeral storage), a Ray cluster launcher YAML
(available_node_types: the instance type's CPUs, memory and GPUs from machines.yaml, `resources` overrides,
max_workers, the root EBS volume), or a machine name of machines.yaml (one node that is head and worker).
Without it: this machine (its CPUs, memory, the free disk under the storage root, its GPUs if nvidia-smi
lists any). Pure parsing: nothing here talks to a cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

MACHINES = Path(__file__).with_name("machines.yaml")
LOCAL_RAY_MIN_CPUS = 4  # a local Ray gets at least this many logical CPUs (run_cmd.init_ray), whatever the cores
GiB = 2**30
# Kubernetes node labels that name the GPU model (GPU feature discovery; GKE) or the instance type.
GPU_LABELS = ("nvidia.com/gpu.product", "cloud.google.com/gke-accelerator")
INSTANCE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")


class ManifestError(ValueError):
    """A cluster manifest that cannot be read as node groups; the message names the file and the field."""


@dataclass(frozen=True)
class NodeGroup:
    name: str
    head: bool  # the node the job driver runs on
    max_nodes: int
    cpus: float  # CPUs Ray schedules tasks on (0 on a head started with num-cpus 0)
    gpus: int
    gpu_type: str | None  # a GPU type of components/train/throughput.yaml, when known
    memory: int  # bytes
    disk: int | None  # bytes of local disk the node may use; None: not declared
    source: str


@dataclass(frozen=True)
class Cluster:
    name: str
    groups: tuple[NodeGroup, ...]
    single_node: bool = False  # one machine is head and worker (this machine, a named machine)

    @property
    def head(self) -> NodeGroup:
        return next(g for g in self.groups if g.head)

    def with_gpu_type(self, gpu: str) -> Cluster:
        """The same cluster with `gpu` as the GPU type of every group that has GPUs but no known type."""
        return replace(self, groups=tuple(replace(g, gpu_type=g.gpu_type or gpu) if g.gpus else g
                                          for g in self.groups))


_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40, "Pi": 2**50, "m": 1e-3}


def quantity(value: Any, where: str) -> float:
    """A Kubernetes quantity ("16Gi", "500m", "1e9", 4) as a number."""
    match = re.fullmatch(r"\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)\s*([kMGTP]i?|m)?\s*", str(value))
    if not match:
        raise ManifestError(f"{where}: {value!r} is not a Kubernetes quantity (e.g. 16Gi, 500m, 4)")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def machines() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(MACHINES.read_text())


def machine_group(name: str, *, head: bool = True, max_nodes: int = 1) -> NodeGroup:
    m = machines().get(name)
    if m is None:
        raise ManifestError(f"{name!r} is neither a manifest file nor a machine of {MACHINES.name} "
                            f"({', '.join(machines())})")
    return NodeGroup(name=name, head=head, max_nodes=max_nodes, cpus=float(m["cpus"]), gpus=int(m.get("gpus", 0)),
                     gpu_type=m.get("gpu"), memory=int(m["memory_gib"] * GiB),
                     disk=int(m["disk_gb"] * 1e9) if m.get("disk_gb") else None,
                     source=f"{MACHINES.name}: {name} ({m['source']})")


def _gpu_type_of(selector: dict[str, Any], where: str) -> str | None:
    """The GPU type (a row of throughput.yaml's `gpus:`) a pod's nodeSelector pins: a GPU product label
    (e.g. NVIDIA-A100-SXM4-80GB) or an instance type of machines.yaml; None when it pins neither."""
    from components.train.throughput import gpu_type

    for label in GPU_LABELS:
        if selector.get(label):
            try:
                return gpu_type(str(selector[label])).name
            except ValueError as e:
                raise ManifestError(f"{where}.template.spec.nodeSelector.{label}: {e}") from None
    for label in INSTANCE_LABELS:
        m = machines().get(str(selector.get(label)))
        if m and m.get("gpu"):
            return str(m["gpu"])
    return None


def _kuberay_group(spec: dict[str, Any], *, name: str, head: bool, max_nodes: int, where: str) -> NodeGroup:
    pod = (spec.get("template") or {}).get("spec") or {}
    containers = pod.get("containers") or []
    if not containers:
        raise ManifestError(f"{where}.template.spec.containers: no container")
    res = containers[0].get("resources") or {}
    limits = {**(res.get("requests") or {}), **(res.get("limits") or {})}
    params = spec.get("rayStartParams") or {}
    for key in ("cpu", "memory"):
        if key not in limits:
            raise ManifestError(f"{where}: the ray container declares no {key} (resources.limits.{key})")
    cpus = quantity(params.get("num-cpus", limits["cpu"]), f"{where}.rayStartParams.num-cpus")
    gpus = int(quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)), f"{where} nvidia.com/gpu"))
    disk = limits.get("ephemeral-storage")
    return NodeGroup(
        name=name, head=head, max_nodes=max_nodes, cpus=cpus, gpus=gpus,
        gpu_type=_gpu_type_of(pod.get("nodeSelector") or {}, where) if gpus else None,
        memory=int(quantity(limits["memory"], f"{where}.resources.limits.memory")),
        disk=int(quantity(disk, f"{where} ephemeral-storage")) if disk is not None else None, source=where)


def kuberay_cluster(doc: dict[str, Any], path: str) -> Cluster:
    kind = doc.get("kind")
    spec = (doc.get("spec") or {}).get("rayClusterSpec") if kind == "RayJob" else doc.get("spec")
    if not isinstance(spec, dict) or "headGroupSpec" not in spec:
        raise ManifestError(f"{path}: a {kind} without a {'spec.rayClusterSpec.' if kind == 'RayJob' else 'spec.'}"
                            "headGroupSpec")
    prefix = "spec.rayClusterSpec" if kind == "RayJob" else "spec"
    groups = [_kuberay_group(spec["headGroupSpec"], name="head", head=True, max_nodes=1,
                             where=f"{path}: {prefix}.headGroupSpec")]
    for i, g in enumerate(spec.get("workerGroupSpecs") or []):
        name = g.get("groupName") or f"group{i}"
        most = g.get("maxReplicas", g.get("replicas", 1))
        groups.append(_kuberay_group(g, name=name, head=False, max_nodes=int(most),
                                     where=f"{path}: {prefix}.workerGroupSpecs[{i}] ({name})"))
    return Cluster(name=path, groups=tuple(groups))


def launcher_cluster(doc: dict[str, Any], path: str) -> Cluster:
    types = doc.get("available_node_types") or {}
    head_type = doc.get("head_node_type")
    if head_type not in types:
        raise ManifestError(f"{path}: head_node_type {head_type!r} is not one of available_node_types")
    groups = []
    for name, t in types.items():
        where = f"{path}: available_node_types.{name}"
        instance = (t.get("node_config") or {}).get("InstanceType")
        base = machine_group(str(instance)) if instance in machines() else None
        res = t.get("resources") or {}
        if base is None and not {"CPU", "memory"} <= set(res):
            raise ManifestError(f"{where}: instance type {instance!r} is not in {MACHINES.name}; add it there or "
                                "give resources CPU and memory")
        volumes = (t.get("node_config") or {}).get("BlockDeviceMappings") or []
        ebs = next((v["Ebs"]["VolumeSize"] for v in volumes if (v.get("Ebs") or {}).get("VolumeSize")), None)
        head = name == head_type
        groups.append(NodeGroup(
            name=name, head=head, max_nodes=1 if head else int(t.get("max_workers", doc.get("max_workers", 1))),
            cpus=float(res.get("CPU", base.cpus if base else 0)), gpus=int(res.get("GPU", base.gpus if base else 0)),
            gpu_type=base.gpu_type if base else None,
            memory=int(res["memory"]) if "memory" in res else (base.memory if base else 0),
            disk=int(ebs) * GiB if ebs else (base.disk if base else None),
            source=f"{where} ({instance})"))
    return Cluster(name=path, groups=tuple(groups))


def _nvidia_gpus() -> tuple[int, str | None]:
    """This machine's GPU count and model, from nvidia-smi (0 and None without one)."""
    if not shutil.which("nvidia-smi"):
        return 0, None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0, None
    names = [ln.strip() for ln in out.splitlines() if ln.strip()]
    return len(names), (f"{names[0]}" if names else None)


def _memory_limit() -> int:
    """Physical memory, or the cgroup's limit when lower (a container)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def free_disk(path: str) -> int:
    """Free bytes on the filesystem holding `path` (its nearest existing ancestor)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def local_cluster(storage_root: str) -> Cluster:
    """This machine as one node: the CPUs a local Ray schedules on, memory, the free disk where a local storage root lives (else the
    working directory's), GPUs as nvidia-smi lists them."""
    gpus, product = _nvidia_gpus()
    gpu_type = None
    if product:
        from components.train.throughput import gpu_type as table_type

        try:
            gpu_type = table_type(product).name
        except ValueError:
            gpu_type = None
    disk_at = storage_root if "://" not in storage_root else os.getcwd()
    cpus = float(max(LOCAL_RAY_MIN_CPUS, os.cpu_count() or 1))  # what Ray schedules on: run_cmd.init_ray
    group = NodeGroup(name="local", head=True, max_nodes=1, cpus=cpus, gpus=gpus,
                      gpu_type=gpu_type, memory=_memory_limit(), disk=free_disk(disk_at),
                      source=f"this machine (free disk under {disk_at})")
    return Cluster(name="this machine", groups=(group,), single_node=True)


def load_cluster(spec: str | None, storage_root: str) -> Cluster:
    """The cluster `--cluster` names (a manifest path or a machine name), or this machine."""
    if spec is None:
        return local_cluster(storage_root)
    path = Path(spec)
    if not path.is_file():
        return Cluster(name=spec, groups=(machine_group(spec),), single_node=True)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        raise ManifestError(f"{spec}: not valid YAML: {e}") from None
    for doc in docs:
        if doc.get("kind") in ("RayJob", "RayCluster"):
            return kuberay_cluster(doc, spec)
        if "available_node_types" in doc:
            return launcher_cluster(doc, spec)
    raise ManifestError(f"{spec}: neither a KubeRay RayJob/RayCluster nor a Ray cluster launcher config "
                        "(available_node_types)")
