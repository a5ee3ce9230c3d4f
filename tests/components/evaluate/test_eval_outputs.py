"""Answer records, per-category table, chart, MLflow names and the actor feed order (no Ray, no model)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from components.evaluate.benchmarks import Question, get_benchmark
from components.evaluate.harness import _BenchmarkRun, _question_rows, _spread
from components.evaluate.outputs import (
    answer_record,
    category_rows,
    mlflow_metrics,
    write_answers,
    write_category_table,
    write_chart,
)
from components.evaluate.pool import GeneratorActor, _image_ref
from components.evaluate.scoring import read_predictions


def q(i: int, *, qid: str | None = None, image: str | bytes | None = "images/a.jpg", prompt: str = "what?",
      category: str | None = None, source_id: int | str | None = None, meta: dict | None = None) -> Question:
    return Question(question_id=qid or str(i), prompt=prompt, image=image, index=i, category=category,
                    source_id=source_id if source_id is not None else i, meta=meta or {})


def test_answer_record_has_the_reference_fields():
    rec = answer_record(get_benchmark("gqa"), q(0, source_id="201"), "yes", "m")
    assert set(rec) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert rec["question_id"] == "201" and rec["prompt"] == "what?" and rec["metadata"] == {}
    assert answer_record(get_benchmark("gqa"), q(0), "x", "m")["answer_id"] != rec["answer_id"]


def test_sqa_keeps_the_image_tag_in_the_prompt_and_mmbench_adds_options():
    sqa = get_benchmark("sqa")
    assert answer_record(sqa, q(0), "A", "m")["prompt"] == "<image>\nwhat?"
    assert answer_record(sqa, q(1, image=None), "A", "m")["prompt"] == "what?"
    rec = answer_record(get_benchmark("mmbench"), q(2, image=b"x", meta={"options": {"A": "red", "B": "blue"}}),
                        "A", "m")
    assert rec["round_id"] == 0 and rec["options"] == ["red", "blue"] and rec["option_char"] == ["A", "B"]


def test_answers_file_follows_question_order_and_reads_back(tmp_path: Path):
    bench = get_benchmark("textvqa")
    # TextVQA repeats ids (the image id): the file keeps the raw id, the reader tells them apart by prompt.
    qs = [q(0, qid="7#0", source_id=7, prompt="first?"), q(1, qid="7#1", source_id=7, prompt="second?"),
          q(2, qid="9", source_id=9)]
    answers = {"9": "c", "7#1": "b", "7#0": "a"}
    path = tmp_path / "answers.jsonl"
    assert write_answers(path, bench, list(reversed(qs)), answers, "m") == 3
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["text"] for r in lines] == ["a", "b", "c"] and [r["question_id"] for r in lines] == [7, 7, 9]
    preds, _ = read_predictions(path, qs)
    assert preds == answers


def test_category_rows_from_correct_and_soft_scores(tmp_path: Path):
    qs = [q(0, category="color"), q(1, category="color"), q(2, category="count"), q(3, category="default")]
    samples = [
        {"question_id": "0", "prediction": "red", "correct": True},
        {"question_id": "1", "prediction": None, "correct": False},
        {"question_id": "2", "prediction": "3", "score": 0.6},
        {"question_id": "3", "prediction": "x", "score": 1.0},
    ]
    rows = category_rows(qs, samples)
    by = {r["category"]: r for r in rows}
    assert by["color"] == {"category": "color", "n": 2, "n_missing": 1, "accuracy": 50.0}
    assert by["count"]["accuracy"] == pytest.approx(60.0)
    assert by["all"]["n"] == 4 and by["all"]["accuracy"] == pytest.approx(65.0)
    assert [r["category"] for r in rows][-1] == "all"
    # A sample's own category (POPE) or subtask (MME) wins over the question's.
    assert category_rows([q(0)], [{"question_id": "0", "subtask": "OCR", "correct": True}])[0]["category"] == "OCR"
    write_category_table(tmp_path / "t.csv", rows)
    read = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert read[0] == {"category": "color", "n": "2", "n_missing": "1", "accuracy": "50.00"}


def test_chart_is_a_png(tmp_path: Path):
    result = {"benchmark": "pope", "metric": "mean_f1", "unit": "%", "value": 51.2,
              "paper": {"7b": 85.9, "13b": 85.9}}
    write_chart(tmp_path / "c.png", result)
    write_chart(tmp_path / "skipped.png", {**result, "value": None, "status": "skipped"})
    for name in ("c.png", "skipped.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_mlflow_metric_names_are_flat_and_legal():
    result = {
        "benchmark": "mmbench", "metric": "circular_accuracy", "value": 12.5, "n_questions": 8, "n_missing": 0,
        "details": {"category": {"ocr": 10.0}, "l2_category": {"finegrained (instance-level)": 5.0},
                    "note": "text", "flag": True, "nan": float("nan")},
        "timing": {"samples_per_s": 3.0}, "parity": [{"key": "1", "reference": "a", "candidate": "b"}],
        "parity_checked": 4,
    }
    m = mlflow_metrics(result)
    assert m["mmbench/circular_accuracy"] == 12.5
    assert m["mmbench/category/ocr"] == 10.0
    assert m["mmbench/l2_category/finegrained _instance-level_"] == 5.0
    assert m["mmbench/timing/samples_per_s"] == 3.0
    assert m["mmbench/parity/n_different"] == 1 and m["mmbench/parity/n_checked"] == 4
    assert not any(k.endswith(("/note", "/flag", "/nan")) for k in m)


def test_feed_rows_group_modalities_and_locate_images(tmp_path: Path):
    pope, mmb = get_benchmark("pope"), get_benchmark("mmbench")
    jobs = [
        _BenchmarkRun(pope, tmp_path / "pope", "s3://evals/root/POPE", tmp_path,
                      [q(0, prompt="a long question?"), q(1, prompt="short?")], 128, parity_ids={"1"}),
        _BenchmarkRun(mmb, tmp_path / "mmb", str(tmp_path / "mmb"), tmp_path,
                      [q(0, image=b"png", prompt="x?"), q(1, image=None, prompt="t")], 1024),
    ]
    rows = _question_rows(jobs)
    assert [r["feed"] for r in rows] == [0, 1, 2, 3]
    assert [(r["bench"], r["question_id"]) for r in rows] == [
        ("pope", "1"), ("pope", "0"), ("mmbench", "0"), ("mmbench", "1")]  # images first, then by length
    # The name as the question file gives it, and the folder it must stay under (the actor reads it there):
    # the folder as the eval root names it, not this node's copy of its question files.
    assert rows[0]["image_path"] == "images/a.jpg" and rows[0]["image_root"] == "s3://evals/root/POPE"
    assert rows[0]["image_bytes"] is None
    assert rows[2]["image_bytes"] == b"png" and rows[2]["image_path"] is None
    assert rows[3]["image_path"] is None and rows[3]["image_bytes"] is None
    assert [r["parity"] for r in rows] == [True, False, False, False]
    assert [r["max_new_tokens"] for r in rows] == [128, 128, 1024, 1024]
    assert _image_ref(None, b"x") == b"x" and _image_ref("p.jpg", None) == "p.jpg" and _image_ref(None, None) is None


def test_parity_sample_spreads_over_the_file():
    qs = [q(i) for i in range(10)]
    assert [x.index for x in _spread(qs, 3)] == [0, 4, 9] or [x.index for x in _spread(qs, 3)] == [0, 5, 9]
    assert len(_spread(qs, 20)) == 10 and [x.index for x in _spread(qs, 1)] == [0]


def test_actor_answers_rows_of_mixed_benchmarks(tokenizer, tmp_path: Path):
    """GeneratorActor without Ray: a batch mixing modalities and generation lengths, parity rows included."""
    import numpy as np
    import torch

    from components.models.assembly import build_model
    from components.models.spec import LLMConfig, ModelConfig, RandomLLM, RandomVision, VisionConfig

    cfg = ModelConfig(
        vision=VisionConfig(random_init=RandomVision(image_size=28, patch_size=14, hidden_size=16, num_layers=1,
                                                     num_heads=2, intermediate_size=32)),
        llm=LLMConfig(random_init=RandomLLM(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                            max_position_embeddings=512)),
    )
    build_model(cfg, tokenizer).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    Image.new("RGB", (20, 30), (9, 9, 200)).save(tmp_path / "a.png")
    threads = torch.get_num_threads()
    try:
        actor = GeneratorActor(str(tmp_path / "m"), template="vicuna_v1", batch_size=2, use_gpu=False)
        assert torch.get_num_threads() == 1  # one thread per reserved CPU
    finally:
        torch.set_num_threads(threads)  # the actor sets it for its whole (here: this) process
    batch = {
        "bench": np.array(["pope", "sqa", "sqa"], dtype=object),
        "question_id": np.array(["1", "2", "3"], dtype=object),
        "feed": np.array([0, 1, 2]),
        "prompt": np.array(["what colour?", "which one?", "how many?"], dtype=object),
        "image_path": np.array(["a.png", None, "a.png"], dtype=object),
        "image_root": np.array([str(tmp_path), None, str(tmp_path)], dtype=object),
        "image_bytes": np.array([None, None, None], dtype=object),
        "max_new_tokens": np.array([3, 5, 5]),
        "parity": np.array([True, True, False]),
    }
    out = actor(batch)
    assert list(out["question_id"]) == ["1", "2", "3"] and list(out["bench"]) == ["pope", "sqa", "sqa"]
    assert list(out["single"][:2]) == list(out["text"][:2]) and out["single"][2] is None
    assert all(isinstance(t, str) for t in out["text"]) and (out["gen_s"] >= 0).all()
    assert list(out["error"]) == ["", "", ""] and list(out["rejected"]) == ["", "", ""]
    # A question whose image cannot be used is rejected with its reason; the others are answered as before.
    bad = {**batch, "image_path": np.array(["gone.png", None, "../a.png"], dtype=object),
           "image_root": np.array([str(tmp_path), None, str(tmp_path / "sub")], dtype=object)}
    out_bad = actor(bad)
    assert out_bad["rejected"][0] == f"missing_image\tquestion 1: {tmp_path / 'gone.png'}: does not exist"
    assert out_bad["rejected"][2].startswith("image_outside_root\tquestion 3: ../a.png")
    assert out_bad["rejected"][1] == "" and out_bad["text"][1] == out["text"][1]
    assert list(out_bad["error"]) == ["", "", ""] and out_bad["text"][0] == out_bad["text"][2] == ""
    blank = {**bad, "blank": np.array([True, True, True])}  # the image-dependence pass rejects the same questions
    assert list(actor(blank)["rejected"]) == list(out_bad["rejected"])
    assert list(actor(batch)["text"]) == list(out["text"])  # the blank flag is per batch, not left on
