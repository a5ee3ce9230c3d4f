"""GQA testdev-balanced: exact match of text.rstrip('.').lower() against the answer (official eval.py)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from components.evaluate.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    ScoreInput,
    canon_id,
    load_question_jsonl,
    need,
    not_asked_note,
    pct,
    read_json,
)
from components.evaluate.benchmarks.vqa import SHORT_ANSWER
from components.evaluate.metrics import gqa_correct, gqa_normalize


def score_gqa(inp: ScoreInput) -> dict[str, Any]:
    path = inp.files.annotations
    if path is None:
        raise BenchmarkDataError("gqa: no annotation file given")
    gt = read_json(path)
    if not isinstance(gt, dict):
        raise BenchmarkDataError(f"{path}: expected {{question_id: {{question, answer, ...}}}}")
    right, samples = [], []
    by_type: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for q in inp.questions:
        entry = gt.get(canon_id(q.source_id))
        if entry is None:
            raise BenchmarkDataError(f"{path}: no entry for question {q.question_id}")
        answer = need(entry, "answer", f"{path}: {q.source_id}")
        text = inp.predictions.get(q.question_id)
        ok = text is not None and gqa_correct(text, answer)
        right.append(ok)
        # Official eval.py also reports accuracy per structural/semantic question type.
        for kind, label in (entry.get("types") or {}).items():
            if kind in ("structural", "semantic") and isinstance(label, str):
                by_type[kind][label].append(ok)
        samples.append(
            {
                "question_id": q.question_id,
                "prediction": text,
                "normalized": gqa_normalize(text) if text is not None else None,
                "answer": answer,
                "correct": ok,
            }
        )
    details: dict[str, Any] = {"accuracy": pct(sum(right) / len(right))}
    for kind, table in sorted(by_type.items()):
        details[kind] = {k: pct(sum(v) / len(v)) for k, v in sorted(table.items())}
    asked = {canon_id(q.source_id) for q in inp.questions}
    extra = not_asked_note(sum(k not in asked for k in gt), "GQA annotation entries")
    return {"value": details["accuracy"], "details": details, "samples": samples, **extra}


GQA = Benchmark(
    name="gqa",
    folder="gqa",
    metric="accuracy",
    split="testdev-balanced",
    questions_file="llava_gqa_testdev_balanced.jsonl",
    annotations="testdev_balanced_questions.json",
    images="images",
    prompt_suffix=SHORT_ANSWER,
    suffix_in_file=True,
    max_new_tokens=128,
    load=load_question_jsonl,
    scorer=score_gqa,
    paper={"7b": 62.0, "13b": 63.3, "7b_lora": 63.0, "13b_lora": 63.3},
)
