"""MM-Vet: a GPT grader gives each answer a 0.0-1.0 correctness; averaged per capability and in total.

Grader protocol of the official MM-Vet evaluator: a few-shot table prompt, temperature 0, 3 tokens;
on an unparsable reply it re-asks with "Predict the correctness of the answer (digit): " and a hotter
temperature. Where the official script then silently gives 0.0, we count a failure and leave the item
out; too many failures withhold the score. A missing prediction is scored 0.0 without asking.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
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
    read_json,
    skipped,
)
from components.evaluate.judge import Judge, JudgeNotConfigured, describe, failure_gate, map_concurrent
from components.evaluate.metrics import parse_mmvet_score

MAX_TOKENS = 3
TEMPERATURES = (0.0, 0.0, 0.5, 1.0, 1.5)  # first ask, then the re-asks
REASK = "\nPredict the correctness of the answer (digit): "
_MEME_GT = (
    "This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. "
    "Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered "
    "in ice and snow. The meme is saying that the person has trust issues because the names of these countries "
    "do not accurately represent their landscapes."
)
# The official grader's instruction and few-shot table (protocol data, needed for comparable scores).
GRADER_PROMPT = (
    "Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. "
    "<AND> in the ground truth means it is totally right only when all elements in the ground truth are present "
    "in the prediction, and <OR> means it is totally right when any one element in the ground truth is present "
    "in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, "
    "0.9, or 1.0 (totally right). Just complete the last space of the correctness score.\n\n"
    "Question | Ground truth | Prediction | Correctness\n"
    "--- | --- | --- | ---\n"
    "What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0\n"
    f"Can you explain this meme? | {_MEME_GT} | The meme talks about Iceland and Greenland. It's pointing out "
    "that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4\n"
    f"Can you explain this meme? | {_MEME_GT} | The meme is using humor to point out the misleading nature of "
    "Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is "
    "mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest "
    "that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the "
    "unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0\n"
)


def grader_query(question: str, ground_truth: str, prediction: str) -> str:
    gt = ground_truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return GRADER_PROMPT + "\n" + " | ".join([question, gt, prediction, ""])


def _grade(judge: Judge, q: Question, query: str) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "question_id": q.question_id,
        "capability": q.meta["capability"],
        "score": None,
        "replies": [],
        "attempts": 0,
        "error": None,
    }
    for i, temperature in enumerate(TEMPERATURES):
        reply = judge.chat(
            [{"role": "user", "content": query if i == 0 else query + REASK}],
            temperature=temperature,
            max_tokens=MAX_TOKENS,
        )
        sample["attempts"] += reply.attempts
        if not reply.ok:
            sample["error"] = reply.error
            return sample
        sample["replies"].append(reply.content)
        score = parse_mmvet_score(reply.content or "")
        if score is not None:
            sample["score"] = score
            return sample
    sample["error"] = f"no score in [0, 1] after {len(TEMPERATURES)} asks: {sample['replies']!r}"
    return sample


def score_mmvet(inp: ScoreInput) -> dict[str, Any]:
    judge = inp.judge
    if judge is None or isinstance(judge, JudgeNotConfigured):
        reason = judge.reason if judge is not None else "no GPT judge given"
        return skipped(f"mmvet needs a GPT judge: {reason}")
    path = inp.files.annotations
    if path is None:
        raise BenchmarkDataError("mmvet: no mm-vet.json given")
    gt = read_json(path)
    if not isinstance(gt, dict):
        raise BenchmarkDataError(f"{path}: expected {{'v1_<n>': {{question, answer, capability}}}}")
    jobs, samples = [], []
    for q in inp.questions:
        key = f"v1_{q.source_id}"
        entry = gt.get(key)
        if entry is None:
            raise BenchmarkDataError(f"{path}: no entry {key!r} for question {q.question_id}")
        caps = need(entry, "capability", f"{path}: {key}", list)
        q = replace(q, meta={**q.meta, "capability": caps})
        text = inp.predictions.get(q.question_id)
        if text is None:
            samples.append(
                {
                    "question_id": q.question_id,
                    "capability": caps,
                    "score": 0.0,
                    "replies": [],
                    "attempts": 0,
                    "error": None,
                    "missing": True,
                }
            )
            continue
        query = grader_query(
            need(entry, "question", f"{path}: {key}"), need(entry, "answer", f"{path}: {key}"), text
        )
        jobs.append((q, query))
    samples += map_concurrent(lambda job: _grade(judge, job[0], job[1]), jobs, judge.config.concurrency)
    order = {q.question_id: i for i, q in enumerate(inp.questions)}
    samples.sort(key=lambda s: order[s["question_id"]])
    scored = [s for s in samples if s["score"] is not None]
    by_cap: dict[str, list[float]] = defaultdict(list)
    for s in scored:
        for cap in s["capability"]:
            by_cap[cap].append(s["score"])
    failures = [{"question_id": s["question_id"], "error": s["error"]} for s in samples if s["error"]]
    details = {
        "total": pct(sum(s["score"] for s in scored) / len(scored)) if scored else None,
        "capability": {k: pct(sum(v) / len(v)) for k, v in sorted(by_cap.items())},
    }
    out: dict[str, Any] = {
        "value": details["total"],
        "details": details,
        "samples": samples,
        "judge": describe(judge)
        | {
            "n_calls": sum(s["attempts"] for s in samples),
            "n_failures": len(failures),
            "failures": failures[:50],
        },
    }
    if (why := failure_gate(len(failures), len(samples), judge.config)) is not None:
        out.update(value=None, status="judge_failed", reason=why)
    return out


def upload_mmvet(questions: Sequence[Question], preds: Mapping[str, str], path: Path) -> int:
    """convert_mmvet_for_eval.py format for the official grader: {"v1_<id>": answer}."""
    path.write_text(
        json.dumps({f"v1_{q.source_id}": preds.get(q.question_id, "") for q in questions}, indent=2)
    )
    return len(questions)


MMVET = Benchmark(
    name="mmvet",
    folder="mm-vet",
    metric="total",
    split="MM-Vet v1",
    questions_file="llava-mm-vet.jsonl",
    annotations="mm-vet.json",
    images="images",
    prompt_suffix="",
    suffix_in_file=True,
    max_new_tokens=1024,
    load=load_question_jsonl,
    scorer=score_mmvet,
    upload=upload_mmvet,
    needs_judge=True,
    paper={"7b": 31.1, "13b": 36.1, "7b_lora": 30.2, "13b_lora": 38.3},
    notes="the official grader has drifted (issue #1905: 27.9 vs 31.1 on the authors' predictions)",
)
