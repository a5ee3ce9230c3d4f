"""The `evaluate.<benchmark>` stage entry (components/evaluate/stage.py): one benchmark job on the run's warm
pool, its normal pass and the optional blank-image pass, the metrics it returns and the files it leaves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.core.stage_run import StageRun
from components.evaluate.benchmarks import get_benchmark
from components.evaluate.harness import evaluate_benchmarks
from components.evaluate.judge import JudgeNotConfigured
from components.evaluate.spec import Replicas
from components.evaluate.stage import run_evaluate
from components.synth.evalsets import write_eval_sets
from components.synth.files import Writer
from components.synth.scene import COLORS

LIMIT = 4
@pytest.fixture(scope="module")
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world") / "synth"
    write_eval_sets(Writer(root), 0, 0.1, sorted(COLORS), names=("gqa", "llava_bench"))
    return root / "eval"


@pytest.fixture(scope="module")
def pools(ray_local):
    """The stage starts (or reuses) the run's warm pool, as every job of a run does; stopped after this file's
    jobs, as the end of a run does."""
    from components.evaluate.pool import close_warm_pools

    yield
    close_warm_pools()


def _stage(benchmark: str, folder: Path, model: Path, out: Path, **kw):
    args = dict(benchmark=benchmark, folder=str(folder), model=str(model), template="vicuna_v1", batch_size=4,
                use_gpu=False, limit=LIMIT, parity_sample=0, blank_images=False, judge=None,
                replicas=Replicas(num_actors=1, cpus_per_actor=1),
                run=StageRun(stage=f"evaluate.{benchmark}", out=str(out), storage=str(out), fingerprint="f",
                             attempt="a"))
    return run_evaluate(**{**args, **kw})


def test_stage_scores_the_benchmark_and_its_blank_image_pass(pools, eval_root, model_dir, tmp_path):
    folder = eval_root / get_benchmark("gqa").folder
    metrics = _stage("gqa", folder, model_dir, tmp_path, blank_images=True, parity_sample=2)

    assert metrics["status"] == "ok" and metrics["parity_mismatches"] == 0
    assert isinstance(metrics["accuracy"], float) and isinstance(metrics["blank_images_accuracy"], float)
    normal = json.loads((tmp_path / "gqa" / "metrics.json").read_text())
    blank = json.loads((tmp_path / "blank_images" / "gqa" / "metrics.json").read_text())
    assert normal["value"] == metrics["accuracy"] and blank["value"] == metrics["blank_images_accuracy"]
    assert normal["generation"]["blank_images"] is False and blank["generation"]["blank_images"] is True
    assert normal["n_questions"] == blank["n_questions"] == LIMIT and normal["parity_checked"] == 2
    assert normal["model_id"] == "tiny-llava"
    # The same answers as the harness gives on its own (no pool): the stage adds no setting of its own.
    (reference,) = evaluate_benchmarks({"gqa": folder}, model_dir=model_dir, out_dir=tmp_path / "ref",
                                       batch_size=4, limit=LIMIT, in_process=True)
    assert reference["value"] == metrics["accuracy"]
    ours, ref = ([(a["question_id"], a["text"]) for a in map(json.loads, (base / "gqa" / "answers.jsonl").open())]
                 for base in (tmp_path, tmp_path / "ref"))
    assert ours == ref and len(ours) == LIMIT


def test_stage_without_blank_pass_writes_only_the_benchmark(pools, eval_root, model_dir, tmp_path):
    metrics = _stage("gqa", eval_root / "gqa", model_dir, tmp_path)
    assert metrics["status"] == "ok" and "accuracy" in metrics
    assert not any(k.startswith("blank_images") for k in metrics) and "parity_mismatches" not in metrics
    assert (tmp_path / "gqa" / "metrics.json").is_file() and not (tmp_path / "blank_images").exists()


def test_judged_benchmark_without_a_judge_is_skipped_with_its_reason(pools, eval_root, model_dir, tmp_path):
    bench = get_benchmark("llava_bench")
    metrics = _stage("llava_bench", eval_root / bench.folder, model_dir, tmp_path,
                     judge=JudgeNotConfigured("no judge in this test"))
    assert metrics["status"] == "skipped" and "no judge in this test" in metrics["reason"]
    assert "nothing was generated" in metrics["reason"] and bench.metric not in metrics
    written = json.loads((tmp_path / "llava_bench" / "metrics.json").read_text())
    assert written["status"] == "skipped" and not (tmp_path / "llava_bench" / "answers.jsonl").exists()


def test_a_failed_judge_is_an_error_not_a_result(pools, eval_root, model_dir, tmp_path):
    """A judge that answers nothing (here: nothing listens on its port; on a cluster, a key the cluster lacks)
    fails the job, so the executor commits nothing: the judge's key is not in the fingerprint, and a cached
    failure would be reused by the next run, which has a working judge."""
    from components.evaluate.judge import JudgeConfig, JudgeFailed
    from tests.cluster.two_node import free_port

    bench = get_benchmark("llava_bench")
    judge = JudgeConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout_s=2.0, max_retries=0)
    with pytest.raises(JudgeFailed, match=r"evaluate\.llava_bench: \d+ of \d+ judgements failed.*nothing was cached"):
        _stage("llava_bench", eval_root / bench.folder, model_dir, tmp_path, judge=judge)
