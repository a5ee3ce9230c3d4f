"""pipelines/engine/cluster.py: node groups read from KubeRay manifests, launcher configs and machine names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.engine.cluster import ManifestError, load_cluster, local_cluster, quantity

ROOT = Path(__file__).resolve().parents[3]
GiB = 2**30


def _raycluster(tmp_path: Path, *, gpu_selector: dict | None = None, gpu_limits: dict | None = None) -> str:
    gpu_pod: dict = {"containers": [{"name": "w", "resources": {"limits": gpu_limits or {
        "cpu": "88", "memory": "900Gi", "nvidia.com/gpu": "8", "ephemeral-storage": "300Gi"}}}]}
    if gpu_selector is not None:
        gpu_pod["nodeSelector"] = gpu_selector
    doc = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "spec": {
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": {"containers": [
            {"name": "h", "resources": {"requests": {"cpu": "4", "memory": "16Gi"}}}]}}},
        "workerGroupSpecs": [{"groupName": "gpu", "maxReplicas": 2, "template": {"spec": gpu_pod}}]}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_quantities():
    assert quantity("16Gi", "x") == 16 * GiB and quantity("500m", "x") == 0.5 and quantity(4, "x") == 4
    assert quantity("1e9", "x") == 1e9 and quantity("2T", "x") == 2e12
    with pytest.raises(ManifestError, match=r"here: '16 GB' is not a Kubernetes quantity"):
        quantity("16 GB", "here")


def test_kuberay_groups_gpu_type_and_disk(tmp_path):
    c = load_cluster(_raycluster(tmp_path, gpu_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}), "/x")
    head, gpu = c.groups
    assert head.head and head.cpus == 0 and head.memory == 16 * GiB and head.disk is None
    assert (gpu.name, gpu.max_nodes, gpu.cpus, gpu.gpus, gpu.gpu_type) == ("gpu", 2, 88, 8, "A100-80G")
    assert gpu.memory == 900 * GiB and gpu.disk == 300 * GiB


def test_gpu_type_from_instance_type_label(tmp_path):
    c = load_cluster(_raycluster(tmp_path, gpu_selector={"node.kubernetes.io/instance-type": "p4d.24xlarge"}), "/x")
    assert c.groups[1].gpu_type == "A100-40G"
    assert load_cluster(_raycluster(tmp_path, gpu_selector={}), "/x").groups[1].gpu_type is None


def test_unknown_gpu_product_names_the_field(tmp_path):
    path = _raycluster(tmp_path, gpu_selector={"nvidia.com/gpu.product": "Tesla-K80"})
    with pytest.raises(ManifestError, match=r"workerGroupSpecs\[0\] \(gpu\)\.template\.spec\.nodeSelector\."
                                            r"nvidia\.com/gpu\.product: GPU type 'Tesla-K80' is not in"):
        load_cluster(path, "/x")


def test_a_container_without_memory_is_an_error(tmp_path):
    path = _raycluster(tmp_path, gpu_limits={"cpu": "8", "nvidia.com/gpu": "1"})
    with pytest.raises(ManifestError, match=r"workerGroupSpecs\[0\] \(gpu\): the ray container declares no memory"):
        load_cluster(path, "/x")


def test_launcher_config_reads_instance_types_and_ebs():
    c = load_cluster(str(ROOT / "cluster/aws/llava-cluster.yaml"), "/x")
    groups = {g.name: g for g in c.groups}
    assert groups["ray.head.default"].head and groups["ray.head.default"].cpus == 0
    assert groups["ray.head.default"].memory == 32 * GiB and groups["ray.head.default"].disk == 200 * GiB
    p4d, p5 = groups["gpu_worker_p4d"], groups["gpu_worker_p5"]
    assert (p4d.gpus, p4d.gpu_type, p4d.max_nodes, p4d.disk) == (8, "A100-40G", 2, 1000 * GiB)
    assert (p5.gpu_type, p5.cpus) == ("H100-80G", 192)


def test_machine_name_and_unknown_name():
    c = load_cluster("dgx-a100-80g", "/x")
    assert c.single_node and c.head.gpus == 8 and c.head.gpu_type == "A100-80G"
    with pytest.raises(ManifestError, match=r"'nope' is neither a manifest file nor a machine of machines.yaml"):
        load_cluster("nope", "/x")


def test_this_machine_counts_rays_logical_cpus(tmp_path):
    node = local_cluster(str(tmp_path)).head
    assert node.cpus >= 4 and node.memory > 0 and node.disk is not None and node.disk > 0
