"""Parity of the exported folder with our evaluation path: same prompt text, input ids, pixels and greedy answers.

Ours: `Generator.from_dir(model_dir)` (load_llava + tokenize_prompt + pixel_values + generate), exactly what
the evaluate stage runs. Theirs: the exported folder through plain transformers (`AutoProcessor` with the
PIL backend, `processor.apply_chat_template(..., tokenize=True)`, `LlavaForConditionalGeneration
.from_pretrained`, `generate` with the exported greedy generation config). Both decode at batch size 1 on
the same device and dtype (bf16 on a GPU, fp32 on a CPU), one model in memory at a time.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from components.core.images import pixel_values
from components.core.templates import TemplateName, generation_segments, render_text
from components.evaluate.generate import Generator, GenItem, resolve_device
from components.export.package import CUSTOM_LOADER
from components.export.samples import ParityItem
from components.models.assembly import load_llava

PARITY_MAX_NEW_TOKENS = 64
IMAGE_BACKEND = "pil"  # the backend whose resize is PIL bicubic, as our images.py


class ParityError(RuntimeError):
    """The exported model answers differently from our evaluation path; the message lists the differences."""


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


@torch.inference_mode()
def our_side(
    model_dir: str, items: Sequence[ParityItem], *, template: TemplateName, device: str, dtype: torch.dtype,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """Prompt text, input ids, pixels and answer per item from our evaluation path."""
    gen = Generator.from_dir(model_dir, device=device, dtype=dtype, template=template, image_mode="pad",
                             max_new_tokens=max_new_tokens)
    out = []
    for it in items:
        has_image = it.image is not None
        out.append({
            "text": render_text(generation_segments(it.prompt, template, has_image=has_image)),
            "input_ids": gen.prompt_ids(it.prompt, has_image),
            "pixels": pixel_values(it.image, "pad", gen.image_size) if it.image is not None else None,
            "answer": gen.generate_batch([GenItem(it.key, it.prompt, it.image)])[0],
        })
    del gen
    _free(device)
    return out


@torch.inference_mode()
def transformers_side(
    export_dir: str, items: Sequence[ParityItem], *, device: str, dtype: torch.dtype, max_new_tokens: int,
    custom_connector: bool,
) -> list[dict[str, Any]]:
    """The same from the exported folder, through plain transformers (our loader for a custom connector)."""
    processor = AutoProcessor.from_pretrained(export_dir, backend=IMAGE_BACKEND)
    if custom_connector:
        model = load_llava(export_dir, dtype=dtype)
    else:
        model = LlavaForConditionalGeneration.from_pretrained(export_dir, dtype=dtype)
    model = model.to(device).eval()
    out = []
    for it in items:
        content: list[dict[str, Any]] = [{"type": "image", "image": it.image}] if it.image is not None else []
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": it.prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        pixels = inputs.get("pixel_values")  # before the cast, to compare with our float32 pixels
        inputs = inputs.to(device=device, dtype=dtype)  # casts the floating tensors (pixels) only
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens)  # greedy: generation_config
        n_prompt = inputs["input_ids"].shape[1]
        out.append({
            "text": text,
            "input_ids": inputs["input_ids"][0].tolist(),
            "pixels": pixels[0].float().cpu().numpy() if pixels is not None else None,
            "answer": processor.decode(generated[0, n_prompt:], skip_special_tokens=True).strip(),
        })
    del model
    _free(device)
    return out


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _pixel_difference(ours: np.ndarray | None, theirs: np.ndarray | None) -> float | None:
    if ours is None and theirs is None:
        return None
    if ours is None or theirs is None or ours.shape != theirs.shape:
        return float("inf")
    return float(np.abs(ours - theirs).max())


def compare(items: Sequence[ParityItem], ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """One record per item: both answers and which of text / ids / pixels / answer agree."""
    records = []
    for it, a, b in zip(items, ours, theirs, strict=True):
        pixel_diff = _pixel_difference(a["pixels"], b["pixels"])
        rec = {
            "key": it.key,
            "source": it.source,
            "has_image": it.image is not None,
            "prompt": it.prompt,
            "ours": a["answer"],
            "transformers": b["answer"],
            "answer_match": a["answer"] == b["answer"],
            "prompt_text_match": a["text"] == b["text"],
            "input_ids_match": a["input_ids"] == b["input_ids"],
            "n_input_ids": [len(a["input_ids"]), len(b["input_ids"])],
            "first_input_id_difference": _first_difference(a["input_ids"], b["input_ids"]),
            # Both sides run the same PIL ops, so equal pixels means exactly equal.
            "pixel_max_abs_diff": pixel_diff,
            "pixels_match": pixel_diff is None or pixel_diff == 0.0,
        }
        if not rec["prompt_text_match"]:
            rec["text_ours"], rec["text_transformers"] = a["text"], b["text"]
        rec["match"] = all(rec[k] for k in ("answer_match", "prompt_text_match", "input_ids_match", "pixels_match"))
        records.append(rec)
    return records


def run_parity(
    model_dir: str, export_dir: str, items: Sequence[ParityItem], *, template: TemplateName,
    custom_connector: bool, device: str = "auto", max_new_tokens: int = PARITY_MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """The parity report for `items` (JSON-ready; `ok` False when any item differs)."""
    device = resolve_device(device)
    # bf16 on a GPU: the dtype the 7B/13B recipes train and save in (fp16 could overflow where bf16 does not);
    # fp32 on a CPU, which has no fast half kernels. Both sides get the same, so their answers compare.
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"device": device, "dtype": dtype, "max_new_tokens": max_new_tokens}
    ours = our_side(model_dir, items, template=template, **kwargs) if items else []
    theirs = transformers_side(export_dir, items, custom_connector=custom_connector, **kwargs) if items else []
    records = compare(items, ours, theirs)
    mismatches = [r for r in records if not r["match"]]
    return {
        "ok": not mismatches,
        "n_checked": len(records),
        "n_mismatches": len(mismatches),
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "max_new_tokens": max_new_tokens,
        "image_processor_backend": IMAGE_BACKEND,
        "loader": CUSTOM_LOADER if custom_connector else "transformers.LlavaForConditionalGeneration",
        "items": records,
    }


def parity_failure(report: dict[str, Any], where: str) -> ParityError:
    """The error for a failed report, naming each differing prompt and what differed."""
    lines = [f"export parity check failed: {report['n_mismatches']} of {report['n_checked']} prompts differ "
             f"between our evaluation path and plain transformers (details: {where})"]
    for r in report["items"]:
        if r["match"]:
            continue
        what = [k.removesuffix("_match") for k in ("answer_match", "prompt_text_match", "input_ids_match",
                                                   "pixels_match") if not r[k]]
        lines.append(f"- {r['key']} ({', '.join(what)} differ): ours={r['ours']!r} transformers={r['transformers']!r}"
                     + (f"; first input id difference at {r['first_input_id_difference']}"
                        if not r["input_ids_match"] else ""))
    return ParityError("\n".join(lines))
