"""The benchmark registry, `score_file` and `format_metrics`."""

import json
from pathlib import Path

import pytest

from components.evaluate.benchmarks import BENCHMARKS, BenchmarkDataError, UnknownBenchmark, get_benchmark
from components.evaluate.scoring import format_metrics, read_predictions, score_file, to_json

SUFFIX = "\nAnswer the question using a single word or phrase."
LONG = {"sqa", "mmbench", "mmbench_cn", "llava_bench", "mmvet"}


def test_registry_has_the_papers_benchmarks_with_reference_generation_settings() -> None:
    assert list(BENCHMARKS) == [
        "vqav2",
        "gqa",
        "vizwiz",
        "sqa",
        "textvqa",
        "pope",
        "mme",
        "mmbench",
        "mmbench_cn",
        "seed",
        "llava_bench",
        "mmvet",
    ]
    for name, b in BENCHMARKS.items():
        assert b.max_new_tokens == (1024 if name in LONG else 128), name
        assert b.greedy
        assert {"7b", "13b"} <= set(b.paper)
        json.dumps(b.spec())
    assert BENCHMARKS["mme"].paper["13b"] == 1531.3 and BENCHMARKS["pope"].metric == "mean_f1"
    assert {n for n, b in BENCHMARKS.items() if b.needs_judge} == {"llava_bench", "mmvet"}
    assert {n for n, b in BENCHMARKS.items() if b.upload} == {
        "vqav2",
        "vizwiz",
        "mmbench",
        "mmbench_cn",
        "mmvet",
    }


def test_unknown_benchmark_suggests_close_names() -> None:
    with pytest.raises(UnknownBenchmark, match=r"Did you mean 'pope'\?"):
        get_benchmark("popee")
    with pytest.raises(UnknownBenchmark, match="Did you mean 'mmvet'"):
        get_benchmark("mm_vet")
    with pytest.raises(UnknownBenchmark, match="Known: vqav2"):
        get_benchmark("imagenet")
    assert (
        get_benchmark("ScienceQA").name == "sqa"
        and get_benchmark("llava-bench-in-the-wild").name == "llava_bench"
    )


def make_gqa(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "llava_gqa_testdev_balanced.jsonl").write_text(
        "".join(
            json.dumps({"question_id": q, "image": "x.jpg", "text": "q" + SUFFIX}) + "\n"
            for q in ("1", "2", "3")
        )
    )
    (root / "testdev_balanced_questions.json").write_text(
        json.dumps({q: {"question": "q", "answer": a} for q, a in (("1", "yes"), ("2", "no"), ("3", "cat"))})
    )
    return root


def write_answers(path: Path, rows: list[tuple[object, str]]) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "question_id": q,
                    "prompt": "q",
                    "text": t,
                    "answer_id": "a",
                    "model_id": "m",
                    "metadata": {},
                }
            )
            + "\n"
            for q, t in rows
        )
    )
    return path


def test_score_file_reports_missing_unknown_and_duplicates(tmp_path: Path) -> None:
    root = make_gqa(tmp_path / "gqa")
    ans = write_answers(tmp_path / "a.jsonl", [("3", "Cat."), (1, "yes"), ("1", "yes"), ("99", "x")])
    res = score_file("gqa", ans, root / "llava_gqa_testdev_balanced.jsonl")
    assert res["value"] == pytest.approx(200 / 3)
    assert res["n_missing"] == 1 and res["missing_examples"] == ["2"]
    assert res["n_unknown_predictions"] == 1 and res["unknown_examples"] == ["99"]
    assert res["predictions"]["n_duplicates"] == 1
    assert "samples" not in res  # only on request
    assert "samples" in score_file("gqa", ans, root=root, keep_samples=True)
    json.loads(to_json(res))


def test_conflicting_answers_for_one_question_are_an_error(tmp_path: Path) -> None:
    root = make_gqa(tmp_path / "gqa")
    qs = get_benchmark("gqa").load_questions(root)
    ans = write_answers(tmp_path / "a.jsonl", [("1", "yes"), ("1", "no")])
    with pytest.raises(
        BenchmarkDataError, match=r"a.jsonl:2: second, different answer .* \(first at line 1\)"
    ):
        read_predictions(ans, qs)


def test_score_file_needs_a_question_file_or_folder(tmp_path: Path) -> None:
    ans = write_answers(tmp_path / "a.jsonl", [])
    with pytest.raises(ValueError, match="llava_gqa_testdev_balanced.jsonl"):
        score_file("gqa", ans)
    with pytest.raises(BenchmarkDataError, match="question file not found"):
        score_file("gqa", ans, root=tmp_path)


def test_non_text_prediction_is_named(tmp_path: Path) -> None:
    root = make_gqa(tmp_path / "gqa")
    bench = get_benchmark("gqa")
    with pytest.raises(BenchmarkDataError, match="prediction for question '1' is int"):
        bench.score(bench.load_questions(root), {"1": 3}, root)


def test_format_metrics_single_and_summary(tmp_path: Path) -> None:
    root = make_gqa(tmp_path / "gqa")
    res = score_file("gqa", write_answers(tmp_path / "a.jsonl", [("1", "yes")]), root=root)
    text = format_metrics(res)
    assert text.splitlines()[0] == "gqa  accuracy = 33.33 %   (paper 7B 62.0, 13B 63.3)"
    assert "missing predictions 2 (e.g. 2, 3)" in text and "accuracy  33.33" in text
    skipped = {
        "benchmark": "mmvet",
        "metric": "total",
        "unit": "%",
        "value": None,
        "status": "skipped",
        "reason": "no judge",
        "paper": {"7b": 31.1, "13b": 36.1},
    }
    assert "skipped: no judge" in format_metrics(skipped)
    table = format_metrics([res, skipped]).splitlines()
    assert table[0].split() == [
        "benchmark",
        "metric",
        "value",
        "paper",
        "7B",
        "paper",
        "13B",
        "questions",
        "missing",
        "status",
    ]
    assert table[2].split()[:3] == ["gqa", "accuracy", "33.33"] and table[3].split()[-1] == "skipped"


def test_synthetic_data_is_never_compared_with_the_paper(tmp_path: Path) -> None:
    from components.core.provenance import SYNTHETIC_MARKER
    from components.evaluate.outputs import write_chart

    root = make_gqa(tmp_path / "gqa")
    answers = write_answers(tmp_path / "a.jsonl", [("1", "yes")])
    assert score_file("gqa", answers, root=root)["data"] == "benchmark"
    (root / SYNTHETIC_MARKER).write_text("synthetic\n")
    res = score_file("gqa", answers, root=root)
    assert res["data"] == "synthetic" and res["paper"] == {}
    assert format_metrics(res).splitlines()[0] == (
        "gqa  accuracy = 33.33 %   (synthetic benchmark data: not comparable with the paper)")
    assert "paper" not in format_metrics([res]).splitlines()[2]
    write_chart(tmp_path / "chart.png", res)  # one bar, titled as synthetic
    assert (tmp_path / "chart.png").stat().st_size > 0
