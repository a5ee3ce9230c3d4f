"""The generation benchmark on a tiny random-init LLaVA: both throughputs, parity, thread handling.

Not a timing assertion: the rates depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import pytest
import torch

from bench.generate import bench_generate, format_bench, synthetic_items
from components.evaluate.generate import Generator
from components.models.assembly import build_model
from components.models.spec import LLMConfig, ModelConfig, RandomLLM, RandomVision, VisionConfig

CFG = ModelConfig(
    vision=VisionConfig(random_init=RandomVision(image_size=56, patch_size=14, hidden_size=32, num_layers=2,
                                                 num_heads=2, intermediate_size=64)),
    llm=LLMConfig(random_init=RandomLLM(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                                        max_position_embeddings=1024)),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: tiny matmuls on a small shared CPU are slower with threads spinning."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generator(tokenizer) -> Generator:
    return Generator(build_model(CFG, tokenizer, seed=3), tokenizer, max_new_tokens=12)


def test_bench_generate_reports_both_throughputs_and_parity(generator, capsys):
    result = bench_generate(generator, synthetic_items(6, seed=4), batch_size=3, n=6, max_new_tokens=4)
    assert result["n"] == 6 and result["batch_size"] == 3
    assert result["batch1_samples_per_s"] > 0 and result["batched_samples_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["batch1_s"] / result["batched_s"])
    assert result["n_different"] == 0
    out = capsys.readouterr().out
    assert "batch 1" in out and "batch 3" in out and "6/6 answers identical" in out
    assert format_bench(result) in out


def test_bench_generate_threads_apply_only_during_the_run(generator):
    before = torch.get_num_threads()
    result = bench_generate(generator, synthetic_items(2), batch_size=2, n=2, max_new_tokens=2, threads=2,
                            verbose=False)
    assert result["torch_threads"] == 2 and torch.get_num_threads() == before == 1


def test_bench_generate_rejects_bad_sizes(generator):
    with pytest.raises(ValueError, match="batch_size"):
        bench_generate(generator, batch_size=0, n=2)
