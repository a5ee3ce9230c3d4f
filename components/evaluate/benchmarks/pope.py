"""POPE (adversarial / popular / random): yes/no hallucination probes; the paper reports the mean F1.

eval_pope.py zips each category's answers, in question-file order, with the lines of
`coco/coco_pope_{category}.json` by position, so order is everything: we walk questions in file order
and check each against its label line's image before trusting the pairing.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from components.evaluate.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    Question,
    ScoreInput,
    load_question_jsonl,
    need,
    pct,
    read_jsonl,
)
from components.evaluate.benchmarks.vqa import SHORT_ANSWER
from components.evaluate.metrics import binary_metrics, parse_pope_answer


def _check_pair(q: Question, label: dict[str, Any], where: str) -> None:
    image = q.meta.get("image_file")
    if image and label.get("image") and Path(str(label["image"])).name != Path(image).name:
        raise BenchmarkDataError(
            f"{where}: label is for image {label['image']!r} but question {q.question_id} (the same position "
            f"in category {q.category!r}) shows {image!r}; question file and label file are out of order"
        )


def score_pope(inp: ScoreInput) -> dict[str, Any]:
    folder = inp.files.annotations
    if folder is None:
        raise BenchmarkDataError("pope: no annotation folder given")
    by_cat: dict[str, list[Question]] = defaultdict(list)
    for q in inp.questions:
        if not q.category:
            raise BenchmarkDataError(f"pope question {q.question_id}: missing 'category'")
        by_cat[q.category].append(q)
    details: dict[str, Any] = {}
    samples = []
    partial: list[str] = []
    for cat in sorted(by_cat):
        qs = by_cat[cat]
        path = folder / f"coco_pope_{cat}.json"
        labels = read_jsonl(path)
        if len(labels) < len(qs):
            raise BenchmarkDataError(
                f"{path}: {len(labels)} label lines but {len(qs)} questions in category "
                f"{cat!r}; they are paired by position, so there must be a label for every question"
            )
        if len(labels) > len(qs):
            # A prefix of the question file (a `limit`ed run): eval_pope.py zips answers with label lines,
            # so it too pairs them with the first labels; the image check below catches any other subset.
            partial.append(f"{cat}: first {len(qs)} of {len(labels)}")
            labels = labels[: len(qs)]
        preds, golds = [], []
        for q, (lineno, label) in zip(qs, labels, strict=True):
            where = f"{path}:{lineno}"
            _check_pair(q, label, where)
            gold = need(label, "label", where)
            text = inp.predictions.get(q.question_id)
            # A missing answer counts as wrong: the opposite of the label.
            pred = parse_pope_answer(text) if text is not None else ("yes" if gold == "no" else "no")
            preds.append(pred)
            golds.append(gold)
            samples.append(
                {
                    "question_id": q.question_id,
                    "category": cat,
                    "prediction": text,
                    "parsed": pred,
                    "label": gold,
                    "correct": (pred == "no") == (gold == "no"),
                }
            )
        m = binary_metrics(preds, golds)
        details[cat] = {
            k: (pct(v) if k in ("accuracy", "precision", "recall", "f1", "yes_ratio") else v)
            for k, v in m.items()
        } | {"n": len(qs)}
    f1s = [details[c]["f1"] for c in details]
    details["mean_f1"] = sum(f1s) / len(f1s)
    details["mean_accuracy"] = sum(details[c]["accuracy"] for c in by_cat) / len(by_cat)
    out = {"value": details["mean_f1"], "details": details, "samples": samples}
    if partial:
        out["warning"] = (
            f"scored on part of the labelled questions ({'; '.join(partial)}); not comparable with the paper"
        )
    return out


POPE = Benchmark(
    name="pope",
    folder="pope",
    metric="mean_f1",
    split="COCO val2014 (POPE commit e3e3926)",
    questions_file="llava_pope_test.jsonl",
    annotations="coco",
    images="images",
    prompt_suffix=SHORT_ANSWER,
    suffix_in_file=True,
    max_new_tokens=128,
    load=load_question_jsonl,
    scorer=score_pope,
    paper={"7b": 85.9, "13b": 85.9, "7b_lora": 86.4, "13b_lora": 86.7},
    notes="headline = mean F1 over the categories present (issue #626)",
)
