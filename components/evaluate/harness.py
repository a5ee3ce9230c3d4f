"""The evaluation harness: benchmark questions -> answers from a generation pool (pool.py) -> score -> files.

`evaluate_benchmarks` feeds several benchmarks through one pool, so each replica loads the model once; the
evaluate stage (stage.py) passes the run's warm pool, so every benchmark job reuses it; the sweep's trials
answer their dev benchmark through it in their own process. Rows are fed sorted by modality and
prompt length (less padding; image and text-only prompts rarely share a batch, and `Generator.answer` splits
any that do), and results come back in whatever order replicas finish. Answers are therefore keyed by
question_id and re-sorted into question-file order before anything is written or scored: POPE zips answers
with label lines and MME pairs consecutive answers, so order is part of the metric.

Writes under `out_dir/<benchmark>/`: answers.jsonl (the reference's answer format), samples.jsonl,
metrics.json, categories.csv, chart.png and, for server-scored benchmarks, upload/<benchmark>.<ext>.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core.mlflow_target import MlflowTarget
from components.core.templates import TemplateName
from components.evaluate.benchmarks import Benchmark, BenchmarkDataError, Question, get_benchmark
from components.evaluate.benchmarks.base import MAX_REJECTED_FRACTION
from components.evaluate.generate import compare_answers
from components.evaluate.judge import Judge, JudgeConfig, JudgeNotConfigured, make_judge
from components.evaluate.outputs import (
    category_rows,
    mlflow_metrics,
    write_answers,
    write_category_table,
    write_chart,
)
from components.evaluate.pool import GenerationPool, PoolSpec, generate_in_process
from components.models.remote import localize

log = logging.getLogger(__name__)
_UPLOAD_EXT = {"mmbench": "tsv", "mmbench_cn": "tsv"}  # the rest upload JSON


@dataclass
class _BenchmarkRun:
    """One benchmark of a run: its questions (file order) and where things are."""

    bench: Benchmark
    root: Path  # the benchmark folder on this node (question and annotation files)
    source: str  # the benchmark folder as the eval root names it (maybe s3://): where actors read images
    out: Path
    questions: list[Question]
    max_new_tokens: int
    parity_ids: set[str] = field(default_factory=set)
    judge: Judge | JudgeNotConfigured | None = None
    unread: list[dict[str, Any]] = field(default_factory=list)  # malformed question records (file:line, why)


def _question_rows(jobs: Sequence[_BenchmarkRun]) -> list[dict[str, Any]]:
    """Rows for Ray Data: image prompts first, then by generation length and prompt length (less padding).

    `feed` is the position in this feed order; images are located here, so actors need no benchmark layout.
    Actors may run on other nodes: an image is named under the folder's source (a storage URL or a shared
    path), never under this node's local copy.
    """
    flat = [(job, q) for job in jobs for q in job.questions]
    flat.sort(key=lambda jq: (jq[1].image is None, jq[0].max_new_tokens, len(jq[1].prompt)))
    return [
        {
            "bench": job.bench.name,
            "question_id": q.question_id,
            "feed": i,
            "prompt": q.prompt,
            # The name as the question file gives it; the actor reads it only from under the benchmark folder.
            "image_path": q.image if isinstance(q.image, str) else None,
            "image_root": job.source if isinstance(q.image, str) else None,
            "image_bytes": q.image if isinstance(q.image, bytes) else None,
            "max_new_tokens": job.max_new_tokens,
            "parity": q.question_id in job.parity_ids,
        }
        for i, (job, q) in enumerate(flat)
    ]


def _spread(questions: Sequence[Question], k: int) -> list[Question]:
    """k questions evenly spread over the list (all of them when k >= len)."""
    n = len(questions)
    if k >= n:
        return list(questions)
    step = (n - 1) / max(1, k - 1)
    return [questions[round(i * step)] for i in range(k)] if k > 1 else [questions[0]]


def _skipped_for_judge(job: _BenchmarkRun, reason: str) -> dict[str, Any]:
    bench = job.bench
    return {
        "benchmark": bench.name,
        "metric": bench.metric,
        "unit": bench.unit,
        "value": None,
        "status": "skipped",
        "reason": f"{bench.name} is scored by a GPT judge and none is configured ({reason}); "
        "nothing was generated",
        "n_questions": len(job.questions),
        "n_missing": len(job.questions),
        "paper": dict(bench.paper),
        "version": bench.version,
    }


def local_folder(source: str | Path, bench: Benchmark) -> Path:
    """The benchmark folder `source` (local or s3://) on this node: a remote folder's files are fetched to
    this node's cache, its images left out (whoever reads an image reads it from the source)."""
    return Path(localize(str(source), exclude=(bench.images,) if bench.images else ()))


def _prepare_job(
    name: str, folder: str | Path, out_dir: str | Path, limit: int | None, parity_sample: int,
    max_new_tokens: int | None,
) -> _BenchmarkRun:
    bench = get_benchmark(name)
    source = str(folder)
    root = local_folder(source, bench)
    questions = bench.load_questions(root)
    unread = questions.rejected  # malformed records: each in rejected.jsonl with its file:line and field
    if limit is not None:
        questions = questions[:limit]  # a prefix: positional scorers (POPE, MME pairs) stay aligned
    job = _BenchmarkRun(bench, root, source, Path(out_dir) / bench.name, questions,
               max_new_tokens or bench.max_new_tokens, unread=unread)
    if parity_sample > 0:
        job.parity_ids = {q.question_id for q in _spread(questions, parity_sample)}
    return job


def _finish(
    job: _BenchmarkRun, results: dict[tuple[str, str], dict[str, Any]], pass_stats: dict[str, Any],
    extra: dict[str, Any], mlflow: MlflowTarget | None,
) -> dict[str, Any]:
    """Score one benchmark's answers and write its files (answers re-sorted into question-file order)."""
    bench, out = job.bench, job.out
    # A question the pool returned nothing for, or rejected, is scored as missing (counted in n_missing).
    returned = {q.question_id: results[(bench.name, q.question_id)] for q in job.questions
                if (bench.name, q.question_id) in results}
    rejected = [*job.unread, *({"question_id": q.question_id, "index": q.index, **returned[q.question_id]["rejected"]}
                               for q in job.questions if "rejected" in returned.get(q.question_id, {}))]
    mine = {k: r for k, r in returned.items() if "rejected" not in r}
    answers = {k: r["text"] for k, r in mine.items()}
    gen_s = sum(r["gen_s"] for r in mine.values())
    timing = {
        "actor_generate_s": gen_s,  # model time for this benchmark's batched answers, over all actors
        "samples_per_s": len(mine) / gen_s if gen_s > 0 else None,
        **pass_stats,
    }
    start = time.perf_counter()
    result = bench.score(job.questions, answers, job.root, judge=job.judge if bench.needs_judge else None)
    timing["score_s"] = time.perf_counter() - start
    samples = result.pop("samples", [])

    out.mkdir(parents=True, exist_ok=True)
    files = {"answers": str(out / "answers.jsonl"), "rejected": str(out / "rejected.jsonl")}
    # As in prepare: every question that was not asked, and why (an empty file when none was).
    (out / "rejected.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rejected), encoding="utf-8")
    result["n_rejected"] = len(rejected)
    result["rejected_by_reason"] = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    write_answers(out / "answers.jsonl", bench, job.questions, answers, extra["model_id"])
    if samples:
        files["samples"] = str(out / "samples.jsonl")
        (out / "samples.jsonl").write_text(
            "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples), encoding="utf-8"
        )
    if bench.upload is not None:
        path = out / "upload" / f"{bench.name}.{_UPLOAD_EXT.get(bench.name, 'json')}"
        result["upload"] = bench.write_upload(bench.upload_questions(job.root), answers, path)
        files["upload"] = str(path)
    rows = category_rows(job.questions, samples)
    files["table"] = str(out / "categories.csv")
    write_category_table(out / "categories.csv", rows)
    files["chart"] = str(out / "chart.png")
    files["metrics"] = str(out / "metrics.json")

    result.update(extra, generation={**extra["generation"], "max_new_tokens": job.max_new_tokens},
                  timing=timing, categories=rows, files=files)
    if job.parity_ids:
        single = {k: r["single"] for k, r in mine.items() if k in job.parity_ids}
        diffs = compare_answers(single, {k: answers[k] for k in single})
        # [] when batched decoding agreed with batch 1 everywhere; each entry: {key, reference (batch 1),
        # candidate (batched)}.
        result["parity"] = diffs
        result["parity_checked"] = len(single)
    write_chart(out / "chart.png", result)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))

    if mlflow is not None:
        _log(mlflow, bench.name, mlflow_metrics(result), {f"eval.{bench.name}.status": result.get("status", "ok")},
             [files[key] for key in ("answers", "rejected", "table", "chart", "metrics")])
    _check_rejected(bench.name, rejected, len(job.questions) + len(job.unread), out)
    return result


def _log(mlflow: MlflowTarget, bench: str, metrics: dict[str, float], tags: dict[str, str], files: list[str]
         ) -> None:
    """Kept on this node and sent in the background (mlflow_sender.py): a tracking server that is down costs
    the stage no time and no result. Only a local disk error can fail it, and that does not fail the stage."""
    try:
        mlflow.log_metrics(metrics, background=True)
        mlflow.set_tags(tags, background=True)
        for path in files:
            mlflow.log_artifact(path, f"eval/{bench}", background=True)
    except OSError as e:
        log.warning("%s: MLflow entries not kept: %s", bench, e)


def _check_rejected(name: str, rejected: list[dict[str, Any]], total: int, out: Path) -> None:
    """Most questions rejected is a broken setup (images out of reach, a wrong folder), not a score: fail
    loudly, naming the top reasons, after the files that explain it are written."""
    if total and len(rejected) > MAX_REJECTED_FRACTION * total:
        top = ", ".join(f"{reason} ({n})" for reason, n in Counter(r["reason"] for r in rejected).most_common(3))
        raise BenchmarkDataError(f"{name}: {len(rejected)} of {total} questions were rejected (more than "
                                 f"{MAX_REJECTED_FRACTION:.0%}): {top}; see {out / 'rejected.jsonl'}")


def evaluate_benchmarks(
    folders: Mapping[str, str | Path],
    *,
    model_dir: str | Path,
    out_dir: str | Path,
    template: TemplateName = "vicuna_v1",
    batch_size: int = 8,
    num_actors: int = 1,
    use_gpu: bool = False,
    limit: int | None = None,
    parity_sample: int = 0,
    judge: Judge | JudgeConfig | JudgeNotConfigured | None = None,
    mlflow: MlflowTarget | None = None,
    cpus_per_actor: float = 1.0,
    dtype: str = "auto",
    max_new_tokens: int | None = None,
    model_id: str | None = None,
    generate_without_judge: bool = False,
    blank_images: bool = False,
    delay_first_batch_s: float = 0.0,
    in_process: bool = False,
    pool: GenerationPool | None = None,
) -> list[dict[str, Any]]:
    """Generate answers for the benchmarks named in `folders` with one generation pool, score them and write
    the results; one result per name, in the order given.

    `folders` maps each benchmark to its folder, laid out as in LLaVA's eval.zip, local or s3:// (question
    files are fetched to this node, images read by each actor on its own); results go to
    `<out_dir>/<benchmark>/`. `limit` takes the first N questions of each file (a prefix, so positional scorers
    stay aligned); the score then covers those N only. `parity_sample` > 0 also answers that many questions
    (spread over the file) at batch 1: result["parity"] lists where they differ ([] when none do) and
    result["parity_checked"] how many were compared. `judge` None reads the LLAVA_JUDGE_* environment; a judged
    benchmark without a judge is skipped (status "skipped", nothing generated) unless
    `generate_without_judge=True`, which still writes the answers and the grader's upload file.
    `blank_images=True` feeds every image question the blank (mean-colour) image instead: an image-dependence
    check. `pool`: a running pool to use (the run's warm pool; its own model and generation settings then
    apply), else one is started for this call. `in_process` answers in this process instead
    (`generate_in_process`), on this process's GPU when `use_gpu`: for a caller that already holds one (a
    sweep trial's Train worker), where a pool would wait for a second GPU."""
    if batch_size < 1 or num_actors < 1:
        raise ValueError(f"batch_size and num_actors must be >= 1, got {batch_size} and {num_actors}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    jobs = [_prepare_job(n, f, out_dir, limit, parity_sample, max_new_tokens) for n, f in folders.items()]
    dupes = {j.bench.name for j in jobs if sum(k.bench.name == j.bench.name for k in jobs) > 1}
    if dupes:
        raise ValueError(f"benchmarks named more than once: {sorted(dupes)}")

    skipped: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if not job.bench.needs_judge:
            continue
        job.judge = make_judge(judge)
        if isinstance(job.judge, JudgeNotConfigured) and not generate_without_judge:
            skipped[job.bench.name] = result = _skipped_for_judge(job, job.judge.reason)
            job.out.mkdir(parents=True, exist_ok=True)
            (job.out / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
            if mlflow is not None:
                _log(mlflow, job.bench.name, {}, {f"eval.{job.bench.name}.status": "skipped"}, [])
    todo = [j for j in jobs if j.bench.name not in skipped]

    results: dict[tuple[str, str], dict[str, Any]] = {}
    pass_stats: dict[str, Any] = {}
    if todo and in_process:
        results, pass_stats = generate_in_process(
            _question_rows(todo), model_dir=str(model_dir), template=template, batch_size=batch_size, dtype=dtype,
            cpus=cpus_per_actor, blank_images=blank_images, use_gpu=use_gpu)
    elif todo:
        own = pool is None  # no run-wide pool: one for this call only
        spec = PoolSpec(str(model_dir), template, batch_size, num_actors, use_gpu, cpus_per_actor, dtype,
                        delay_first_batch_s)
        active = GenerationPool(spec) if pool is None else pool
        try:
            results, pass_stats = active.generate(_question_rows(todo), blank_images=blank_images)
        finally:
            if own:
                active.close()
    extra = {
        "model_dir": str(model_dir),
        "model_id": model_id or Path(str(model_dir).rstrip("/")).name,
        "limit": limit,
        "generation": {"template": template, "image_mode": "pad", "greedy": True, "batch_size": batch_size,
                       "num_actors": num_actors, "use_gpu": use_gpu, "dtype": dtype,
                       "blank_images": blank_images},
    }
    done = [
        skipped[j.bench.name] if j.bench.name in skipped else _finish(j, results, pass_stats, extra, mlflow)
        for j in jobs
    ]
    if mlflow is not None:  # a bounded wait; what is still unsent stays kept and is sent later
        mlflow.flush()
    return done
