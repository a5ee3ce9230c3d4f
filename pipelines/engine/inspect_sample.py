"""`llava-pipeline inspect`: show exactly what the model learns from one sample.

The prompt is rendered with the stage's template and tokenized by the same code as training; supervised
spans are marked ⟦like this⟧ and the image placeholder is shown with its token count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.core.conversation import IMAGE_TOKEN, normalize_image_token, parse_record
from components.core.tokenize import IGNORE_INDEX, supervised_spans, tokenize_sample
from pipelines.config import PipelineConfig


def load_sample(path: str, index: int = 0) -> tuple[Any, str]:
    """One record from a JSON object, a JSON list (by index) or a JSONL file (by index)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if index >= len(lines):
            raise ValueError(f"{path}: has {len(lines)} lines, no record {index}") from None
        return json.loads(lines[index]), f"{path} line {index + 1}"
    if isinstance(data, list):
        if index >= len(data):
            raise ValueError(f"{path}: has {len(data)} records, no record {index}")
        return data[index], path
    return data, path


def marked_text(tok: Any, input_ids: list[int], labels: list[int]) -> str:
    """Decode runs of same-supervision tokens, wrapping supervised runs in ⟦ ⟧."""
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    out: list[str] = []
    run: list[int] = []
    run_sup = False

    def flush() -> None:
        if run:
            text = tok.decode(run, skip_special_tokens=False)
            out.append(f"⟦{text}⟧" if run_sup else text)

    i = 0
    while i < len(input_ids):
        if input_ids[i] == image_id:
            flush()
            run = []
            j = i
            while j < len(input_ids) and input_ids[j] == image_id:
                j += 1
            out.append(f"<image×{j - i}>")
            i = j
            continue
        sup = labels[i] != IGNORE_INDEX
        if run and sup != run_sup:
            flush()
            run = []
        run_sup = sup
        run.append(input_ids[i])
        i += 1
    flush()
    return "".join(out)


def inspect_sample(record: Any, source: str, cfg: PipelineConfig, stage: str, tok: Any) -> dict[str, Any]:
    from components.models.assembly import num_image_tokens
    from pipelines.llava15 import prepared_vision

    stage_cfg = cfg.pretrain if stage == "pretrain" else cfg.finetune
    sample = normalize_image_token(parse_record(record, source=source))
    n_img = num_image_tokens(prepared_vision(cfg))  # as prepared (the sweep's largest for image_size: auto)
    out = tokenize_sample(sample, tok, template=stage_cfg.template, num_image_tokens=n_img,
                          max_length=stage_cfg.max_length)
    spans = supervised_spans(out.labels)
    return {
        "stage": stage,
        "template": stage_cfg.template,
        "prompt": out.prompt,
        "input_ids": out.input_ids,
        "labels": out.labels,
        "supervised_text": "".join(tok.decode(s, skip_special_tokens=False) for s in spans),
        "supervised_spans": [tok.decode(s, skip_special_tokens=False) for s in spans],
        "marked": marked_text(tok, out.input_ids, out.labels),
        "length": out.length,
        "num_supervised": out.num_supervised,
        "num_image_tokens": out.num_image_tokens,
        "truncated": out.truncated,
    }


def format_inspection(info: dict[str, Any]) -> str:
    lines = [
        f"stage {info['stage']} · template {info['template']} · {info['length']} tokens "
        f"({info['num_image_tokens']} image, {info['num_supervised']} supervised)"
        + (" · TRUNCATED" if info["truncated"] else ""),
        "",
        "rendered prompt:",
        info["prompt"],
        "",
        "what the model sees (supervised spans in ⟦ ⟧):",
        info["marked"],
    ]
    return "\n".join(lines)
