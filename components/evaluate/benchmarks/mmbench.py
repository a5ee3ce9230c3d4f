"""MMBench / MMBench-CN dev: multiple choice from a TSV with base64 images, scored with CircularEval.

Prompt as model_vqa_mmbench.py: [hint + "\\n"] + question + "\\nA. opt" ... (options stop at the first
empty one) + suffix. The dev TSV already holds the circularly shifted copies (copy k has index
k * 1_000_000 + base); a question counts only if every copy is answered right. The test split has no
answers and goes to the OpenCompass server through `write_upload`.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.evaluate.benchmarks.base import (
    BenchFiles,
    Benchmark,
    BenchmarkDataError,
    Question,
    Rejected,
    ScoreInput,
    one_record,
    pct,
    skipped,
)
from components.evaluate.benchmarks.sqa import MC_SUFFIX
from components.evaluate.metrics import circular_correct, parse_option_letter

CN_SUFFIX = "\n请直接回答选项字母。"
LETTERS = ("A", "B", "C", "D")
CIRCULAR_STRIDE = 1_000_000
# Columns convert_mmbench_for_submission.py drops before adding `prediction`.
_UPLOAD_DROP = {"hint", "category", "source", "image", "comment", "l2-category"}
_UPLOAD_PREDICTION_AT = 6


def _absent(value: str | None) -> bool:
    # pandas (the reference's reader) turns empty cells, "nan" and "None" into NaN
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise BenchmarkDataError(f"file not found: {path}")
    old = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images exceed the default 128 KiB
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except csv.Error as e:
        raise BenchmarkDataError(f"{path}: not a readable TSV ({e})") from None
    finally:
        csv.field_size_limit(old)
    missing = [c for c in ("index", "question", "A", "B", "image") if c not in header]
    if missing:
        raise BenchmarkDataError(f"{path}: missing columns {missing} (has {header})")
    return header, rows


def _image_bytes(rows_by_index: Mapping[int, dict[str, str]], row: dict[str, str], where: str) -> bytes:
    field = row["image"].strip()
    # Some MMBench TSVs store a circular copy's image as the index of the row that holds it.
    if field.isdigit() and len(field) <= 64 and int(field) in rows_by_index:
        field = rows_by_index[int(field)]["image"].strip()
    try:
        return base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError):
        raise BenchmarkDataError(f"{where}: column 'image' is not base64 image data") from None


def load_mmbench(files: BenchFiles, bench: Benchmark, rejected: Rejected) -> list[Question]:
    header, rows = read_tsv(files.questions)
    by_index: dict[int, dict[str, str]] = {}
    indexed: list[tuple[int, int, dict[str, str]]] = []  # (line, index, row) of the rows with a usable index
    for lineno, row in enumerate(rows, 2):
        where = f"{files.questions}:{lineno}"
        with one_record(rejected, where, row.get("index")):
            try:
                index = int(row["index"])
            except (TypeError, ValueError):
                raise BenchmarkDataError(f"{where}: index {row['index']!r} is not an integer") from None
            if index in by_index:
                raise BenchmarkDataError(f"{where}: index {index} repeats an earlier row's")
            by_index[index] = row
            indexed.append((lineno, index, row))
    has_answers = "answer" in header
    questions = []
    for lineno, index, row in indexed:
        where = f"{files.questions}:{lineno} (index {row['index']})"
        with one_record(rejected, where, index):
            questions.append(_question(row, index, len(questions), header, has_answers, by_index, bench, where))
    return questions


def _question(row: dict[str, str], index: int, i: int, header: list[str], has_answers: bool,
              by_index: Mapping[int, dict[str, str]], bench: Benchmark, where: str) -> Question:
    options: dict[str, str] = {}
    for letter in LETTERS:
        value = row.get(letter)
        if _absent(value):
            break
        options[letter] = value
    if len(options) < 2:
        raise BenchmarkDataError(f"{where}: needs at least options A and B")
    question = row.get("question")
    if question is None or row.get("image") is None:  # a short row: csv gives None for the missing columns
        raise BenchmarkDataError(f"{where}: the row has fewer columns than the header")
    if not _absent(row.get("hint")):
        question = row["hint"] + "\n" + question
    for letter, text in options.items():
        question += f"\n{letter}. {text}"
    answer = row.get("answer") if has_answers and not _absent(row.get("answer")) else None
    if answer is not None and answer.strip() not in options:
        raise BenchmarkDataError(f"{where}: answer {answer!r} is not one of the options {list(options)}")
    return Question(
        question_id=str(index),
        source_id=index,
        index=i,
        prompt=question + bench.prompt_suffix,
        image=_image_bytes(by_index, row, where),
        category=row.get("category"),
        meta={
            "options": options,
            "answer": answer.strip() if answer else None,
            "l2_category": row.get("l2-category"),
            "columns": header,
            "row": {k: v for k, v in row.items() if k != "image"},
        },
    )


def score_mmbench(inp: ScoreInput) -> dict[str, Any]:
    with_answer = [q for q in inp.questions if q.meta.get("answer")]
    if not with_answer:
        return skipped(
            f"{inp.bench.name}: no answers in {inp.files.questions} (test split): it is scored by "
            "the OpenCompass server; write the submission with write_upload"
        )
    if len(with_answer) != len(inp.questions):
        lacking = [q.question_id for q in inp.questions if not q.meta.get("answer")]
        raise BenchmarkDataError(f"{inp.files.questions}: rows {lacking[:5]} have no answer while others do")
    groups: dict[int, list[bool]] = defaultdict(list)
    group_info: dict[int, tuple[str, str]] = {}
    samples = []
    for q in inp.questions:
        text = inp.predictions.get(q.question_id)
        letter = parse_option_letter(text, q.meta["options"]) if text is not None else None
        ok = letter == q.meta["answer"]
        base = int(q.source_id) % CIRCULAR_STRIDE
        groups[base].append(ok)
        group_info.setdefault(base, (q.category or "unknown", q.meta.get("l2_category") or "unknown"))
        samples.append(
            {
                "question_id": q.question_id,
                "group": base,
                "prediction": text,
                "parsed": letter,
                "answer": q.meta["answer"],
                "correct": ok,
            }
        )
    passed = {g: circular_correct(flags) for g, flags in groups.items()}
    by_cat: dict[str, list[bool]] = defaultdict(list)
    by_l2: dict[str, list[bool]] = defaultdict(list)
    for g, ok in passed.items():
        by_cat[group_info[g][0]].append(ok)
        by_l2[group_info[g][1]].append(ok)
    first_pass = [
        s["correct"]
        for q, s in zip(inp.questions, samples, strict=True)
        if int(q.source_id) < CIRCULAR_STRIDE
    ]
    details: dict[str, Any] = {
        "circular_accuracy": pct(sum(passed.values()) / len(passed)),
        "single_pass_accuracy": pct(sum(first_pass) / len(first_pass)) if first_pass else None,
        "n_questions_circular": len(passed),
        "n_unparsed": sum(s["parsed"] is None for s in samples),
        "category": {k: pct(sum(v) / len(v)) for k, v in sorted(by_cat.items())},
        "l2_category": {k: pct(sum(v) / len(v)) for k, v in sorted(by_l2.items())},
    }
    return {"value": details["circular_accuracy"], "details": details, "samples": samples}


def upload_mmbench(questions: Sequence[Question], preds: Mapping[str, str], path: Path) -> int:
    """The server's sheet as TSV: the TSV's columns minus hint/category/source/image/comment/l2-category,
    with a `prediction` column (raw text; the server extracts the letter). openpyxl is not a dependency,
    so no xlsx: convert with any spreadsheet tool if the server insists."""
    if not questions:
        raise ValueError("no questions to write")
    columns = [c for c in questions[0].meta["columns"] if c not in _UPLOAD_DROP]
    columns.insert(min(_UPLOAD_PREDICTION_AT, len(columns)), "prediction")
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for q in questions:
            row = dict(q.meta["row"], prediction=preds.get(q.question_id, ""))
            writer.writerow([row.get(c, "") for c in columns])
    return len(questions)


_PAPER_EN = {"7b": 64.3, "13b": 67.7, "7b_lora": 66.1, "13b_lora": 68.5}
_PAPER_CN = {"7b": 58.3, "13b": 63.6, "7b_lora": 58.9, "13b_lora": 61.5}

MMBENCH = Benchmark(
    name="mmbench",
    folder="mmbench",
    metric="circular_accuracy",
    split="dev (20230712)",
    questions_file="mmbench_dev_20230712.tsv",
    annotations=None,
    images=None,
    prompt_suffix=MC_SUFFIX,
    suffix_in_file=False,
    max_new_tokens=1024,
    load=load_mmbench,
    scorer=score_mmbench,
    upload=upload_mmbench,
    paper=_PAPER_EN,
    notes="answers live in the TSV; the paper number is the server's CircularEval on dev",
)

MMBENCH_CN = Benchmark(
    name="mmbench_cn",
    folder="mmbench_cn",
    metric="circular_accuracy",
    split="dev (20231003)",
    questions_file="mmbench_dev_cn_20231003.tsv",
    annotations=None,
    images=None,
    prompt_suffix=CN_SUFFIX,
    suffix_in_file=False,
    max_new_tokens=1024,
    load=load_mmbench,
    scorer=score_mmbench,
    upload=upload_mmbench,
    paper=_PAPER_CN,
    notes="LLaVA's script reads eval/mmbench_cn/ while its docs say eval/mmbench/",
)
