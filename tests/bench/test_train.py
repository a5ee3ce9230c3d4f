"""The training benchmark: its length mixes, and its CPU dry run end to end (tiny shapes; not a timing check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.train import format_table, grouped_batches, kind_of
from components.train.length_mix import MIX, sample_mix

ROOT = Path(__file__).resolve().parents[2]


def test_finetune_mix_follows_the_665k_composition():
    samples = sample_mix("finetune", 20_000, np.random.default_rng(0), max_text=2048 - 577)
    text_only = sum(not image for _, _, image in samples) / len(samples)
    expected = 40_688 / sum(s.samples for s in MIX["finetune"])  # ShareGPT's share of 665,298
    assert sum(s.samples for s in MIX["finetune"]) == 665_298
    assert text_only == pytest.approx(expected, abs=0.01)
    texts = np.array([t for t, _, _ in samples])
    assert texts.min() >= 4 and texts.max() <= 2048 - 577
    assert all(1 <= sup <= t for t, sup, _ in samples)
    long_text = np.median([t for t, _, image in samples if not image])
    assert long_text > 2 * np.median([t for t, _, image in samples if image])  # ShareGPT is the long tail


def test_pretrain_mix_is_image_plus_short_caption():
    samples = sample_mix("pretrain", 2_000, np.random.default_rng(0), max_text=1000)
    assert all(image and sup == t for t, sup, image in samples)
    assert 8 <= np.median([t for t, _, _ in samples]) <= 25


def test_grouped_batches_keep_one_modality_per_batch():
    samples = sample_mix("finetune", 4_000, np.random.default_rng(1), max_text=1400)
    batches = grouped_batches(samples, 16, 40, seed=0)
    assert len(batches) == 40 and all(len(b) == 16 for b in batches)
    assert all(len({samples[i][2] for i in b}) == 1 for b in batches)  # modality grouping, before the tail
    assert len({i for b in batches for i in b}) == 16 * 40


def test_table_puts_each_case_beside_the_anchor_on_its_shape():
    rows = [{"case": "anchor", "shape": "mix-finetune", "useful_tokens_per_s": 1000.0, "useful_share": 0.7,
             "samples_per_s": 2.0, "mfu_useful": 0.3, "max_mem_gb": 40.0},
            {"case": "ours-z2", "shape": "mix-finetune", "packed": True, "useful_tokens_per_s": 1600.0,
             "useful_share": 0.99, "samples_per_s": 3.2, "mfu_useful": 0.48, "max_mem_gb": 42.0},
            {"case": "loader", "shape": "336px", "images": 10, "samples_per_cpu_s": 80.0, "samples_per_s": 80.0}]
    table = format_table(rows)
    ours = next(line for line in table.splitlines() if line.startswith("ours-z2"))
    assert "1.60x" in ours and "99%" in ours and "48%" in ours
    assert "3.2 samples/s on the GPU needs 0.04 loader cores" in table


@pytest.mark.parametrize("case", [["--case", "ours-z2", "--profile"], ["--case", "anchor", "--profile"],
                                  ["--case", "ours-z2", "--fixed-only", "--compile"], ["--case", "loader"]])
def test_cpu_dry_run_measures_every_shape(tmp_path, case):
    """The device script's cases on a tiny model on CPU, each in its own process as gpu_check.sh runs them."""
    out = tmp_path / "r.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MASTER_PORT": "29533"}
    proc = subprocess.run([sys.executable, "-m", "bench.train", *case, "--device", "cpu", "--tiny", "--loader-n",
                           "6", "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    if case[1] == "loader":
        assert results[0]["samples_per_cpu_s"] > 0 and results[0]["images"] > 0
        return
    profiles = [r for r in results if r.get("profile")]
    results = [r for r in results if not r.get("profile")]
    rows = {"ours-z2": [("fixed", False), ("fixed", True), ("mix-finetune", False), ("mix-finetune", True),
                        ("mix-pretrain", True)],
            "anchor": [("fixed", False), ("mix-finetune", False), ("mix-pretrain", False)]}[case[1]]
    if "--fixed-only" in case:
        rows = [("fixed", True)]
    assert [(r["shape"], r["packed"]) for r in results] == rows
    for r in results:
        assert "error" not in r, r["error"]
        assert r["useful_tokens_per_s"] > 0 and 0 < r["useful_share"] <= 1 and r["device"] == "cpu"
    assert results[0]["useful_share"] == 1 or case[1] == "ours-z2"  # the anchor's fixed rows have no padding
    if "--profile" not in case:
        assert not profiles and "where a fixed-shape step goes" not in proc.stdout
        return
    [profile] = profiles  # the fixed shape, in the layout the GPU default uses
    assert "error" not in profile, profile["error"]
    assert set(profile["phase_s"]) == {"forward", "backward", "update"} and min(profile["phase_s"].values()) > 0
    assert sum(profile["kernel_share"].values()) == pytest.approx(1) and profile["kernel_share"]["matmul"] > 0
    assert "aten::mm" in (tmp_path / "r.profile.txt").read_text()
    assert f"{case[1]} {'packed' if case[1] == 'ours-z2' else 'padded'}: ms forward" in proc.stdout


def test_kinds_sort_kernels_by_what_they_do():
    assert kind_of("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul" and kind_of("aten::mm") == "matmul"
    assert kind_of("flash_fwd_kernel") == "attention" and kind_of("triton_tem_fused_flex_attention") == "attention"
    assert kind_of("ncclDevKernel_AllReduce_Sum_bf16") == "comm+copy" and kind_of("Memcpy DtoD") == "comm+copy"
    assert kind_of("multi_tensor_apply_kernel<FusedAdam>") == "optimizer"
    assert kind_of("cunn_SoftMaxForward log_softmax") == "loss" and kind_of("vectorized_elementwise") == "other"
