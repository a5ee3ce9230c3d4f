"""Training throughput, ours vs plain transformers, on the anchor's model and on LLaVA-1.5's length mixes.

Model: CLIP ViT-L/14-336 + a TinyLlama-1.1B-shaped Llama (vocab 32000), random init, bf16 on GPU — the shape of
../shared/bench/hf_llava_anchor.py. Cases (`--case`, one per process so each starts clean):

- `anchor`: the anchor's step (plain LlavaForConditionalGeneration, bf16 weights, sdpa, fused AdamW, frozen
  tower, `model(**batch).loss.backward()`), on the fixed shape and then on both mixes, each batch padded to its
  longest sample as the reference collator does, batches made by modality-length grouping.
- `ours-z2`: our step (build_model, collate, supervised_loss, DeepSpeed ZeRO-2 with our AdamW, bf16) on the
  fixed shape padded and packed (the GPU default: flex attention), the finetune mix padded and packed, the
  pretrain mix packed: the anchor's micro-batches. `--ds KEY=VALUE` varies the DeepSpeed config.
- `ours-z3`: the fixed shape under ZeRO-3 (the paper's finetune setting), packed.
- `--compile`: ours with the language model under torch.compile (the recipe's `compile_llm`).
- `--profile`: on the fixed shape, each step's time split into forward / backward / update (synchronised, so
  nothing overlaps), and torch.profiler's kernels of three steps summed by kind (matmul, attention, loss,
  optimizer, communication and copies, the rest): where the gap to the anchor goes. Written beside --json.
- `loader`: the training loader's per-sample work (JPEG decode, pad to square, resize to 336) in one process:
  samples/s per CPU core, to set beside the GPU's samples/s.

Fixed shape: batch 16 × 1024 (BOS + 576 image tokens + 447 text tokens), all supervised after the image, no
padding. Useful tokens are the samples' own tokens (no padding); MFU counts only them, with the anchor's
formula (6·N_llm per trained-LLM token — 4·N when the LLM is frozen but gradients pass through it, as in
pretraining —, its causal attention term, 2·N_vision per vision token) over a measured bf16 matmul peak.

The length mixes (per sample: text tokens, supervised share, image or not) are LLaVA-1.5's, modelled in
components/train/length_mix.py (shared with the resource plan's time estimates).

    bash bench/gpu_check.sh [--device cpu]                       # every case, one table (see that script)
    python -m bench.train --case anchor --json out.json          # one case; --device cpu --tiny: a dry run
    python -m bench.train --table out/*.json                     # the side-by-side table of several cases
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.train.length_mix import sample_mix

ANCHOR = {  # the anchor's model shape
    "vision": {"image_size": 336, "patch_size": 14, "hidden_size": 1024, "num_layers": 24, "num_heads": 16,
               "intermediate_size": 4096},
    "llm": {"hidden_size": 2048, "num_layers": 22, "num_heads": 32, "num_kv_heads": 4, "intermediate_size": 5632,
            "max_position_embeddings": 4096},
    "vocab": 32000, "fixed_batch": 16, "fixed_seq": 1024, "max_length": 2048, "batch": {"pretrain": 32, "finetune": 16},
    "steps": 10, "mix_batches": 12,
}
TINY = {"vision": {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                   "intermediate_size": 64},
        "llm": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 128,
                "max_position_embeddings": 512},
        "vocab": 1000, "fixed_batch": 2, "fixed_seq": 24, "max_length": 64, "batch": {"pretrain": 4, "finetune": 4},
        "steps": 2, "mix_batches": 3}


@dataclass(frozen=True)
class Step:
    """One training step in its three phases, so they can be timed apart."""
    forward: Callable[[dict[str, Any]], torch.Tensor]  # inputs → loss
    backward: Callable[[torch.Tensor], None]
    update: Callable[[], None]  # optimizer step, gradients cleared

    def __call__(self, inputs: dict[str, Any]) -> None:
        self.backward(self.forward(inputs))
        self.update()


# Kernel (GPU) or operator (CPU) names → what they do; the first match wins, the rest is "other".
KINDS = [
    ("attention", ("flash", "fmha", "attention", "sdpa", "flex", "triton_tem")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "softmax_backward")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("matmul", ("gemm", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "cutlass", "xmma",
                "nvjet", "sm90_", "sm80_", "ampere_", "cublas")),
    ("comm+copy", ("nccl", "c10d::", "memcpy", "memset", "copy", "aten::cat", "clone", "all_reduce", "reduce_scatter",
                   "allgather", "fill", "zero_")),
]


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(k in low for k in keys)), "other")


def grouped_batches(samples: list[tuple[int, int, bool]], batch: int, count: int, seed: int) -> list[list[int]]:
    """The first `count` micro-batches of the reference's modality-length-grouped order (one device)."""
    from components.train.grouping import modality_length_grouped

    lengths = np.array([t for t, _, _ in samples])
    order = modality_length_grouped(lengths, np.array([img for _, _, img in samples]), batch, 1,
                                    np.random.default_rng(seed))
    return [order[i * batch:(i + 1) * batch].tolist() for i in range(count)]


def prepared_rows(samples: list[tuple[int, int, bool]], image_id: int, vocab: int, image_size: int,
                  rng: np.random.Generator) -> tuple[list[list[int]], list[list[int]], list[bytes | None]]:
    """Rows as the prepare stage stores them: BOS, one <image> id, context text, then the supervised answer."""
    ids, labels, pixels = [], [], []
    for text, supervised, image in samples:
        tokens = rng.integers(3, vocab - 2, text).tolist()
        head = [1, image_id] if image else [1]
        ids.append(head + tokens)
        labels.append([-100] * (len(head) + text - supervised) + tokens[text - supervised:])
        pixels.append(rng.integers(0, 256, (3, image_size, image_size), np.uint8).tobytes() if image else None)
    return ids, labels, pixels


def word_tokenizer(vocab: int) -> Any:
    """A real (tokenizers-backed) tokenizer with exactly `vocab` entries plus the LLaVA tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from components.models.tokenizer import add_llava_tokens

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab - 2)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    return add_llava_tokens(fast)


def measured_peak_tflops(device: str) -> float | None:
    """bf16 8192² matmul rate, as the anchor measures its peak."""
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.time() - t) / 1e12


class Bench:
    """One process's model, data and timing for the given shape and device."""

    def __init__(self, shape: dict[str, Any], device: str, *, compile_llm: bool = False,
                 profile: bool = False, profile_table: str | None = None) -> None:
        from components.core.config import load_section
        from components.models.assembly import num_image_tokens
        from components.models.spec import ModelConfig
        from components.models.tokenizer import image_token_id
        from components.train.collate import CollateSpec

        self.shape, self.device = shape, device
        self.compile_llm, self.profile, self.profile_table = compile_llm, profile, profile_table
        self.bf16 = device == "cuda"
        overrides = [f"model.vision.random_init.{k}={x}" for k, x in shape["vision"].items()]
        overrides += [f"model.llm.random_init.{k}={x}" for k, x in shape["llm"].items()]
        self.model_cfg = load_section("tiny", "model", ModelConfig, overrides)
        self.tok = word_tokenizer(shape["vocab"])
        self.model = self.fresh_model()
        self.n_img = num_image_tokens(self.model_cfg.vision)
        self.image_id = image_token_id(self.tok)
        self.spec = CollateSpec(image_id=self.image_id, num_image_tokens=self.n_img,
                                max_length=shape["max_length"], pad_id=self.tok.pad_token_id,
                                image_size=shape["vision"]["image_size"])
        inner = self.model.model
        self.n_llm = sum(p.numel() for p in inner.language_model.parameters()) + self.model.lm_head.weight.numel()
        self.n_vis = sum(p.numel() for p in inner.vision_tower.parameters())
        self.peak = measured_peak_tflops(device)

    def fresh_model(self) -> Any:
        """The model as build_model makes it, on the device (a new one per DeepSpeed engine: an engine's
        hooks stay on the parameters it wrapped)."""
        from components.models.assembly import build_model, compile_language_model

        self.model = None  # free the old one first
        gc.collect()
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        model = build_model(self.model_cfg, self.tok, dtype=dtype, seed=0).to(self.device)
        if self.compile_llm:
            compile_language_model(model)
        return model

    def stage(self, name: str, zero: int, batch: int, packed: bool) -> Any:
        """The stage config the recipe would run (one worker, accumulation 1, no activation checkpointing)."""
        from components.core.config import load_section
        from components.train.spec import TrainStageConfig

        return load_section("tiny", name, TrainStageConfig, [
            f"{name}.num_workers=1", f"{name}.per_device_batch={batch}", f"{name}.global_batch={batch}",
            f"{name}.precision={'bf16' if self.bf16 else 'fp32'}", f"{name}.gradient_checkpointing=false",
            f"{name}.deepspeed=deepspeed/zero{zero}.json", f"{name}.use_gpu={str(self.bf16).lower()}",
            f"{name}.packing={str(packed).lower()}"])

    def fixed_batches(self) -> list[tuple[list[list[int]], list[list[int]], list[bytes | None]]]:
        B, seq = self.shape["fixed_batch"], self.shape["fixed_seq"]
        rng = np.random.default_rng(0)
        text = seq - 1 - self.n_img
        return [prepared_rows([(text, text, True)] * B, self.image_id, self.shape["vocab"],
                              self.spec.image_size, rng)]

    def mix_batches(self, stage: str) -> list[tuple[list[list[int]], list[list[int]], list[bytes | None]]]:
        rng = np.random.default_rng(1)
        batch, count = self.shape["batch"][stage], self.shape["mix_batches"] + 2  # 2 warm-up batches
        samples = sample_mix(stage, 64 * batch, rng, max_text=self.shape["max_length"] - 1 - self.n_img)
        return [prepared_rows([samples[i] for i in group], self.image_id, self.shape["vocab"],
                              self.spec.image_size, rng)
                for group in grouped_batches(samples, batch, count, seed=2)]

    def time(self, step: Step, batches: list[Any], spec: Any, steps: int,
             llm_trained: bool, ensure_image: bool) -> dict[str, Any]:
        """Warm up on the first two batches, then time `steps` steps cycling through the rest.
        `ensure_image`: all-text batches carry a blank image, as the recipe's do (DeepSpeed needs every rank
        to run the tower); the anchor's, as transformers takes them, have none."""
        from components.train.collate import collate, sample_length

        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        warm, timed = (batches[:2], batches[2:]) if len(batches) > 2 else (batches, batches)
        for rows in warm:
            step(collate(*rows, spec, device=self.device, ensure_image=ensure_image))
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        useful = padded = samples = flops = 0.0
        t = time.perf_counter()
        for i in range(steps):
            ids, labels, pixels = timed[i % len(timed)]
            inputs = collate(ids, labels, pixels, spec, device=self.device, ensure_image=ensure_image)
            step(inputs)
            lengths = [sample_length(row, spec) for row in ids]
            useful += sum(lengths)
            padded += inputs["input_ids"].numel()
            samples += len(ids)
            flops += self.useful_flops(lengths, sum(p is not None for p in pixels), llm_trained)
        sync()
        dt = time.perf_counter() - t
        tflops = flops / dt / 1e12
        return {"step_s": dt / steps, "useful_tokens_per_s": useful / dt, "computed_tokens_per_s": padded / dt,
                "useful_share": useful / padded, "samples_per_s": samples / dt, "useful_tflops": tflops,
                "mfu_useful": tflops / self.peak if self.peak else None,
                "max_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if self.device == "cuda" else None}

    def phases(self, step: Step, batches: list[Any], spec: Any, ensure_image: bool) -> dict[str, Any]:
        """Mean seconds per phase over a few steps, synchronised after each phase (no overlap), and the
        profiler's kernel time of three steps summed by kind; the full table goes to `profile_table`."""
        from torch.profiler import ProfilerActivity, profile

        from components.train.collate import collate

        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        inputs = [collate(*rows, spec, device=self.device, ensure_image=ensure_image) for rows in batches[:3]]
        step(inputs[0])  # warm
        sync()
        spent = {"forward": 0.0, "backward": 0.0, "update": 0.0}
        for x in inputs:
            t = time.perf_counter()
            loss = step.forward(x)
            sync()
            spent["forward"] += time.perf_counter() - t
            t = time.perf_counter()
            step.backward(loss)
            sync()
            spent["backward"] += time.perf_counter() - t
            t = time.perf_counter()
            step.update()
            sync()
            spent["update"] += time.perf_counter() - t
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        with profile(activities=activities) as prof:
            for x in inputs:
                step(x)
            sync()
        events = prof.key_averages()
        # Kernels on GPU; on CPU the self time of aten and c10d operators (their sum: the CPU's busy time).
        attr = "self_device_time_total" if self.device == "cuda" else "self_cpu_time_total"
        by_kind: dict[str, float] = {}
        for e in events:
            us = getattr(e, attr, 0) or 0
            if us > 0 and (self.device == "cuda" or e.key.startswith(("aten::", "c10d::"))):
                by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + us
        total = sum(by_kind.values()) or 1.0
        if self.profile_table:
            sort = "self_cuda_time_total" if self.device == "cuda" else "self_cpu_time_total"
            Path(self.profile_table).write_text(events.table(sort_by=sort, row_limit=40))
        return {"phase_s": {k: v / len(inputs) for k, v in spent.items()},
                "kernel_share": {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
                "kernel_s": total / 1e6 / len(inputs)}

    def useful_flops(self, lengths: list[int], images: int, llm_trained: bool) -> float:
        """The anchor's FLOP formula over the samples' own tokens (see the module doc)."""
        llm = self.shape["llm"]
        per_token = 6 if llm_trained else 4
        attn = sum(per_token * 2 * llm["num_layers"] * s * s * llm["hidden_size"] / 2 for s in lengths)
        return per_token * self.n_llm * sum(lengths) + attn + 2 * self.n_vis * (self.n_img + 1) * images


def measure(results: list[dict[str, Any]], row: dict[str, Any], run: Callable[[], dict[str, Any]]) -> None:
    """Append `row` with run()'s numbers; a failure becomes the row's `error` and the next measurement runs."""
    try:
        results.append({**row, **run()})
    except Exception as e:  # one broken path must not cost the device call its other rows
        traceback.print_exc()
        results.append({**row, "error": f"{type(e).__name__}: {e}"[:400]})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def anchor_case(bench: Bench) -> list[dict[str, Any]]:
    """The anchor's training step, fed the reference's padded batches."""
    model = bench.model
    model.train()
    results = []

    def trainer(stage: str) -> Step:
        model.requires_grad_(False)  # pretrain: the projector only; finetune: projector + LLM, tower frozen
        model.model.multi_modal_projector.requires_grad_(True)
        if stage == "finetune":
            model.model.language_model.requires_grad_(True)
            model.lm_head.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5, fused=bench.device == "cuda")

        def update() -> None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return Step(lambda inputs: model(**inputs).loss, lambda loss: loss.backward(), update)

    step = trainer("finetune")
    measure(results, {"case": "anchor", "shape": "fixed", "packed": False}, lambda: bench.time(
        step, bench.fixed_batches(), bench.spec, bench.shape["steps"], True, False))
    if bench.profile:
        measure(results, {"case": "anchor", "shape": "fixed", "packed": False, "profile": True},
                lambda: bench.phases(step, bench.fixed_batches(), bench.spec, False))
    for stage in ("finetune", "pretrain"):
        step = trainer(stage)
        measure(results, {"case": "anchor", "shape": f"mix-{stage}", "packed": False}, lambda: bench.time(
            step, bench.mix_batches(stage), bench.spec, bench.shape["mix_batches"], stage == "finetune", False))  # noqa: B023
    return results


def ours_case(bench: Bench, zero: int, ds_overrides: dict[str, Any], mixes: bool, label: str) -> list[dict[str, Any]]:
    """Our step (the recipe's: collate, supervised_loss, DeepSpeed engine) on the fixed shape and the mixes."""
    import dataclasses

    import deepspeed

    from components.train.collate import PACK_MULTIPLE, use_packed_attention
    from components.train.loss import supervised_loss
    from components.train.trainable import param_groups, set_trainable
    from components.train.zero import deepspeed_config

    for k, x in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", os.environ.get("MASTER_PORT", "29517"))):
        os.environ.setdefault(k, x)
    deepspeed.init_distributed(dist_backend="nccl" if bench.device == "cuda" else "gloo")
    use_packed_attention(bench.model, bench.device)  # a no-op on CPU; padded batches carry a mask and stay exact
    packed = dataclasses.replace(bench.spec, pack_multiple=PACK_MULTIPLE)
    hidden = bench.shape["llm"]["hidden_size"]
    results = []

    def engine_for(name: str, batch: int) -> Any:
        stage = bench.stage(name, zero, batch, packed=True)
        set_trainable(bench.model, stage.trainable)
        optimizer = torch.optim.AdamW(param_groups(bench.model, stage.optim), lr=stage.optim.lr,
                                      fused=bench.device == "cuda")
        config = deepspeed_config(stage, 1, hidden)
        for key, value in ds_overrides.items():
            node = config
            *path, last = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
        engine, *_ = deepspeed.initialize(model=bench.model, optimizer=optimizer, config=config)
        engine.train()
        return engine

    def step_of(engine: Any) -> Step:
        return Step(lambda inputs: supervised_loss(engine, inputs), engine.backward, engine.step)

    # Padded rows first: they need no compiled kernel, so a flex-attention failure still leaves them.
    step = step_of(engine_for("finetune", bench.shape["fixed_batch"]))
    fixed, steps, mix_steps = bench.fixed_batches(), bench.shape["steps"], bench.shape["mix_batches"]
    if mixes:
        measure(results, {"case": label, "shape": "fixed", "packed": False},
                lambda: bench.time(step, fixed, bench.spec, steps, True, True))
    measure(results, {"case": label, "shape": "fixed", "packed": True},
            lambda: bench.time(step, fixed, packed, steps, True, True))
    if bench.profile:
        measure(results, {"case": label, "shape": "fixed", "packed": True, "profile": True},
                lambda: bench.phases(step, fixed, packed, True))
    if not mixes:
        return results
    finetune = bench.mix_batches("finetune")
    for spec in (bench.spec, packed):
        measure(results, {"case": label, "shape": "mix-finetune", "packed": spec is packed},
                lambda: bench.time(step, finetune, spec, mix_steps, True, True))  # noqa: B023
    step = None  # the finetune engine goes before the next model is built
    bench.model = bench.fresh_model()
    use_packed_attention(bench.model, bench.device)
    step = step_of(engine_for("pretrain", bench.shape["batch"]["pretrain"]))
    measure(results, {"case": label, "shape": "mix-pretrain", "packed": True},
            lambda: bench.time(step, bench.mix_batches("pretrain"), packed, mix_steps, False, True))
    return results


def loader_case(n: int, image_size: int) -> list[dict[str, Any]]:
    """The training loader's per-sample work (decode, pad to square, resize) in one process, per CPU second."""
    import tempfile

    from bench.preprocess import write_bench_data
    from components.train.pixels import load_pixels

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        data = write_bench_data(Path(tmp), n, (640, 480))  # COCO-sized JPEGs
        paths = sorted(str(p) for p in Path(data["image_root"]).iterdir())
        cpu, t = time.process_time(), time.perf_counter()
        for path in paths:
            load_pixels(path, "pad", image_size)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - t
    return [{"case": "loader", "shape": f"{image_size}px", "images": len(paths),
             "samples_per_cpu_s": len(paths) / cpu, "samples_per_s": len(paths) / wall}]


def format_table(results: list[dict[str, Any]]) -> str:
    """One line per measurement, ratios against the anchor on the same shape, and the loader's cores per GPU."""
    anchor = {r["shape"]: r for r in results if r["case"] == "anchor" and "error" not in r and not r.get("profile")}
    loader = next((r for r in results if r["case"] == "loader"), None)
    lines = [f"{'case':<34} {'shape':<13} {'packed':<6} {'useful tok/s':>12} {'useful':>6} {'samples/s':>9} "
             f"{'MFU':>5} {'mem GB':>7} {'vs anchor':>9}"]
    profiles = [r for r in results if r.get("profile")]
    for r in results:
        if r["case"] == "loader" or r.get("profile"):
            continue
        if "error" in r:
            lines.append(f"{r['case']:<34} {r['shape']:<13} {str(r['packed']).lower():<6} failed: {r['error']}")
            continue
        ref = anchor.get(r["shape"])
        ratio = r["useful_tokens_per_s"] / ref["useful_tokens_per_s"] if ref else None
        mfu, mem = r.get("mfu_useful"), r.get("max_mem_gb")
        lines.append(f"{r['case']:<34} {r['shape']:<13} {str(r.get('packed', False)).lower():<6} "
                     f"{r['useful_tokens_per_s']:>12,.0f} {r['useful_share']:>6.0%} {r['samples_per_s']:>9.1f} "
                     f"{'-' if mfu is None else f'{mfu:.0%}':>5} {'-' if mem is None else f'{mem:.1f}':>7} "
                     f"{'-' if ratio is None else f'{ratio:.2f}x':>9}")
    if profiles:
        lines.append("where a fixed-shape step goes (phases synchronised; kernel time by kind):")
    for r in profiles:
        layout = "packed" if r.get("packed") else "padded"
        if "error" in r:
            lines.append(f"  {r['case']} {layout}: failed: {r['error']}")
            continue
        phases = " ".join(f"{k} {v * 1e3:.0f}" for k, v in r["phase_s"].items())
        kinds = " ".join(f"{k} {v:.0%}" for k, v in r["kernel_share"].items())
        lines.append(f"  {r['case']} {layout}: ms {phases}; kernels {r['kernel_s'] * 1e3:.0f} ms: {kinds}")
    if loader:
        lines.append(f"loader: {loader['samples_per_cpu_s']:.1f} samples/s per CPU core ({loader['images']} "
                     f"640x480 JPEGs → {loader['shape']})")
        for r in results:
            if r["case"] != "anchor" and r["shape"].startswith("mix") and "error" not in r and not r.get("profile"):
                layout = "packed" if r.get("packed") else "padded"
                lines.append(f"  {r['case']} {r['shape']} {layout}: {r['samples_per_s']:.1f} samples/s on the GPU needs "
                             f"{r['samples_per_s'] / loader['samples_per_cpu_s']:.2f} loader cores")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=["anchor", "ours-z2", "ours-z3", "loader"])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--tiny", action="store_true", help="a tiny model and shapes: a dry run in seconds")
    p.add_argument("--ds", action="append", default=[], metavar="KEY=VALUE",
                   help="ours: override a DeepSpeed config value, e.g. zero_optimization.reduce_bucket_size=5e8")
    p.add_argument("--label", help="the case's name in the table (default: --case)")
    p.add_argument("--fixed-only", action="store_true", help="ours: the fixed shape only")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the language model")
    p.add_argument("--profile", action="store_true",
                   help="fixed shape: time per phase and kernel time by kind; the profiler table beside --json")
    p.add_argument("--loader-n", type=int, default=200)
    p.add_argument("--json", help="write the results (a list) here")
    p.add_argument("--table", nargs="*", help="print the table of these result files and exit")
    args = p.parse_args(argv)
    if args.table is not None:
        print(format_table([r for f in args.table for r in json.loads(Path(f).read_text())]))
        return 0
    if args.case is None:
        p.error("--case or --table is required")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    shape = TINY if args.tiny else ANCHOR
    if args.case == "loader":
        results = loader_case(args.loader_n, shape["vision"]["image_size"])
    else:
        if args.compile and args.case == "anchor":
            p.error("--compile is for our cases")
        table = str(Path(args.json).with_suffix(".profile.txt")) if args.profile and args.json else None
        bench = Bench(shape, device, compile_llm=args.compile, profile=args.profile, profile_table=table)
        if args.case == "anchor":
            results = anchor_case(bench)
        else:
            overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.ds)}
            results = ours_case(bench, int(args.case[-1]), overrides, mixes=not args.fixed_only,
                                label=args.label or args.case)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results = [{**r, "device": device_name, "tiny": args.tiny} for r in results]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
