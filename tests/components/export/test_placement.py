"""Where the export runs: a Ray task holding the resources asked for, never the driver. A GPU export asks Ray
for a GPU (this CPU-only cluster has none: a bounded wait, then an error naming the setting), and the driver's
peak memory does not grow with the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.core.stage_run import StageRun
from components.export.spec import ExportResources
from components.export.stage import ExportUnplaced, run_export
from components.models.assembly import build_model
from components.models.spec import LLMConfig, RandomLLM
from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[3]


def _save(tokenizer, path: Path, llm: RandomLLM | None = None) -> tuple[str, int]:
    """The tiny config's model (or with `llm` as its LLM) saved in fp32; (folder, parameter bytes)."""
    spec = load_config("tiny").model
    if llm is not None:
        spec = spec.model_copy(update={"llm": LLMConfig(random_init=llm)})
    model = build_model(spec, tokenizer, seed=1)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path), size


@pytest.fixture(scope="module")
def tiny_model(tokenizer, tmp_path_factory) -> tuple[str, int]:
    return _save(tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def _export(model: str, out: Path, resources: ExportResources) -> dict:
    return run_export(model=model, evaluations={}, benchmark_folders={}, template="vicuna_v1", parity_sample=1,
                      allow_custom_connector=False, registered_name="placement", pipeline="test",
                      resources=resources, parity_max_new_tokens=2,
                      run=StageRun(stage="export", out=str(out), storage=str(out), fingerprint="fp"))


@pytest.mark.parametrize(("resources", "asked", "fix"), [
    (ExportResources(use_gpu=True, start_timeout_s=3), "1 CPU and 1 GPU", "export.use_gpu: false"),
    (ExportResources(cpus=64, start_timeout_s=3), "64 CPU)", "lower export.cpus"),
])
def test_an_export_no_node_can_take_fails_after_its_wait_naming_the_setting(
        ray_local, tiny_model, tmp_path, resources, asked, fix):
    from ray.util.placement_group import placement_group_table

    earlier = set(placement_group_table())
    with pytest.raises(ExportUnplaced) as err:
        _export(tiny_model[0], tmp_path / "out", resources)
    message = str(err.value)
    assert asked in message and fix in message and "within 3 s" in message
    assert "0 GPUs" in message  # what the cluster has, beside what was asked
    assert not (tmp_path / "out").exists()  # nothing ran
    # The reservation was given back: the export's placement group is not left waiting for (or holding) a node.
    ours = {pg: g["state"] for pg, g in placement_group_table().items() if pg not in earlier}
    assert len(ours) == 1 and set(ours.values()) == {"REMOVED"}, ours


def test_on_a_cpu_node_parity_runs_in_fp32(ray_local, tiny_model, tmp_path):
    metrics = _export(tiny_model[0], tmp_path / "out", ExportResources(cpus=2))
    assert metrics["parity_ok"] is True and metrics["parity_checked"] == 1
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert (report["device"], report["dtype"]) == ("cpu", "float32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the 7B/13B configs' export.use_gpu)")
def test_on_a_gpu_parity_runs_in_bf16(ray_local, tiny_model, tmp_path):
    metrics = _export(tiny_model[0], tmp_path / "out", ExportResources(use_gpu=True, start_timeout_s=60))
    assert metrics["parity_ok"] is True and metrics["parity_checked"] == 1
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert (report["device"], report["dtype"]) == ("cuda", "bfloat16")


# One export in a fresh driver process, connected to the session's Ray as a job's driver is to its cluster:
# its own peak RSS (VmHWM) before and after run_export. The modules run_export imports are imported first, and
# the peak is then reset to the current RSS (Linux: clear_refs 5), so the difference is the export's own work,
# not code loading or an earlier spike. (Not getrusage's ru_maxrss: every thread that exits folds the peak so
# far into it, and clear_refs does not reset that.)
DRIVER = r"""
import json, sys
import ray
args = json.loads(sys.argv[1])
ray.init(address=args["address"], log_to_driver=False, configure_logging=False)
import components.evaluate.pool, components.export.package, components.export.parity, components.export.registry
from components.core.stage_run import StageRun
from components.export.spec import ExportResources
from components.export.stage import run_export

def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = peak_kb()
metrics = run_export(model=args["model"], evaluations={}, benchmark_folders={}, template="vicuna_v1",
                     parity_sample=1, allow_custom_connector=False, registered_name="rss", pipeline="test",
                     resources=ExportResources(), parity_max_new_tokens=2,
                     run=StageRun(stage="export", out=args["out"], storage=args["out"], fingerprint="fp"))
after = peak_kb()
print(json.dumps({"peak_increase_mb": (after - before) / 1024, "parity_ok": metrics["parity_ok"]}))
"""


def _driver_peak_increase_mb(address: str, model: str, out: Path) -> float:
    args = json.dumps({"address": address, "model": model, "out": str(out)})
    done = subprocess.run([sys.executable, "-c", DRIVER, args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["parity_ok"] is True  # the export did run, parity check included
    return float(result["peak_increase_mb"])


@pytest.mark.e2e
def test_the_drivers_peak_memory_does_not_grow_with_the_model(ray_local, tokenizer, tiny_model, tmp_path):
    """A ~600 MB (fp32) model raises the driver's peak RSS no more than the tiny one does. When the export ran
    in the driver (before #26; the same measurement of that code, on the 2-core development machine), this
    model raised it by 773 MB and the tiny one by 145 MB: 630 MB more, the model's size. Now: 28.5 MB for
    each (the driver's own work: config.json, the Ray task's submission and its small result)."""
    larger = RandomLLM(hidden_size=1024, num_layers=12, num_heads=16, intermediate_size=2816,
                       max_position_embeddings=256)
    big_model, big_bytes = _save(tokenizer, tmp_path / "big", larger)
    assert big_bytes > 500 * 2**20
    address = ray_local.get_runtime_context().gcs_address
    tiny = _driver_peak_increase_mb(address, tiny_model[0], tmp_path / "tiny_out")
    big = _driver_peak_increase_mb(address, big_model, tmp_path / "big_out")
    print(f"driver peak RSS increase: tiny {tiny:.1f} MB, larger ({big_bytes / 2**20:.0f} MB fp32) {big:.1f} MB")
    assert (tmp_path / "big_out" / "model" / "model.safetensors").stat().st_size > 500 * 2**20
    # Far less than the model: any copy of its weights in the driver would cost ~600 MB here.
    assert big - tiny < 0.05 * big_bytes / 2**20, (tiny, big)
