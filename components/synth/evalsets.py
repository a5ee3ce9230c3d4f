"""The twelve LLaVA-1.5 benchmarks of the synthetic world, written in their real file formats.

Formats follow the shared contract (eval file formats: question JSONL with the reference suffix,
annotation files named as the real releases name them). Every benchmark draws from its own random
stream and renders its own images, so no evaluation image is a training image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

from components.synth.eval_choice import build_mmbench, build_seed, build_sqa
from components.synth.eval_common import Bench
from components.synth.eval_open import build_llava_bench, build_mmvet
from components.synth.eval_vqa import build_gqa, build_textvqa, build_vizwiz, build_vqav2
from components.synth.eval_yesno import build_mme, build_pope
from components.synth.files import Writer


@dataclass(frozen=True)
class BenchSpec:
    folder: str  # folder under eval/, as in LLaVA's eval.zip
    questions: int  # questions (MMBench: TSV rows incl. circular copies) at size "tiny"
    build: Callable[[Bench, list[str]], None]  # (bench, colour popularity) -> writes the files


BENCHMARKS: dict[str, BenchSpec] = {
    "vqav2": BenchSpec("vqav2", 100, lambda b, _: build_vqav2(b)),
    "gqa": BenchSpec("gqa", 200, lambda b, _: build_gqa(b)),
    "vizwiz": BenchSpec("vizwiz", 80, lambda b, _: build_vizwiz(b)),
    "textvqa": BenchSpec("textvqa", 80, lambda b, _: build_textvqa(b)),
    "pope": BenchSpec("pope", 120, build_pope),
    "sqa": BenchSpec("scienceqa", 80, lambda b, _: build_sqa(b)),
    "mme": BenchSpec("MME", 120, lambda b, _: build_mme(b)),
    "mmbench": BenchSpec("mmbench", 100, lambda b, _: build_mmbench(b, "en", "mmbench_dev_20230712.tsv")),
    "mmbench_cn": BenchSpec(
        "mmbench_cn", 100, lambda b, _: build_mmbench(b, "cn", "mmbench_dev_cn_20231003.tsv")
    ),
    "seed": BenchSpec("seed_bench", 100, lambda b, _: build_seed(b)),
    "llava_bench": BenchSpec("llava-bench-in-the-wild", 60, lambda b, _: build_llava_bench(b)),
    "mmvet": BenchSpec("mm-vet", 60, lambda b, _: build_mmvet(b)),
}


# Benchmarks that also get a dev copy (dev/<folder>, same format, own images and questions): what a sweep
# selects on, so that the final evaluation under eval/ stays unseen by the selection.
DEV_BENCHMARKS = ("gqa", "pope")


def write_eval_sets(
    w: Writer, seed: int, scale: float, popularity: list[str], *, split: str = "eval",
    names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Write benchmarks (`names`, default all) under `split`/ ("eval" or "dev"); returns {bench: {folder,
    questions, annotations, images, n_questions}}.

    `popularity` ranks colours by how often they occur in the training images (POPE's popular split).
    Every (split, benchmark) draws from its own random stream.
    """
    out = {}
    for name in names or tuple(BENCHMARKS):
        spec = BENCHMARKS[name]
        bench = Bench(
            name, spec.folder, w, Random(f"{seed}/{split}/{name}"), max(1, round(spec.questions * scale)),
            split=split,
        )
        spec.build(bench, popularity)
        out[name] = bench.summary()
    return out
