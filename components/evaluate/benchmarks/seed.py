"""SEED-Bench (v1): multiple choice scored by exact string equality `text == answer`, no parsing.

The paper's number is image + video (video = its middle frame); image-only and video-only accuracies
and per-question-type accuracies are reported too, as convert_seed_for_submission.py prints them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from components.evaluate.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    ScoreInput,
    load_question_jsonl,
    need,
    not_asked_note,
    pct,
    read_json,
)
from components.evaluate.metrics import seed_correct

SEED_SUFFIX = "\nAnswer with the option's letter from the given choices directly."


def _key(qid: Any) -> str:
    # The reference tries int(question_id) so "00123" and 123 meet.
    try:
        return str(int(qid))
    except (TypeError, ValueError):
        return str(qid)


def score_seed(inp: ScoreInput) -> dict[str, Any]:
    path = inp.files.annotations
    if path is None:
        raise BenchmarkDataError("seed: no SEED-Bench.json given")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise BenchmarkDataError(f"{path}: expected {{'questions': [...], 'question_type': {{...}}}}")
    type_names = {v: k for k, v in (data.get("question_type") or {}).items()}
    gt = {}
    for i, item in enumerate(data["questions"]):
        where = f"{path}: questions[{i}]"
        gt[_key(need(item, "question_id", where, (int, str)))] = (item, where)
    right, samples = [], []
    by_type: dict[str, list[bool]] = defaultdict(list)
    by_data: dict[str, list[bool]] = defaultdict(list)
    for q in inp.questions:
        found = gt.get(_key(q.source_id))
        if found is None:
            raise BenchmarkDataError(f"{path}: no entry for question {q.question_id}")
        item, where = found
        answer = need(item, "answer", where)
        text = inp.predictions.get(q.question_id)
        ok = text is not None and seed_correct(text, answer)
        right.append(ok)
        qtype = item.get("question_type_id")
        by_type[str(type_names.get(qtype, qtype))].append(ok)
        by_data[str(item.get("data_type", "image"))].append(ok)
        samples.append({"question_id": q.question_id, "prediction": text, "answer": answer, "correct": ok})
    details: dict[str, Any] = {
        "accuracy": pct(sum(right) / len(right)),
        "image_accuracy": pct(sum(by_data["image"]) / len(by_data["image"]))
        if by_data.get("image")
        else None,
        "video_accuracy": pct(sum(by_data["video"]) / len(by_data["video"]))
        if by_data.get("video")
        else None,
        "question_type": {k: pct(sum(v) / len(v)) for k, v in sorted(by_type.items())},
    }
    asked = {_key(q.source_id) for q in inp.questions}
    extra = not_asked_note(sum(k not in asked for k in gt), "SEED-Bench questions")
    return {"value": details["accuracy"], "details": details, "samples": samples, **extra}


SEED = Benchmark(
    name="seed",
    folder="seed_bench",
    metric="accuracy",
    split="SEED-Bench-1 image + video (middle frame)",
    questions_file="llava-seed-bench.jsonl",
    annotations="SEED-Bench.json",
    images="images",
    prompt_suffix=SEED_SUFFIX,
    suffix_in_file=True,
    max_new_tokens=128,
    load=load_question_jsonl,
    scorer=score_seed,
    paper={"7b": 58.6, "13b": 61.6, "7b_lora": 60.1, "13b_lora": 61.3},
    notes="image-only 7B is about 66.2 (lmms-eval#132)",
)
