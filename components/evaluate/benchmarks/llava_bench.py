"""LLaVA-Bench (In-the-Wild): a GPT judge compares our answer with GPT-4's; relative score per category.

Protocol of eval_gpt_review_bench.py + summarize_gpt_review.py, its rounding included: image captions,
the question, the reference answer (Assistant 1) and ours (Assistant 2) go to the judge with the
category's rule; the first line of the review holds two 1-10 scores. Unlike the reference, a failed call
or an unparsable review ([-1, -1] there) is counted and left out of the means instead of being averaged
in, and too many failures withhold the score.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from components.evaluate.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    Question,
    ScoreInput,
    canon_id,
    load_question_jsonl,
    need,
    read_jsonl,
    skipped,
)
from components.evaluate.judge import Judge, JudgeNotConfigured, describe, failure_gate, map_concurrent
from components.evaluate.metrics import parse_review_scores, relative_scores

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
TEMPERATURE = 0.2
MAX_TOKENS = 1024
ROLE = "Assistant"
# The rule text LLaVA's llava/eval/table/rule.json gives all three llava_bench_* categories (protocol
# data: the judge must read the same instruction for scores to be comparable).
RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the "
    "visual content in the image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and "
    "2, respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment."
)
CATEGORIES = ("conv", "detail", "complex")


def review_content(caption: str, question: str, reference: str, candidate: str) -> str:
    """The judge's user message, laid out as the reference lays it out."""
    return (
        f"[Context]\n{caption}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{ROLE} 1]\n{reference}\n\n[End of {ROLE} 1]\n\n"
        f"[{ROLE} 2]\n{candidate}\n\n[End of {ROLE} 2]\n\n"
        f"[System]\n{RULE}\n\n"
    )


def _caption(value: Any, where: str) -> str:
    # A list of sentences is joined by newlines (the reference joins whatever it gets; on a plain string
    # that would put every character on its own line, so a string is used as is).
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return "\n".join(value)
    if isinstance(value, str):
        return value
    raise BenchmarkDataError(f"{where}: 'caption' should be text or a list of text")


def score_llava_bench(inp: ScoreInput) -> dict[str, Any]:
    judge = inp.judge
    if judge is None or isinstance(judge, JudgeNotConfigured):
        reason = judge.reason if judge is not None else "no GPT judge given"
        return skipped(f"llava_bench needs a GPT judge: {reason}")
    ref_path = inp.files.annotations
    if ref_path is None:
        raise BenchmarkDataError("llava_bench: no answers_gpt4.jsonl given")
    refs = {
        canon_id(need(o, "question_id", f"{ref_path}:{n}", (int, str))): need(o, "text", f"{ref_path}:{n}")
        for n, o in read_jsonl(ref_path)
    }
    ctx_path = inp.files.beside_annotations("context.jsonl")
    captions = {
        need(o, "image", f"{ctx_path}:{n}"): _caption(o.get("caption"), f"{ctx_path}:{n}")
        for n, o in read_jsonl(ctx_path)
    }
    jobs = []
    for q in inp.questions:
        if q.category not in CATEGORIES:
            raise BenchmarkDataError(
                f"llava_bench question {q.question_id}: category {q.category!r} is not one of {CATEGORIES}"
            )
        ref = refs.get(canon_id(q.source_id))
        if ref is None:
            raise BenchmarkDataError(f"{ref_path}: no reference answer for question {q.question_id}")
        image = q.meta.get("image_file")
        if image not in captions:
            raise BenchmarkDataError(f"{ctx_path}: no caption for image {image!r} (question {q.question_id})")
        # A missing prediction is judged as an empty answer, so it scores low rather than vanishing.
        jobs.append(
            (q, review_content(captions[image], q.prompt, ref, inp.predictions.get(q.question_id, "")))
        )
    reviews = map_concurrent(lambda job: _review(judge, job[0], job[1]), jobs, judge.config.concurrency)
    return _summarize(judge, reviews)


def _review(judge: Judge, q: Question, content: str) -> dict[str, Any]:
    reply = judge.chat(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
        temperature=TEMPERATURE,
        max_tokens=MAX_TOKENS,
    )
    sample: dict[str, Any] = {
        "question_id": q.question_id,
        "category": q.category,
        "attempts": reply.attempts,
        "review": reply.content,
        "scores": None,
        "error": None,
    }
    if not reply.ok:
        sample["error"] = reply.error
    elif (scores := parse_review_scores(reply.content or "")) is None:
        sample["error"] = f"review's first line is not two scores: {(reply.content or '').splitlines()[:1]!r}"
    else:
        sample["scores"] = list(scores)
    return sample


def _summarize(judge: Judge, reviews: list[dict[str, Any]]) -> dict[str, Any]:
    by_cat: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in reviews:
        if r["scores"] is not None:
            by_cat[r["category"]].append(tuple(r["scores"]))
            by_cat["all"].append(tuple(r["scores"]))
    failures = [{"question_id": r["question_id"], "error": r["error"]} for r in reviews if r["error"]]
    details = {cat: relative_scores(pairs) for cat, pairs in sorted(by_cat.items())}
    out: dict[str, Any] = {
        "value": details["all"]["relative"] if "all" in details else None,
        "details": details,
        "samples": reviews,
        "judge": describe(judge)
        | {
            "n_calls": sum(r["attempts"] for r in reviews),
            "n_failures": len(failures),
            "failures": failures[:50],
        },
    }
    if (why := failure_gate(len(failures), len(reviews), judge.config)) is not None:
        out.update(value=None, status="judge_failed", reason=why)
    return out


LLAVA_BENCH = Benchmark(
    name="llava_bench",
    folder="llava-bench-in-the-wild",
    metric="relative_score",
    split="in-the-wild (60 questions)",
    questions_file="questions.jsonl",
    annotations="answers_gpt4.jsonl",
    images="images",
    prompt_suffix="",
    suffix_in_file=True,
    max_new_tokens=1024,
    load=load_question_jsonl,
    scorer=score_llava_bench,
    needs_judge=True,
    paper={"7b": 65.4, "13b": 72.5, "7b_lora": 67.9, "13b_lora": 69.5},
    notes="model zoo numbers (mean of 3 gpt-4-0314 reviews); the paper printed 63.4 / 70.7; "
    "scores from another judge model are not comparable",
)
