"""The training throughput table (throughput.yaml): which row estimates a stage on a GPU type, and its time.

Pure: a row is picked by GPU type (mapped through `gpus:` when the type has no rows of its own), stage and the
LLM's size; a stage without a row has no time estimate, and the plan says why instead of guessing.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

TABLE = Path(__file__).with_name("throughput.yaml")
SIZE_TOLERANCE = 0.15  # a row applies to LLMs within 15% of its parameter count


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_gib: float
    estimate_with: str | None = None
    why: str = ""


@dataclass(frozen=True)
class Row:
    gpu: str
    stage: str
    llm_params: float
    tokens_per_s: float
    tokens: Literal["padded", "useful"]
    source: str


@functools.cache
def _table() -> tuple[dict[str, GpuType], tuple[Row, ...]]:
    raw = yaml.safe_load(TABLE.read_text())
    gpus = {name: GpuType(name=name, **spec) for name, spec in raw["gpus"].items()}
    rows = tuple(Row(**{**r, "llm_params": float(r["llm_params"])}) for r in raw["rows"])
    for r in rows:
        if r.gpu not in gpus or r.tokens not in ("padded", "useful") or not r.source:
            raise ValueError(f"{TABLE}: row {r} names an unknown GPU type, an unknown token count or no source")
    return gpus, rows


def gpu_types() -> dict[str, GpuType]:
    return dict(_table()[0])


def gpu_type(name: str) -> GpuType:
    """A GPU type of the table, from its name or a product name (e.g. NVIDIA-A100-SXM4-80GB → A100-80G)."""
    gpus = gpu_types()
    if name in gpus:
        return gpus[name]
    upper = name.upper()
    for known in gpus:
        model, memory = known.split("-")
        if model in upper and re.search(rf"\b{memory.rstrip('G')}\s*G", upper.replace("-", " ")):
            return gpus[known]
    raise ValueError(f"GPU type {name!r} is not in {TABLE.name} ({', '.join(gpus)}); add it there")


def find_row(gpu: str, stage: str, llm_params: int, *, lora: bool) -> tuple[Row | None, str]:
    """The row estimating `stage` of an LLM with `llm_params` on `gpu`, and how it was chosen (or why none)."""
    _, rows = _table()
    kind = gpu_type(gpu)
    table_gpu = kind.estimate_with or kind.name
    if lora:
        return None, f"no {stage} row for LoRA in {TABLE.name}"
    for r in rows:
        if r.gpu == table_gpu and r.stage == stage and abs(llm_params / r.llm_params - 1) <= SIZE_TOLERANCE:
            via = f", the {table_gpu} row for {kind.name}" if kind.estimate_with else ""
            return r, f"{r.tokens_per_s:,.0f} {r.tokens} tokens/s per GPU{via}"
    return None, f"no {stage} row for {table_gpu} at {llm_params / 1e9:.2f}B LLM parameters in {TABLE.name}"
