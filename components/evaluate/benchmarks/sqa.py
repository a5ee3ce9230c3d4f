"""ScienceQA test (CQM-A prompts): option letter parsing as eval_science_qa.py; the paper reports IMG.

The question file is LLaVA conversation JSON; the multiple-choice suffix is appended here
(model_vqa_science --single-pred-prompt), and text-only items are asked without an image.
"""

from __future__ import annotations

from typing import Any

from components.evaluate.benchmarks.base import (
    BenchFiles,
    Benchmark,
    BenchmarkDataError,
    Question,
    Rejected,
    ScoreInput,
    need,
    not_asked_note,
    one_record,
    pct,
    read_json,
    unique_ids,
)
from components.evaluate.metrics import SQA_OPTIONS, parse_sqa_letter, sqa_choice_index

MC_SUFFIX = "\nAnswer with the option's letter from the given choices directly."


def load_sqa(files: BenchFiles, bench: Benchmark, rejected: Rejected) -> list[Question]:
    items = read_json(files.questions)
    if not isinstance(items, list):
        raise BenchmarkDataError(f"{files.questions}: expected a JSON list of conversations")
    parsed = []
    for i, item in enumerate(items):
        where = f"{files.questions}: [{i}]"
        with one_record(rejected, where, item.get("id") if isinstance(item, dict) else None):
            raw_id = need(item, "id", where, (int, str))
            where = f"{where} (id {raw_id})"
            conv = need(item, "conversations", where, list)
            if not conv or not isinstance(conv[0], dict):
                raise BenchmarkDataError(f"{where}: 'conversations' should start with the human turn")
            text = need(conv[0], "value", f"{where} conversations[0]")
            image = item.get("image")
            if image is not None and not isinstance(image, str):
                raise BenchmarkDataError(f"{where}: field 'image' should be a file name, got {image!r}")
            parsed.append((raw_id, text, image))
    ids = unique_ids([raw_id for raw_id, _, _ in parsed])
    return [
        Question(
            question_id=qid,
            index=i,
            source_id=raw_id,
            prompt=text.replace("<image>", "").strip() + bench.prompt_suffix,
            image=f"{bench.images}/{image}" if image else None,
            meta={"image_file": image},
        )
        for i, (qid, (raw_id, text, image)) in enumerate(zip(ids, parsed, strict=True))
    ]


def score_sqa(inp: ScoreInput) -> dict[str, Any]:
    path = inp.files.annotations
    if path is None:
        raise BenchmarkDataError("sqa: no problems.json given")
    problems = read_json(path)
    splits_path = inp.files.beside_annotations("pid_splits.json")
    splits = read_json(splits_path) if splits_path.is_file() else None
    right, samples = [], []
    multimodal = []
    for q in inp.questions:
        pid = str(q.source_id)
        prob = problems.get(pid) if isinstance(problems, dict) else None
        if prob is None:
            raise BenchmarkDataError(f"{path}: no problem {pid!r} (question {q.question_id})")
        where = f"{path}: {pid}"
        choices = need(prob, "choices", where, list)
        answer = need(prob, "answer", where, int)
        text = inp.predictions.get(q.question_id)
        letter = parse_sqa_letter(text) if text is not None else None
        ok = sqa_choice_index(letter, len(choices)) == answer
        # IMG = items asked with an image (the reference checks for '<image>' in the saved prompt).
        has_image = q.image is not None
        right.append(ok)
        multimodal.append(has_image)
        samples.append(
            {
                "question_id": q.question_id,
                "prediction": text,
                "parsed": letter or "FAILED",
                "answer": SQA_OPTIONS[answer] if 0 <= answer < len(SQA_OPTIONS) else answer,
                "image": has_image,
                "correct": ok,
            }
        )
    img = [r for r, m in zip(right, multimodal, strict=True) if m]
    details: dict[str, Any] = {
        "accuracy": pct(sum(right) / len(right)),
        "img_accuracy": pct(sum(img) / len(img)) if img else None,
        "n_img": len(img),
        "n_failed_parse": sum(s["parsed"] == "FAILED" for s in samples),
    }
    extra: dict[str, Any] = {}
    if isinstance(splits, dict) and isinstance(splits.get("test"), list):
        asked = {str(q.source_id) for q in inp.questions}
        extra = not_asked_note(sum(str(p) not in asked for p in splits["test"]), "ScienceQA test problems")
    value = details["img_accuracy"]
    out = {"value": value, "details": details, "samples": samples, **extra}
    if value is None:
        out["reason"] = "no question with an image, so no IMG accuracy"
    return out


SQA = Benchmark(
    name="sqa",
    folder="scienceqa",
    metric="img_accuracy",
    split="test (IMG subset for the headline)",
    questions_file="llava_test_CQM-A.json",
    annotations="problems.json",
    images="images",
    prompt_suffix=MC_SUFFIX,
    suffix_in_file=False,
    max_new_tokens=1024,
    load=load_sqa,
    scorer=score_sqa,
    paper={"7b": 66.8, "13b": 71.6, "7b_lora": 68.4, "13b_lora": 71.2},
    notes="the reference image folder is images/test; text-only items are asked without an image",
)
