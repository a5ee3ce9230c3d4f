"""cluster/: the KubeRay manifests, the cluster launcher config, the Dockerfile and the README commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from components.core.paths import CONFIG_DIR
from pipelines.config import load_config
from pipelines.engine.cli import build_parser

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _yaml(rel: str) -> dict:
    return yaml.safe_load((CLUSTER / rel).read_text())


def check_entrypoint(command: str) -> None:
    """`llava-pipeline run <config in configs/> ...` that the real CLI parses and whose config validates."""
    argv = shlex.split(command)
    assert argv[:2] == ["llava-pipeline", "run"], command
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    path = Path(args.config)
    assert path.parts[0] == "configs" and (CONFIG_DIR / Path(*path.parts[1:])).is_file(), args.config
    load_config(CONFIG_DIR / Path(*path.parts[1:]), args.set)  # raises ConfigError on a bad --set


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def check_cluster_spec(spec: dict) -> None:
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["rayVersion"].startswith("2.60")
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and _containers(head["template"])
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpu_limits = _containers(groups["gpu"]["template"])[0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in _containers(groups["cpu"]["template"])[0]["resources"]["limits"]
    images = {c["image"] for g in [head, *groups.values()] for c in _containers(g["template"])}
    assert len(images) == 1  # one image everywhere: the one cluster/Dockerfile builds
    env_names = {e["name"] for g in [head, *groups.values()] for c in _containers(g["template"])
                 for e in c.get("env", [])}
    assert not env_names & {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD"}


def test_rayjob():
    job = _yaml("kuberay/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    check_entrypoint(spec["entrypoint"])
    assert shlex.split(spec["entrypoint"])[2] == "configs/llava15_7b.yaml"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env["env_vars"]) <= {"MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION", "AWS_REGION",
                                            "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"}
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] == "K8sJobMode" and spec["backoffLimit"] >= 0
    check_cluster_spec(spec["rayClusterSpec"])


def test_raycluster():
    cluster = _yaml("kuberay/raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    check_cluster_spec(cluster["spec"])


def test_aws_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml("aws/llava-cluster.yaml")
    assert config["cluster_name"] and config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("p4d", "p5"))]
    assert gpu and all(t["resources"]["GPU"] == 8 for t in gpu)
    assert any(t["node_config"]["InstanceType"].startswith("m") for n, t in types.items()
               if n != config["head_node_type"])
    setup = config["setup_commands"]
    assert any("pip install -r ~/llava-pipeline/requirements/cluster.txt" in c for c in setup)
    assert any("pip install --no-deps ~/llava-pipeline" in c for c in setup)
    assert all("requirements/cpu.txt" not in c for c in setup)  # its torch is the CPU build
    validate_config(prepare_config(config))  # Ray's own ray-schema.json: no unknown or misspelled keys


def test_dockerfile_installs_the_project_with_cuda():
    lines = [ln.strip() for ln in (CLUSTER / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    base = next(ln for ln in lines if ln.startswith("FROM "))
    assert re.fullmatch(r"FROM rayproject/ray:2\.60\.\d+-py311-cu\d+", base), base
    copied = {ln.split()[-2] for ln in lines if ln.startswith("COPY ")}
    assert {"components", "pipelines", "configs"} <= copied
    assert any(ln.startswith("COPY ") and "pyproject.toml" in ln for ln in lines)
    runs = [ln for ln in lines if ln.startswith("RUN ")]
    # CUDA torch, then the cluster lock, then the project itself (not editable), in that order.
    order = [next(i for i, ln in enumerate(runs) if key in ln) for key in
             ("--index-url \"${TORCH_INDEX}\"", "pip install --no-cache-dir -r requirements/cluster.txt",
              "pip install --no-cache-dir --no-deps .")]
    assert order == sorted(order) and "download.pytorch.org/whl/cu" in " ".join(lines)
    assert "requirements/cpu.txt" not in " ".join(runs) and " -e " not in " ".join(runs)
    assert any(ln == "WORKDIR /opt/llava-pipeline" for ln in lines)  # where RayJob entrypoints find configs/


README_COMMAND = re.compile(r"^(llava-pipeline \S+.*)$", re.M)


@pytest.mark.parametrize("command", README_COMMAND.findall((CLUSTER / "README.md").read_text()))
def test_readme_commands_parse(command):
    argv = shlex.split(command.split(" #")[0])
    args = build_parser().parse_args(argv[1:])
    if args.command in ("run", "submit"):
        load_config(CONFIG_DIR.parent / args.config if args.config.startswith("configs/") else args.config, args.set)


@pytest.mark.parametrize("manifest", ["kuberay/rayjob.yaml", "kuberay/raycluster.yaml", "aws/llava-cluster.yaml"])
@pytest.mark.parametrize("config", ["llava15_7b", "llava15_13b"])
def test_the_paper_recipes_fit_the_shipped_clusters(manifest, config):
    """`plan --resources` finds a node for every stage: memory, GPU memory and the declared local disk."""
    from pipelines.engine.resources_cmd import plan_resources

    placement = plan_resources(load_config(config), str(CLUSTER / manifest))
    assert not placement.errors, placement.errors
    for group in placement.cluster.groups:
        assert group.disk is not None, f"{manifest}: {group.name} declares no local disk"
        assert not group.gpus or group.gpu_type, f"{manifest}: {group.name}'s GPU type is unknown"


@pytest.mark.parametrize("manifest", ["kuberay/rayjob.yaml", "kuberay/raycluster.yaml"])
def test_kuberay_pods_request_the_ephemeral_storage_they_may_use(manifest):
    doc = _yaml(manifest)
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        res = _containers(group["template"])[0]["resources"]
        # The scheduler places a pod by its requests; the kubelet evicts it past its limit.
        assert res["requests"]["ephemeral-storage"] == res["limits"]["ephemeral-storage"]
