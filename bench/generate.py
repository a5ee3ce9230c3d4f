"""`llava-pipeline bench generate`: batched vs batch-1 greedy decoding on the same model, with answer parity.

The reference evaluates one question at a time; we left-pad batches. This measures both on the same
prompts in one process and checks that they give the same answers. Without a model folder it builds a
tiny random model and synthetic image questions, so it runs anywhere (CPU, or `--device cuda`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from random import Random
from typing import Any

import torch
from PIL import Image, ImageDraw

from components.core.templates import VICUNA_SYSTEM
from components.evaluate.generate import (
    Generator,
    GenItem,
    compare_answers,
    resolve_device,
    resolve_dtype,
    timed_answer,
)
from components.models.spec import LLMConfig, ModelConfig, RandomLLM, RandomVision, VisionConfig

_WORDS = ("what colour color is the shape circle square triangle star red green blue yellow purple orange "
          "left right top bottom middle how many are there in image picture of a an small large which "
          "one yes no answer question word phrase single object").split()
_SHORT = "\nAnswer the question using a single word or phrase."
TINY_MODEL = ModelConfig(  # the shape of configs/tiny.yaml's model
    vision=VisionConfig(random_init=RandomVision(image_size=56, patch_size=14, hidden_size=64, num_layers=2,
                                                 num_heads=2, intermediate_size=128)),
    llm=LLMConfig(random_init=RandomLLM(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                                        max_position_embeddings=1024)),
)


def tiny_generator(device: str = "cpu", *, seed: int = 0, max_new_tokens: int = 32) -> Generator:
    """A random-init LLaVA (TINY_MODEL) with a SentencePiece tokenizer trained on a small word corpus."""
    from components.models.assembly import build_model
    from components.models.tokenizer import train_tokenizer

    rng = Random(seed)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(12)) + rng.choice(".?!") for _ in range(600)]
    corpus += [VICUNA_SYSTEM, "USER: ASSISTANT:", _SHORT.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(corpus, 400, Path(tmp))
    device = resolve_device(device)
    model = build_model(TINY_MODEL, tok, dtype=resolve_dtype("auto", device), seed=seed).to(device)
    return Generator(model, tok, max_new_tokens=max_new_tokens)


def synthetic_items(n: int, *, seed: int = 0) -> list[GenItem]:
    """n short-answer image questions of varied length on images of varied size and aspect ratio."""
    rng = Random(seed)
    items = []
    for i in range(n):
        w, h = rng.randint(40, 160), rng.randint(40, 160)
        img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
        box = sorted(rng.sample(range(w), 2)) + sorted(rng.sample(range(h), 2))
        ImageDraw.Draw(img).rectangle((box[0], box[2], box[1], box[3]),
                                      fill=tuple(rng.randint(0, 255) for _ in range(3)))
        question = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 30))) + "?"
        items.append(GenItem(f"q{i}", question + _SHORT, img))
    return items


def bench_generate(
    model: str | Path | Generator | None = None,
    questions: Sequence[GenItem] | None = None,
    *,
    batch_size: int = 8,
    n: int = 32,
    device: str = "auto",
    max_new_tokens: int = 32,
    threads: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """samples/s at batch 1 and at `batch_size` on the same model and the same n prompts, plus parity.

    `model` is a saved model folder, a ready `Generator`, or None for a tiny random model. `questions`
    default to synthetic image questions; the first n are used. `threads` sets torch's CPU threads for
    the run (on a busy machine, threads contending for cores can make both numbers several times worse).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return bench_generate(model, questions, batch_size=batch_size, n=n, device=device,
                                  max_new_tokens=max_new_tokens, verbose=verbose)
        finally:
            torch.set_num_threads(before)
    if isinstance(model, Generator):
        gen, label = model, "given generator"
    elif model is None:
        gen, label = tiny_generator(device, max_new_tokens=max_new_tokens), "tiny random model"
    else:
        gen, label = Generator.from_dir(model, device=device, max_new_tokens=max_new_tokens), str(model)
    items = list(questions) if questions is not None else synthetic_items(n)
    if not items:
        raise ValueError("no questions to benchmark")
    items = [items[i % len(items)] for i in range(n)]

    # Warm-up over every batched shape and a few single ones: first calls pick kernels per shape (on CUDA
    # a cold fp16 pass ran ~3x slower than a warm one), which would otherwise be timed as generation.
    gen.answer(items, batch_size=batch_size, max_new_tokens=max_new_tokens)
    gen.answer(items[:4], batch_size=1, max_new_tokens=max_new_tokens)
    single, single_s = timed_answer(gen, items, batch_size=1, max_new_tokens=max_new_tokens)
    batched, batched_s = timed_answer(gen, items, batch_size=batch_size, max_new_tokens=max_new_tokens)
    keys = [f"{i}:{it.key}" for i, it in enumerate(items)]
    diffs = compare_answers(dict(zip(keys, single, strict=True)), dict(zip(keys, batched, strict=True)))
    result = {
        "model": label,
        "device": str(gen.device),
        "dtype": str(gen.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "n": n,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "batch1_s": single_s,
        "batched_s": batched_s,
        "batch1_samples_per_s": n / single_s,
        "batched_samples_per_s": n / batched_s,
        "speedup": single_s / batched_s,
        "n_different": len(diffs),
        "differences": diffs[:10],
    }
    if verbose:
        print(format_bench(result))
    return result


def format_bench(r: dict[str, Any]) -> str:
    same = r["n"] - r["n_different"]
    lines = [
        f"generate: {r['n']} prompts, max_new_tokens {r['max_new_tokens']}, {r['model']} on {r['device']} "
        f"({r['dtype']}, {r['torch_threads']} threads)",
        f"  batch 1    {r['batch1_samples_per_s']:8.2f} samples/s  ({r['batch1_s']:.2f} s)",
        f"  batch {r['batch_size']:<4} {r['batched_samples_per_s']:8.2f} samples/s  ({r['batched_s']:.2f} s)",
        f"  speed-up   {r['speedup']:8.2f}x",
        f"  parity     {same}/{r['n']} answers identical at batch 1 and batch {r['batch_size']}",
    ]
    for d in r["differences"][:3]:
        lines.append(f"    {d['key']}: batch 1 {d['reference']!r} vs batched {d['candidate']!r}")
    return "\n".join(lines)


def bench_generate_cli(
    n: int | None = None, device: str = "auto", model_dir: str | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Entry point of `llava-pipeline bench generate [--n N] [--device D] [--model DIR]`."""
    device = resolve_device(device)
    on_gpu = torch.device(device).type == "cuda"
    return bench_generate(model_dir, n=n or (256 if on_gpu else 32), batch_size=32 if on_gpu else 8,
                          device=device, threads=threads)
