"""What an evaluation run writes besides metrics.json: the answers file, a per-category table, a chart,
and the flat metric names logged to MLflow. Pure functions of questions, answers and the score result.
"""

from __future__ import annotations

import csv
import json
import math
import re
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.evaluate.benchmarks import Benchmark, Question

# model_vqa_science saves the prompt with its "<image>\n" prefix; SQA's IMG-Accuracy is read from it.
_PROMPT_KEEPS_IMAGE_TAG = frozenset({"sqa"})
_MLFLOW_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def answer_record(bench: Benchmark, q: Question, text: str, model_id: str) -> dict[str, Any]:
    """One line of the reference's answers JSONL for question `q`."""
    prompt = q.prompt
    if bench.name in _PROMPT_KEEPS_IMAGE_TAG and q.image is not None:
        prompt = "<image>\n" + prompt
    record: dict[str, Any] = {
        # The id as the question file wrote it (int or str), as the reference writes it; repeated ids
        # (TextVQA) are told apart by prompt when read back.
        "question_id": q.source_id if q.source_id is not None else q.question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": uuid.uuid4().hex[:22],  # the reference uses shortuuid: an opaque unique id
        "model_id": model_id,
        "metadata": {},
    }
    options = q.meta.get("options")
    if isinstance(options, Mapping):  # model_vqa_mmbench's extra fields (no circular rounds locally)
        record.update(round_id=0, options=list(options.values()), option_char=list(options))
    return record


def write_answers(
    path: Path, bench: Benchmark, questions: Sequence[Question], answers: Mapping[str, str], model_id: str
) -> int:
    """Answers JSONL in question-file order (questions without an answer are left out); returns lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for q in sorted(questions, key=lambda q: q.index):
            if q.question_id in answers:
                f.write(json.dumps(answer_record(bench, q, answers[q.question_id], model_id),
                                   ensure_ascii=False) + "\n")
                n += 1
    return n


def _sample_credit(sample: Mapping[str, Any]) -> float | None:
    """A scored sample's credit in [0, 1]: `correct` (exact-match benchmarks) or `score` (VQA soft score)."""
    if isinstance(sample.get("correct"), bool):
        return float(sample["correct"])
    if isinstance(sample.get("score"), int | float) and not isinstance(sample.get("score"), bool):
        return float(sample["score"])
    return None


def category_rows(questions: Sequence[Question], samples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-category question accuracy from scored samples, plus an 'all' row.

    This is plain per-question accuracy (VQA soft score where the benchmark has one), not the headline
    metric's own aggregation (POPE F1, MME score, MMBench circular): those stay in metrics.json.
    """
    by_id = {q.question_id: q for q in questions}
    groups: dict[str, list[float]] = defaultdict(list)
    missing: dict[str, int] = defaultdict(int)
    for s in samples:
        credit = _sample_credit(s)
        if credit is None:
            continue
        q = by_id.get(str(s.get("question_id")))
        cat = s.get("category") or s.get("subtask") or (q.category if q else None)
        cat = str(cat) if cat not in (None, "", "default") else "all"
        groups[cat].append(credit)
        if s.get("prediction") is None:
            missing[cat] += 1
    rows = [
        {"category": c, "n": len(v), "n_missing": missing[c], "accuracy": 100.0 * sum(v) / len(v)}
        for c, v in sorted(groups.items())
        if c != "all"
    ]
    everything = [x for v in groups.values() for x in v]
    if everything:
        rows.append({"category": "all", "n": len(everything), "n_missing": sum(missing.values()),
                     "accuracy": 100.0 * sum(everything) / len(everything)})
    return rows


def write_category_table(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["category", "n", "n_missing", "accuracy"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "accuracy": f"{r['accuracy']:.2f}"})


def write_chart(path: Path, result: Mapping[str, Any]) -> None:
    """Bar chart: our headline value next to the paper's LLaVA-1.5 7B and 13B numbers (on the real benchmark's
    data only: a result on synthetic data has none, and its title says so)."""
    # The Figure API draws with Agg directly: no pyplot, no global backend switch in a shared process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paper = result.get("paper", {})
    bars = [("ours", result.get("value"), "tab:blue"),
            ("LLaVA-1.5-7B\n(paper)", paper.get("7b"), "tab:gray"),
            ("LLaVA-1.5-13B\n(paper)", paper.get("13b"), "dimgray")]
    bars = [(label, float(v), c) for label, v, c in bars if isinstance(v, int | float)]
    fig = Figure(figsize=(4.5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    drawn = ax.bar(labels, values, color=[b[2] for b in bars])
    ax.bar_label(drawn, fmt="%.1f", fontsize=8)
    unit = result.get("unit", "")
    ax.set_ylabel(f"{result.get('metric', 'value')} ({unit})" if unit else str(result.get("metric")))
    title = f"{result.get('benchmark')}"
    if result.get("data") == "synthetic":
        title += " (synthetic data: not comparable with the paper)"
    if result.get("value") is None:
        title += f" — no score ({result.get('status', 'skipped')})"
    ax.set_title(title, fontsize=10)
    if unit == "%":
        ax.set_ylim(0, 100)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def mlflow_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat `<bench>/<metric>` names: the headline, every numeric detail, counts and throughput."""
    bench = str(result["benchmark"])
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        if math.isfinite(float(value)):
            out[_MLFLOW_BAD_CHARS.sub("_", f"{bench}/{name}")] = float(value)

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            put(prefix, value)

    put(str(result["metric"]), result.get("value"))
    walk("", result.get("details", {}))
    for key in ("n_questions", "n_missing"):
        put(key, result.get(key))
    walk("timing", result.get("timing", {}))
    if isinstance(result.get("parity"), list):
        put("parity/n_different", len(result["parity"]))
        put("parity/n_checked", result.get("parity_checked"))
    return out
