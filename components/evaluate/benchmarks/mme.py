"""MME: yes/no questions, two per image; the paper reports Perception (sum of 10 subtask scores).

Ground truth: `MME_Benchmark_release_version/<subtask>/questions_answers_YN/<image stem>.txt` (or the txt
next to the images, as some real subtasks have it), lines "question Please answer yes or no.\\tYes|No".
calculation.py pairs consecutive lines of each subtask as one image's two questions, so we walk questions
in file order and check that each pair really shares an image.
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
)
from components.evaluate.benchmarks.vqa import SHORT_ANSWER
from components.evaluate.metrics import MME_COGNITION, MME_PERCEPTION, mme_subtask, parse_mme_answer

_YES_NO = "Please answer yes or no."


def _core(question: str) -> str:
    """A question with the yes/no instruction and our suffix removed, whitespace collapsed."""
    q = question.replace(SHORT_ANSWER.strip(), "").replace(_YES_NO, "")
    return " ".join(q.split())


def _qa_file(release: Path, subtask: str, image_file: str) -> Path:
    # convert_answer_to_mme.py: the stem is everything before the first '.'.
    name = image_file.split("/")[-1].split(".")[0] + ".txt"
    nested = release / subtask / "questions_answers_YN"
    return (nested if nested.is_dir() else release / subtask) / name


def _ground_truth(
    release: Path, subtask: str, image_file: str, cache: dict[Path, dict[str, str]]
) -> dict[str, str]:
    path = _qa_file(release, subtask, image_file)
    if path not in cache:
        if not path.is_file():
            raise BenchmarkDataError(f"MME ground truth not found: {path}")
        table = {}
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                raise BenchmarkDataError(f"{path}:{lineno}: expected 'question<TAB>Yes|No', got {line!r}")
            table[_core(parts[0])] = parts[1].strip()
        cache[path] = table
    return cache[path]


def _subtask_and_image(q: Question) -> tuple[str, str]:
    # question_id is "<subtask>/<image file>"; the subtask comes from it, as in convert_answer_to_mme.py
    subtask, _, image = str(q.source_id).partition("/")
    if not subtask or not image:
        raise BenchmarkDataError(f"MME question id {q.source_id!r} should look like '<subtask>/<image file>'")
    return subtask, image


def score_mme(inp: ScoreInput) -> dict[str, Any]:
    release = inp.files.annotations
    if release is None or not release.is_dir():
        raise BenchmarkDataError(f"MME ground-truth folder not found: {release}")
    cache: dict[Path, dict[str, str]] = {}
    by_task: dict[str, list[tuple[Question, str, str]]] = defaultdict(list)
    samples = []
    for q in inp.questions:
        subtask, image = _subtask_and_image(q)
        table = _ground_truth(release, subtask, image, cache)
        core = _core(q.prompt)
        if core not in table:
            raise BenchmarkDataError(
                f"{_qa_file(release, subtask, image)}: no line for question {q.question_id} ({core!r})"
            )
        text = inp.predictions.get(q.question_id)
        parsed = parse_mme_answer(text) if text is not None else "other"
        by_task[subtask].append((q, table[core], parsed))
        samples.append(
            {
                "question_id": q.question_id,
                "subtask": subtask,
                "prediction": text,
                "parsed": parsed,
                "answer": table[core],
                "correct": parsed == table[core].lower(),
            }
        )
    subtasks: dict[str, Any] = {}
    for subtask, rows in sorted(by_task.items()):
        if len(rows) % 2:
            raise BenchmarkDataError(
                f"MME subtask {subtask!r} has {len(rows)} questions; it needs two per image"
            )
        pairs = []
        for a, b in zip(rows[::2], rows[1::2], strict=True):
            if _subtask_and_image(a[0])[1] != _subtask_and_image(b[0])[1]:
                raise BenchmarkDataError(
                    f"MME subtask {subtask!r}: consecutive questions {a[0].question_id} and {b[0].question_id} "
                    "are about different images; the question file must list each image's two questions together"
                )
            pairs.append(((a[1], a[2]), (b[1], b[2])))
        m = mme_subtask(pairs)
        subtasks[subtask] = {
            "score": m["score"],
            "acc": 100 * m["acc"],
            "acc_plus": 100 * m["acc_plus"],
            "other_answers": m["other_answers"],
            "images": m["images"],
        }
    # Summed in calculation.py's subtask order, so the totals agree with it to the last bit.
    perception = [t for t in MME_PERCEPTION if t in subtasks]
    cognition = [t for t in MME_COGNITION if t in subtasks]
    details: dict[str, Any] = {
        "perception": sum(subtasks[t]["score"] for t in perception) if perception else None,
        "cognition": sum(subtasks[t]["score"] for t in cognition) if cognition else None,
        "perception_subtasks": len(perception),
        "cognition_subtasks": len(cognition),
        "subtasks": subtasks,
    }
    other = sorted(set(subtasks) - set(MME_PERCEPTION) - set(MME_COGNITION))
    if other:
        details["unknown_subtasks"] = other  # scored above, left out of both totals
    out = {"value": details["perception"], "details": details, "samples": samples}
    if details["perception"] is None:
        out["reason"] = "no perception subtask present; see details.cognition"
    return out


MME = Benchmark(
    name="mme",
    folder="MME",
    metric="perception",
    split="MME (perception max 2000, cognition max 800)",
    questions_file="llava_mme.jsonl",
    annotations="MME_Benchmark_release_version",
    images="images",
    prompt_suffix=SHORT_ANSWER,
    suffix_in_file=True,
    max_new_tokens=128,
    load=load_question_jsonl,
    scorer=score_mme,
    unit="points",
    paper={"7b": 1510.7, "13b": 1531.3, "7b_lora": 1476.9, "13b_lora": 1541.7},
    notes="perception/cognition sum only the subtasks present",
)
