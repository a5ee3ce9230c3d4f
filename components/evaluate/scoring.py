"""Score an answers file against a benchmark (`llava-pipeline score BENCH --predictions FILE`) and print it.

Answers files are what generation writes, in the reference format: JSONL lines
{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}; order does not matter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.evaluate.benchmarks import BenchmarkDataError, Question, get_benchmark
from components.evaluate.benchmarks.base import canon_id, need, read_jsonl
from components.evaluate.judge import Judge, JudgeConfig, JudgeNotConfigured


def _same_prompt(record_prompt: Any, q: Question) -> bool:
    # SQA answers save "<image>\n" + prompt; other benchmarks save the question text as given.
    return isinstance(record_prompt, str) and record_prompt.replace("<image>", "").strip() == q.prompt.strip()


def read_predictions(
    path: str | Path, questions: Sequence[Question]
) -> tuple[dict[str, str], dict[str, Any]]:
    """question_id -> text from an answers JSONL, plus counts of what was read.

    When the question file repeats an id (LLaVA's TextVQA uses the image id), a record carrying the plain
    id is matched to the question with the same prompt, else to the first one not yet matched.
    """
    path = Path(path)
    by_id = {q.question_id: q for q in questions}
    by_source: dict[str, list[Question]] = {}
    for q in questions:
        if canon_id(q.source_id) != q.question_id:
            by_source.setdefault(canon_id(q.source_id), []).append(q)
    preds: dict[str, str] = {}
    first_line: dict[str, int] = {}
    duplicates = resolved = 0
    rows = read_jsonl(path)
    for lineno, rec in rows:
        where = f"{path}:{lineno}"
        key = canon_id(need(rec, "question_id", where, (int, str)))
        text = need(rec, "text", where)
        if key not in by_id and key in by_source:
            free = [q for q in by_source[key] if q.question_id not in preds]
            if not free:
                raise BenchmarkDataError(
                    f"{where}: more answers for question id {key!r} than questions with it"
                )
            match = next((q for q in free if _same_prompt(rec.get("prompt"), q)), free[0])
            key = match.question_id
            resolved += 1
        if key in preds:
            if preds[key] != text:
                raise BenchmarkDataError(
                    f"{where}: second, different answer for question {key!r} "
                    f"(first at line {first_line[key]})"
                )
            duplicates += 1
            continue
        preds[key] = text
        first_line[key] = lineno
    info = {
        "file": str(path),
        "n_records": len(rows),
        "n_duplicates": duplicates,
        "n_matched_by_prompt": resolved,
    }
    return preds, info


def score_file(
    benchmark: str,
    predictions: str | Path,
    questions: str | Path | None = None,
    annotations: str | Path | None = None,
    *,
    root: str | Path | None = None,
    judge: Judge | JudgeConfig | JudgeNotConfigured | None = None,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Score an answers file. `root` is the benchmark folder; it defaults to the question file's folder,
    and the question/annotation files default to the benchmark's own names inside it."""
    bench = get_benchmark(benchmark)
    if root is None:
        if questions is None:
            raise ValueError(
                f"{bench.name}: give the question file (--questions, e.g. "
                f"<eval_root>/{bench.folder}/{bench.questions_file}) or the benchmark folder"
            )
        root = Path(questions).parent
    qs = bench.load_questions(root, questions)
    preds, info = read_predictions(predictions, qs)
    result = bench.score(qs, preds, root, annotations=annotations, judge=judge, keep_samples=keep_samples)
    result["predictions"] = info
    return result


# ---------------------------------------------------------------- printing


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if value is None:
        return "-"
    return str(value)


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, list | tuple):
        if len(value) <= 8:
            out.append((prefix, ", ".join(_fmt(v) for v in value)))
    else:
        out.append((prefix, _fmt(value)))


def _paper(result: Mapping[str, Any], size: str) -> str:
    value = result.get("paper", {}).get(size)
    return "-" if value is None else str(value)  # as printed in the paper


def _headline(r: Mapping[str, Any]) -> str:
    unit = " %" if r.get("unit") == "%" else f" {r.get('unit', '')}".rstrip()
    value = f"{_fmt(r.get('value'))}{unit if r.get('value') is not None else ''}"
    if r.get("data") == "synthetic":
        return f"{r['benchmark']}  {r['metric']} = {value}   (synthetic benchmark data: not comparable with the paper)"
    return f"{r['benchmark']}  {r['metric']} = {value}   (paper 7B {_paper(r, '7b')}, 13B {_paper(r, '13b')})"


def format_metrics(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table: one result in detail, or several as one summary row each."""
    if isinstance(results, Mapping):
        return _format_one(results)
    header = ("benchmark", "metric", "value", "paper 7B", "paper 13B", "questions", "missing", "status")
    rows = [header] + [
        (
            r["benchmark"],
            r["metric"],
            _fmt(r.get("value")),
            _paper(r, "7b"),
            _paper(r, "13b"),
            str(r.get("n_questions", "-")),
            str(r.get("n_missing", "-")),
            r.get("status", "ok"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _format_one(r: Mapping[str, Any]) -> str:
    lines = [_headline(r)]
    if r.get("status", "ok") != "ok":
        lines.append(f"  {r['status']}: {r.get('reason', '')}")
    lines.append(
        f"  questions {r.get('n_questions', '-')}, missing predictions {r.get('n_missing', '-')}"
        + (f" (e.g. {', '.join(map(str, r['missing_examples'][:3]))})" if r.get("n_missing") else "")
        + (
            f", answers for unknown questions {r['n_unknown_predictions']}"
            if r.get("n_unknown_predictions")
            else ""
        )
    )
    if r.get("reason") and r.get("status", "ok") == "ok":
        lines.append(f"  note: {r['reason']}")
    if r.get("warning"):
        lines.append(f"  warning: {r['warning']}")
    if "judge" in r:
        j = r["judge"]
        lines.append(
            f"  judge {j.get('model')} at {j.get('endpoint')}: {j.get('n_calls')} calls, "
            f"{j.get('n_failures')} failed items"
        )
    rows: list[tuple[str, str]] = []
    _flatten("", r.get("details", {}), rows)
    if rows:
        width = max(len(k) for k, _ in rows)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def to_json(result: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """JSON for `--json` (bytes of embedded images never reach results, so this always serialises)."""
    return json.dumps(result, indent=2, ensure_ascii=False, default=str)
