"""components/train/throughput.py: the throughput table's rows, GPU type names and row choice."""

from __future__ import annotations

import pytest

from components.train.throughput import find_row, gpu_type, gpu_types


def test_product_names_map_to_table_types():
    assert gpu_type("NVIDIA-A100-SXM4-80GB").name == "A100-80G"
    assert gpu_type("NVIDIA A100-SXM4-40GB").name == "A100-40G"
    assert gpu_type("NVIDIA-H100-80GB-HBM3").name == "H100-80G"
    with pytest.raises(ValueError, match=r"GPU type 'Tesla-K80' is not in throughput.yaml"):
        gpu_type("Tesla-K80")


def test_rows_by_gpu_stage_and_size():
    row, note = find_row("A100-80G", "finetune", 6_738_423_808, lora=False)
    assert row is not None and row.gpu == "A800-80G" and row.tokens_per_s == 2937 and row.tokens == "padded"
    assert "the A800-80G row for A100-80G" in note and row.source
    row, _ = find_row("A100-80G", "pretrain", 13_015_874_560, lora=False)
    assert row is not None and row.tokens_per_s == 2274
    assert find_row("A100-80G", "finetune", 1_100_000_000, lora=False)[0] is None  # no row within 15%
    none, why = find_row("H100-80G", "finetune", 6_738_423_808, lora=False)
    assert none is None and "no finetune row for H100-80G" in why
    assert find_row("A100-80G", "finetune", 6_738_423_808, lora=True)[0] is None


def test_every_type_has_memory():
    assert all(t.memory_gib > 0 for t in gpu_types().values())
