"""Short-answer VQA benchmarks scored by VQA soft accuracy: VQAv2, VizWiz, TextVQA.

VQAv2 test-dev and VizWiz test are scored by EvalAI servers; locally they are scored only when a
ground-truth file is present (val annotations, or the synthetic world's).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.evaluate.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    Question,
    ScoreInput,
    canon_id,
    load_question_jsonl,
    need,
    pct,
    read_json,
    skipped,
)
from components.evaluate.metrics import normalize_vqa_answer, vqa_answer_scores

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
VIZWIZ_SUFFIX = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT_ANSWER


def _answer_texts(answers: Any, where: str) -> list[str]:
    """Human answers as strings: a list of strings or of {"answer": str} records."""
    if not isinstance(answers, list) or not answers:
        raise BenchmarkDataError(f"{where}: 'answers' should be a non-empty list")
    out = []
    for a in answers:
        text = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(text, str):
            raise BenchmarkDataError(f"{where}: each answer should be text or {{'answer': text}}, got {a!r}")
        out.append(text)
    return out


def _soft_score_all(
    inp: ScoreInput, gts: Sequence[list[str]], groups: Sequence[Mapping[str, str]]
) -> dict[str, Any]:
    """Score each question (in order) against its human answers; break down by the given group labels."""
    scores, samples = [], []
    by_group: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for q, answers, labels in zip(inp.questions, gts, groups, strict=True):
        text = inp.predictions.get(q.question_id)
        pred = normalize_vqa_answer(text) if text is not None else None
        s = vqa_answer_scores(answers).get(pred, 0.0) if pred is not None else 0.0
        scores.append(s)
        for kind, label in labels.items():
            by_group[kind][label].append(s)
        samples.append({"question_id": q.question_id, "prediction": text, "normalized": pred, "score": s})
    details: dict[str, Any] = {"accuracy": pct(sum(scores) / len(scores))}
    for kind, table in by_group.items():
        details[kind] = {k: pct(sum(v) / len(v)) for k, v in sorted(table.items())}
    return {"value": details["accuracy"], "details": details, "samples": samples}


# ---------------------------------------------------------------- VQAv2


def score_vqav2(inp: ScoreInput) -> dict[str, Any]:
    path = inp.files.annotations
    if path is None or not path.is_file():
        return skipped(
            "VQAv2 test-dev is scored by the EvalAI server (challenge 830): write the "
            f"submission with write_upload; no local annotations at {path}"
        )
    data = read_json(path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise BenchmarkDataError(f"{path}: expected {{'annotations': [...]}}")
    by_id = {}
    for i, a in enumerate(anns):
        where = f"{path}: annotations[{i}]"
        by_id[canon_id(need(a, "question_id", where, (int, str)))] = (a, where)
    found = [by_id.get(canon_id(q.source_id)) for q in inp.questions]
    if not any(found):
        return skipped(f"{path} covers none of these questions (test-dev answers are on the server only)")
    absent = [q.question_id for q, f in zip(inp.questions, found, strict=True) if f is None]
    if absent:
        raise BenchmarkDataError(f"{path}: no annotation for questions {absent[:5]} ({len(absent)} in all)")
    gts = [_answer_texts(a.get("answers"), where) for a, where in found]
    groups = [{"answer_type": str(a.get("answer_type", "all"))} for a, _ in found]
    return _soft_score_all(inp, gts, groups)


def upload_vqav2(questions: Sequence[Question], preds: Mapping[str, str], path: Path) -> int:
    """EvalAI format: [{question_id, answer}] for every question, EvalAI-normalised, "" when missing."""
    rows = [
        {
            "question_id": q.source_id,
            "answer": normalize_vqa_answer(preds[q.question_id]) if q.question_id in preds else "",
        }
        for q in questions
    ]
    path.write_text(json.dumps(rows))
    return len(rows)


VQAV2 = Benchmark(
    name="vqav2",
    folder="vqav2",
    metric="accuracy",
    split="test-dev",
    questions_file="llava_vqav2_mscoco_test-dev2015.jsonl",
    annotations="v2_mscoco_val2014_annotations.json",
    images="images",
    prompt_suffix=SHORT_ANSWER,
    suffix_in_file=True,
    max_new_tokens=128,
    load=load_question_jsonl,
    scorer=score_vqav2,
    upload=upload_vqav2,
    upload_questions_file="llava_vqav2_mscoco_test2015.jsonl",
    paper={"7b": 78.5, "13b": 80.0, "7b_lora": 79.1, "13b_lora": 80.0},
    notes="paper number from the EvalAI test-dev server; local scoring needs an annotation file",
)


# ---------------------------------------------------------------- VizWiz


def score_vizwiz(inp: ScoreInput) -> dict[str, Any]:
    path = inp.files.annotations
    if path is None or not path.is_file():
        return skipped(
            "VizWiz test is scored by the EvalAI server (challenge 2185): write the submission "
            f"with write_upload; no local annotations at {path}"
        )
    anns = read_json(path)
    if not isinstance(anns, list):
        raise BenchmarkDataError(f"{path}: expected a JSON list of annotations")
    gts, groups = [], []
    for q in inp.questions:
        try:
            idx = int(q.source_id)  # question_id is the index into the annotation list
        except (TypeError, ValueError):
            raise BenchmarkDataError(f"{path}: question id {q.source_id!r} is not an index") from None
        if not 0 <= idx < len(anns):
            raise BenchmarkDataError(f"{path}: question id {idx} is outside the {len(anns)} annotations")
        a = anns[idx]
        where = f"{path}: [{idx}]"
        image = q.meta.get("image_file")
        if image and isinstance(a, dict) and a.get("image") and Path(a["image"]).name != Path(image).name:
            raise BenchmarkDataError(
                f"{where}: image {a['image']!r} does not match question {q.question_id}'s "
                f"{image!r}; is this the annotation file of another split?"
            )
        gts.append(_answer_texts(a.get("answers") if isinstance(a, dict) else None, where))
        groups.append(
            {
                "answerable": "answerable" if a.get("answerable", 1) else "unanswerable",
                "answer_type": str(a.get("answer_type", "all")),
            }
        )
    return _soft_score_all(inp, gts, groups)


def upload_vizwiz(questions: Sequence[Question], preds: Mapping[str, str], path: Path) -> int:
    """EvalAI format: [{image, answer}] in question order, EvalAI-normalised, "" when missing."""
    rows = [
        {
            "image": q.meta.get("image_file"),
            "answer": normalize_vqa_answer(preds[q.question_id]) if q.question_id in preds else "",
        }
        for q in questions
    ]
    path.write_text(json.dumps(rows))
    return len(rows)


VIZWIZ = Benchmark(
    name="vizwiz",
    folder="vizwiz",
    metric="accuracy",
    split="test",
    questions_file="llava_test.jsonl",
    annotations="val.json",
    images="images",
    prompt_suffix=VIZWIZ_SUFFIX,
    suffix_in_file=True,
    max_new_tokens=128,
    load=load_question_jsonl,
    scorer=score_vizwiz,
    upload=upload_vizwiz,
    paper={"7b": 50.0, "13b": 53.6, "7b_lora": 47.8, "13b_lora": 58.9},
    notes="paper number from the EvalAI test server; local scoring needs val.json",
)


# ---------------------------------------------------------------- TextVQA

_OLD_PROMPT = re.compile(r"Question: (.*?) Short answer:")


def textvqa_question(prompt: str) -> str:
    """eval_textvqa.py prompt_processor: recover the lower-cased question from the prompt text."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        m = _OLD_PROMPT.search(prompt)
        if m is None:
            raise ValueError("prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:'")
        question = m.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"cannot find the question in a {len(lines)}-line prompt")
    return question.lower()


def score_textvqa(inp: ScoreInput) -> dict[str, Any]:
    path = inp.files.annotations
    if path is None:
        raise BenchmarkDataError("textvqa: no annotation file given")
    data = read_json(path)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise BenchmarkDataError(f"{path}: expected {{'data': [...]}}")
    by_image_question: dict[tuple[str, str], list[str]] = {}
    by_qid: dict[str, list[str]] = {}
    for i, a in enumerate(rows):
        where = f"{path}: data[{i}]"
        answers = _answer_texts(a.get("answers") if isinstance(a, dict) else None, where)
        question = need(a, "question", where)
        by_image_question[(str(a.get("image_id")), question.lower())] = answers
        if "question_id" in a:
            by_qid[canon_id(a["question_id"])] = answers
    gts = []
    for q in inp.questions:
        try:
            question = textvqa_question(q.prompt)
        except ValueError as e:
            raise BenchmarkDataError(f"textvqa question {q.question_id}: {e}") from None
        # The reference keys on (image id, question), since LLaVA's file uses the image id as question_id.
        answers = by_image_question.get((canon_id(q.source_id), question)) or by_qid.get(
            canon_id(q.source_id)
        )
        if answers is None:
            raise BenchmarkDataError(f"{path}: no annotation for question {q.question_id} ({question!r})")
        gts.append(answers)
    return _soft_score_all(inp, gts, [{} for _ in gts])


TEXTVQA = Benchmark(
    name="textvqa",
    folder="textvqa",
    metric="accuracy",
    split="val v0.5.1",
    questions_file="llava_textvqa_val_v051_ocr.jsonl",
    annotations="TextVQA_0.5.1_val.json",
    images="images",
    prompt_suffix=SHORT_ANSWER,
    suffix_in_file=True,
    max_new_tokens=128,
    load=load_question_jsonl,
    scorer=score_textvqa,
    paper={"7b": 58.2, "13b": 61.3, "7b_lora": 58.2, "13b_lora": 60.2},
    notes="prompts carry the reference OCR tokens",
)
