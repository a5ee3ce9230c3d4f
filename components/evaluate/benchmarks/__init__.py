"""The benchmark registry: name -> `Benchmark` declaration (see base.py for what an entry holds)."""

from __future__ import annotations

import difflib

from components.evaluate.benchmarks.base import (
    BenchFiles,
    Benchmark,
    BenchmarkDataError,
    Question,
    ScoreInput,
)
from components.evaluate.benchmarks.gqa import GQA
from components.evaluate.benchmarks.llava_bench import LLAVA_BENCH
from components.evaluate.benchmarks.mmbench import MMBENCH, MMBENCH_CN
from components.evaluate.benchmarks.mme import MME
from components.evaluate.benchmarks.mmvet import MMVET
from components.evaluate.benchmarks.pope import POPE
from components.evaluate.benchmarks.seed import SEED
from components.evaluate.benchmarks.sqa import SQA
from components.evaluate.benchmarks.vqa import TEXTVQA, VIZWIZ, VQAV2

# In the order of the paper's table.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        VQAV2,
        GQA,
        VIZWIZ,
        SQA,
        TEXTVQA,
        POPE,
        MME,
        MMBENCH,
        MMBENCH_CN,
        SEED,
        LLAVA_BENCH,
        MMVET,
    )
}
# Folder names from eval.zip and common spellings also find their entry.
_ALIASES = {b.folder.lower(): b.name for b in BENCHMARKS.values()} | {
    "scienceqa": "sqa",
    "sqa_img": "sqa",
    "seed_bench": "seed",
    "seedbench": "seed",
    "llava-bench": "llava_bench",
    "llava_w": "llava_bench",
    "llava-w": "llava_bench",
    "mm-vet": "mmvet",
    "mmb": "mmbench",
    "mmb_cn": "mmbench_cn",
    "mmbench-cn": "mmbench_cn",
    "vqa_v2": "vqav2",
}


class UnknownBenchmark(ValueError):
    """A benchmark name the registry does not know; the message suggests the closest names."""


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower()
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    if key in _ALIASES:
        return BENCHMARKS[_ALIASES[key]]
    close = difflib.get_close_matches(key, [*BENCHMARKS, *_ALIASES], n=3, cutoff=0.5)
    names = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    hint = f" Did you mean {' or '.join(repr(n) for n in names)}?" if names else ""
    raise UnknownBenchmark(f"unknown benchmark {name!r}.{hint} Known: {', '.join(BENCHMARKS)}")


__all__ = [
    "BENCHMARKS",
    "BenchFiles",
    "Benchmark",
    "BenchmarkDataError",
    "Question",
    "ScoreInput",
    "UnknownBenchmark",
    "get_benchmark",
]
