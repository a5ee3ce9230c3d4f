"""The evaluation harness end to end on the synthetic world's eval sets: Ray actors, order, files, MLflow.

One Ray pass (module fixture) answers the first questions of five benchmarks with two actors, the first
batch held back so results arrive out of order; the tests then check what it wrote and logged.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from components.core.mlflow_target import MlflowTarget
from components.evaluate.benchmarks import UnknownBenchmark, get_benchmark
from components.evaluate.harness import evaluate_benchmarks
from components.evaluate.judge import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, JudgeNotConfigured
from components.evaluate.scoring import score_file
from components.synth.evalsets import write_eval_sets
from components.synth.files import Writer
from components.synth.scene import COLORS

BENCHES = ["pope", "mme", "gqa", "mmbench", "sqa", "mmvet"]  # mmvet: judged, no judge -> skipped
LIMIT = 16
@pytest.fixture(scope="module")
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic world's eval sets alone (generate_world also renders ~4k training images)."""
    root = tmp_path_factory.mktemp("world") / "synth"
    write_eval_sets(Writer(root), 0, 1.0, sorted(COLORS))
    return root / "eval"


@pytest.fixture(scope="module")
def mlflow_target(tmp_path_factory: pytest.TempPathFactory) -> MlflowTarget:
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("eval-test", artifact_location=(tmp / "artifacts").as_uri())
    return MlflowTarget(uri, client.create_run(exp).info.run_id)


@pytest.fixture(scope="module")
def stage(ray_local, eval_root, model_dir, mlflow_target, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval_out")
    with pytest.MonkeyPatch.context() as mp:
        for var in (ENV_BASE_URL, ENV_MODEL, ENV_API_KEY):
            mp.delenv(var, raising=False)
        results = evaluate_benchmarks(
            _folders(eval_root, *BENCHES), model_dir=model_dir, out_dir=out, batch_size=4, num_actors=2,
            limit=LIMIT, parity_sample=4, max_new_tokens=6, mlflow=mlflow_target, delay_first_batch_s=3.0,
        )
    return {"out": out, "results": {r["benchmark"]: r for r in results}}


def _folders(eval_root: Path, *names: str) -> dict[str, Path]:
    """{benchmark: its folder under the eval root}, as the pipeline hands each job its own folder."""
    return {name: eval_root / get_benchmark(name).folder for name in names}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.e2e
def test_scored_benchmarks_report_their_metric_and_counts(stage):
    for name in BENCHES[:-1]:
        r = stage["results"][name]
        assert r["status"] == "ok", (name, r.get("reason"))
        assert r["metric"] == get_benchmark(name).metric and isinstance(r["value"], float)
        assert r["n_questions"] == LIMIT and r["n_missing"] == 0 and r["n_unknown_predictions"] == 0
        assert r["limit"] == LIMIT and r["generation"]["max_new_tokens"] == 6
        assert r["timing"]["samples_per_s"] > 0 and r["timing"]["pass_questions"] == LIMIT * 5
        assert r["categories"][-1] == {**r["categories"][-1], "category": "all", "n": LIMIT}
    pope = stage["results"]["pope"]
    # A random model never says "no": it answers "yes" to a balanced set, i.e. chance accuracy.
    assert pope["details"]["adversarial"]["accuracy"] == pytest.approx(50.0, abs=20)
    assert "first 16 of" in pope["warning"]  # a limited POPE run says it is partial
    assert stage["results"]["mmbench"]["value"] <= 50 and stage["results"]["sqa"]["value"] <= 60
    assert set(stage["results"]["mme"]["details"]) >= {"perception", "cognition", "subtasks"}


@pytest.mark.e2e
def test_files_are_written_in_the_reference_formats(stage, eval_root):
    for name in BENCHES[:-1]:
        folder = stage["out"] / name
        files = stage["results"][name]["files"]
        for key in ("answers", "samples", "table", "chart", "metrics"):
            assert Path(files[key]).is_file(), (name, key)
        answers = _lines(folder / "answers.jsonl")
        assert len(answers) == LIMIT
        assert all(set(a) >= {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
                   for a in answers)
        assert {a["model_id"] for a in answers} == {"tiny-llava"}
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["value"] == stage["results"][name]["value"] and "samples" not in metrics
        table = list(csv.DictReader((folder / "categories.csv").open()))
        assert table[-1]["category"] == "all" and int(table[-1]["n"]) == LIMIT
        with Image.open(folder / "chart.png") as im:
            assert im.format == "PNG"
        # The answers file is what `llava-pipeline score` reads: same score from it.
        bench = get_benchmark(name)
        rescored = score_file(name, folder / "answers.jsonl", root=eval_root / bench.folder)
        assert rescored["n_missing"] == bench.load_questions(eval_root / bench.folder).__len__() - LIMIT
    sqa = get_benchmark("sqa").load_questions(eval_root / "scienceqa")[:LIMIT]
    tagged = [a["prompt"].startswith("<image>\n") for a in _lines(stage["out"] / "sqa" / "answers.jsonl")]
    assert tagged == [q.image is not None for q in sqa] and any(tagged) and not all(tagged)
    mmb = _lines(stage["out"] / "mmbench" / "answers.jsonl")[0]
    assert mmb["round_id"] == 0 and mmb["option_char"][:2] == ["A", "B"]
    upload = stage["out"] / "mmbench" / "upload" / "mmbench.tsv"
    n_all = len(get_benchmark("mmbench").load_questions(eval_root / "mmbench"))
    assert len(upload.read_text(encoding="utf-8").splitlines()) == 1 + n_all  # every question, "" if unasked


@pytest.mark.e2e
def test_answers_come_back_in_question_file_order_though_actors_finish_out_of_order(stage, eval_root):
    timing = stage["results"]["pope"]["timing"]
    assert timing["out_of_order_arrivals"] > 0  # the delayed first batch really arrived late
    for name in ("pope", "mme"):
        bench = get_benchmark(name)
        questions = bench.load_questions(eval_root / bench.folder)[:LIMIT]
        answers = _lines(stage["out"] / name / "answers.jsonl")
        assert [a["question_id"] for a in answers] == [q.source_id for q in questions]
        assert [a["prompt"] for a in answers] == [q.prompt for q in questions]
        samples = _lines(stage["out"] / name / "samples.jsonl")  # scored in file order too
        assert [s["question_id"] for s in samples] == [q.question_id for q in questions]


@pytest.mark.e2e
def test_batched_answers_match_batch_one_on_the_parity_sample(stage):
    for name in BENCHES[:-1]:
        r = stage["results"][name]
        assert r["parity_checked"] == 4 and r["parity"] == []


@pytest.mark.e2e
def test_judged_benchmark_without_a_judge_is_skipped_not_failed(stage):
    r = stage["results"]["mmvet"]
    assert r["status"] == "skipped" and r["value"] is None
    assert "GPT judge" in r["reason"] and ENV_BASE_URL in r["reason"] and "nothing was generated" in r["reason"]
    folder = stage["out"] / "mmvet"
    assert json.loads((folder / "metrics.json").read_text())["status"] == "skipped"
    assert not (folder / "answers.jsonl").exists()


@pytest.mark.e2e
def test_metrics_and_artifacts_reach_mlflow(stage, mlflow_target):
    client = mlflow_target.client()
    run = client.get_run(mlflow_target.run_id)
    metrics = run.data.metrics
    for name in BENCHES[:-1]:
        r = stage["results"][name]
        assert metrics[f"{name}/{r['metric']}"] == pytest.approx(r["value"])
        assert metrics[f"{name}/n_questions"] == LIMIT
        assert metrics[f"{name}/timing/samples_per_s"] > 0
        assert run.data.tags[f"eval.{name}.status"] == "ok"
        listed = {Path(a.path).name for a in client.list_artifacts(mlflow_target.run_id, f"eval/{name}")}
        assert listed == {"answers.jsonl", "categories.csv", "chart.png", "metrics.json", "rejected.jsonl"}
    assert metrics["pope/adversarial/f1"] == pytest.approx(stage["results"]["pope"]["details"]["adversarial"]["f1"])
    assert run.data.tags["eval.mmvet.status"] == "skipped"
    assert not any(k.startswith("mmvet/") for k in metrics)


def test_judge_skip_needs_no_ray_or_model(eval_root, tmp_path):
    (r,) = evaluate_benchmarks(_folders(eval_root, "llava_bench"), model_dir=tmp_path / "absent", out_dir=tmp_path,
                               judge=JudgeNotConfigured("no judge in this test"))
    assert r["status"] == "skipped" and "no judge in this test" in r["reason"]
    assert r["n_questions"] == 60 and r["paper"]["13b"] == get_benchmark("llava_bench").paper["13b"]


def test_bad_arguments_are_clear_errors(eval_root, tmp_path):
    with pytest.raises(UnknownBenchmark, match="Did you mean 'pope'"):
        evaluate_benchmarks({"popee": eval_root / "pope"}, model_dir=tmp_path, out_dir=tmp_path)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        evaluate_benchmarks(_folders(eval_root, "pope"), model_dir=tmp_path, out_dir=tmp_path, limit=0)
    with pytest.raises(ValueError, match="named more than once"):
        evaluate_benchmarks({"pope": eval_root / "pope", "POPE": eval_root / "pope"}, model_dir=tmp_path,
                            out_dir=tmp_path)


@pytest.mark.e2e
def test_in_process_generation_answers_as_the_actor_pool(stage, eval_root, model_dir, tmp_path):
    """The sweep's CPU path: same rows, same GeneratorActor, no Ray Data; answers and scores equal the pass."""
    results = evaluate_benchmarks(_folders(eval_root, "gqa", "pope"), model_dir=model_dir, out_dir=tmp_path,
                                  batch_size=4, limit=LIMIT, max_new_tokens=6, in_process=True)
    for r in results:
        name = r["benchmark"]
        assert r["status"] == "ok" and r["n_missing"] == 0 and r["value"] == stage["results"][name]["value"]
        assert r["timing"]["pass_questions"] == 2 * LIMIT
        ours, pool = (_lines(d / name / "answers.jsonl") for d in (tmp_path, stage["out"]))
        assert [(a["question_id"], a["text"]) for a in ours] == [(a["question_id"], a["text"]) for a in pool]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path of in-process generation")
def test_in_process_generation_on_this_process_gpu(eval_root, model_dir, tmp_path, monkeypatch):
    """The sweep's GPU path: a Train worker answers the dev benchmark on the GPU it holds, no Ray. float32 on
    both devices (TF32 off); greedy answers may differ where two tokens tie within GPU rounding, so 90% must
    match."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    common = dict(model_dir=model_dir, batch_size=4, limit=LIMIT, max_new_tokens=6, in_process=True,
                  dtype="float32")
    gqa = _folders(eval_root, "gqa")
    (cpu,) = evaluate_benchmarks(gqa, out_dir=tmp_path / "cpu", **common)
    (gpu,) = evaluate_benchmarks(gqa, out_dir=tmp_path / "gpu", use_gpu=True, **common)
    assert gpu["status"] == "ok" and gpu["n_missing"] == 0 and gpu["generation"]["use_gpu"] is True
    a, b = (_lines(tmp_path / d / "gqa" / "answers.jsonl") for d in ("cpu", "gpu"))
    assert [x["question_id"] for x in a] == [x["question_id"] for x in b]
    assert sum(x["text"] == y["text"] for x, y in zip(a, b, strict=True)) >= 0.9 * len(a)


@pytest.mark.e2e
def test_a_warm_pool_serves_several_benchmark_jobs(ray_local, eval_root, model_dir, tmp_path):
    """The pipeline's evaluate jobs share one pool per model: same replicas for every job, blank pass included,
    answers equal to the in-process path; closing it at the end of the run stops the replicas."""
    from components.evaluate.pool import PoolSpec, close_warm_pools, warm_pool

    spec = PoolSpec(str(model_dir), "vicuna_v1", batch_size=4, num_actors=1, use_gpu=False)
    pool = warm_pool(spec)
    actors = list(pool.actors)
    common = dict(model_dir=model_dir, batch_size=4, limit=LIMIT, max_new_tokens=6)
    only_gqa, only_pope = _folders(eval_root, "gqa"), _folders(eval_root, "pope")
    (gqa,) = evaluate_benchmarks(only_gqa, out_dir=tmp_path / "a", pool=pool, **common)
    (blank,) = evaluate_benchmarks(only_gqa, out_dir=tmp_path / "b", pool=warm_pool(spec), blank_images=True,
                                   **common)
    (pope,) = evaluate_benchmarks(only_pope, out_dir=tmp_path / "c", pool=warm_pool(spec), **common)
    assert warm_pool(spec) is pool and pool.actors == actors  # no new replica was started
    reference = evaluate_benchmarks(_folders(eval_root, "gqa", "pope"), out_dir=tmp_path / "d", in_process=True,
                                    **common)
    evaluate_benchmarks(only_gqa, out_dir=tmp_path / "e", in_process=True, blank_images=True, **common)
    assert [gqa["value"], pope["value"]] == [r["value"] for r in reference]

    def answers(folder: Path) -> list[str]:
        return [json.loads(x)["text"] for x in (folder / "gqa" / "answers.jsonl").read_text().splitlines()]

    assert answers(tmp_path / "a") == answers(tmp_path / "d") and len(answers(tmp_path / "a")) == LIMIT
    assert blank["generation"]["blank_images"] is True and answers(tmp_path / "b") == answers(tmp_path / "e")
    close_warm_pools()
    assert pool.actors == [] and warm_pool(spec) is not pool
    close_warm_pools()
