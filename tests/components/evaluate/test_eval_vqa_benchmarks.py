"""VQAv2, VizWiz, TextVQA and GQA entries on tiny fixture files in the eval.zip formats."""

import json
import random
from pathlib import Path

import pytest

from components.evaluate.benchmarks import BenchmarkDataError, get_benchmark
from components.evaluate.scoring import score_file

SUFFIX = "\nAnswer the question using a single word or phrase."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answers(*pairs: tuple[str, int]) -> list[str]:
    return [a for a, n in pairs for _ in range(n)]


# ---------------------------------------------------------------- VQAv2


def make_vqav2(root: Path, with_annotations: bool = True) -> Path:
    write_jsonl(
        root / "llava_vqav2_mscoco_test-dev2015.jsonl",
        [
            {"question_id": 11, "image": "a.jpg", "text": "How many dogs?" + SUFFIX, "category": "default"},
            {"question_id": 12, "image": "b.jpg", "text": "Is it sunny?" + SUFFIX, "category": "default"},
        ],
    )
    if with_annotations:
        anns = [
            {
                "question_id": 11,
                "image_id": 1,
                "answer_type": "number",
                "multiple_choice_answer": "3",
                "answers": [
                    {"answer": a, "answer_id": i + 1} for i, a in enumerate(answers(("two", 3), ("3", 7)))
                ],
            },
            {
                "question_id": 12,
                "image_id": 2,
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
                "answers": [{"answer": "yes", "answer_id": i + 1} for i in range(10)],
            },
        ]
        (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": anns}))
    return root


def test_vqav2_soft_accuracy_with_local_annotations(tmp_path: Path) -> None:
    bench = get_benchmark("vqav2")
    root = make_vqav2(tmp_path / "vqav2")
    qs = bench.load_questions(root)
    assert [q.question_id for q in qs] == ["11", "12"]
    assert qs[0].image == "images/a.jpg" and qs[0].prompt.endswith(SUFFIX)
    res = bench.score(qs, {11: "Two."}, root)  # int keys accepted; question 12 missing
    assert res["value"] == pytest.approx(45.0)  # (0.9 + 0) / 2
    assert res["n_missing"] == 1 and res["missing_examples"] == ["12"]
    assert res["details"]["answer_type"] == {"number": pytest.approx(90.0), "yes/no": 0.0}


def test_vqav2_test_dev_is_skipped_and_upload_covers_every_question(tmp_path: Path) -> None:
    bench = get_benchmark("vqav2")
    root = make_vqav2(tmp_path / "vqav2", with_annotations=False)
    # The server wants every test2015 question; ours are a subset.
    write_jsonl(
        root / "llava_vqav2_mscoco_test2015.jsonl",
        [{"question_id": q, "image": "x.jpg", "text": "q?" + SUFFIX} for q in (11, 12, 13)],
    )
    qs = bench.load_questions(root)
    res = bench.score(qs, {"11": "Two"}, root)
    assert res["status"] == "skipped" and res["value"] is None and "EvalAI" in res["reason"]
    out = bench.write_upload(
        bench.upload_questions(root), {"11": "Two dogs.", "12": "Yes!"}, tmp_path / "up.json"
    )
    rows = json.loads((tmp_path / "up.json").read_text())
    assert rows == [
        {"question_id": 11, "answer": "2 dogs"},
        {"question_id": 12, "answer": "yes"},
        {"question_id": 13, "answer": ""},
    ]
    assert out["n_written"] == 3 and out["n_missing"] == 1


def test_question_file_without_the_suffix_is_rejected(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", [{"question_id": 1, "text": "How many?"}])
    with pytest.raises(BenchmarkDataError, match=r"test-dev2015.jsonl:1: text does not end with"):
        get_benchmark("vqav2").load_questions(tmp_path)


def test_bad_question_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl").write_text(
        '{"question_id": 1, "text": "a' + '"}\n{oops\n'
    )
    with pytest.raises(BenchmarkDataError, match=r"jsonl:2: not valid JSON"):
        get_benchmark("vqav2").load_questions(tmp_path)
    write_jsonl(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", [{"text": "x" + SUFFIX}])
    with pytest.raises(BenchmarkDataError, match=r"jsonl:1: missing field 'question_id'"):
        get_benchmark("vqav2").load_questions(tmp_path)


# ---------------------------------------------------------------- VizWiz

VIZWIZ_SUFFIX = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SUFFIX


def make_vizwiz(root: Path) -> Path:
    write_jsonl(
        root / "llava_test.jsonl",
        [
            {"question_id": 0, "image": "VizWiz_val_0.jpg", "text": "What is this?" + VIZWIZ_SUFFIX},
            {"question_id": 1, "image": "VizWiz_val_1.jpg", "text": "Which animal?" + VIZWIZ_SUFFIX},
        ],
    )
    val = [
        {
            "image": "VizWiz_val_0.jpg",
            "question": "What is this?",
            "answerable": 0,
            "answer_type": "unanswerable",
            "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10,
        },
        {
            "image": "VizWiz_val_1.jpg",
            "question": "Which animal?",
            "answerable": 1,
            "answer_type": "other",
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers(("cat", 2), ("dog", 8))],
        },
    ]
    (root / "val.json").write_text(json.dumps(val))
    return root


def test_vizwiz_scores_unanswerable_and_soft_matches(tmp_path: Path) -> None:
    bench = get_benchmark("vizwiz")
    root = make_vizwiz(tmp_path / "vizwiz")
    qs = bench.load_questions(root)
    res = bench.score(qs, {"0": "Unanswerable", "1": "A cat."}, root)
    assert res["value"] == pytest.approx(80.0)  # (1.0 + 0.6) / 2
    assert res["details"]["answerable"] == {"answerable": pytest.approx(60.0), "unanswerable": 100.0}
    bench.write_upload(qs, {"1": "The Dog"}, tmp_path / "vizwiz.json")
    assert json.loads((tmp_path / "vizwiz.json").read_text()) == [
        {"image": "VizWiz_val_0.jpg", "answer": ""},
        {"image": "VizWiz_val_1.jpg", "answer": "dog"},
    ]


def test_vizwiz_annotations_of_another_split_are_caught(tmp_path: Path) -> None:
    bench = get_benchmark("vizwiz")
    root = make_vizwiz(tmp_path / "vizwiz")
    write_jsonl(
        root / "llava_test.jsonl",
        [{"question_id": 0, "image": "VizWiz_test_0.jpg", "text": "What?" + VIZWIZ_SUFFIX}],
    )
    with pytest.raises(BenchmarkDataError, match="does not match"):
        bench.score(bench.load_questions(root), {}, root)


def test_vizwiz_test_split_without_val_is_server_only(tmp_path: Path) -> None:
    bench = get_benchmark("vizwiz")
    root = make_vizwiz(tmp_path / "vizwiz")
    (root / "val.json").unlink()
    res = bench.score(bench.load_questions(root), {}, root)
    assert res["status"] == "skipped" and "2185" in res["reason"]


# ---------------------------------------------------------------- TextVQA


def textvqa_text(q: str, tokens: str) -> str:
    return f"{q}\nReference OCR token: {tokens}" + SUFFIX


def make_textvqa(root: Path) -> Path:
    # As in LLaVA's file: question_id is the image id, so it repeats across an image's questions.
    write_jsonl(
        root / "llava_textvqa_val_v051_ocr.jsonl",
        [
            {
                "question_id": "img1",
                "image": "img1.jpg",
                "text": textvqa_text("What brand is this?", "NIKON, D50"),
            },
            {
                "question_id": "img1",
                "image": "img1.jpg",
                "text": textvqa_text("What color is the camera?", "NIKON"),
            },
            {"question_id": "img2", "image": "img2.jpg", "text": "What does it say?" + SUFFIX},
        ],
    )
    data = [
        {
            "question_id": 100,
            "image_id": "img1",
            "question": "What brand is this?",
            "answers": ["nikon"] * 10,
        },
        {
            "question_id": 101,
            "image_id": "img1",
            "question": "What color is the camera?",
            "answers": answers(("black", 3), ("gray", 7)),
        },
        {"question_id": 102, "image_id": "img2", "question": "What does it say?", "answers": ["stop"] * 10},
    ]
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    return root


def test_textvqa_repeated_ids_made_unique_and_matched_by_question(tmp_path: Path) -> None:
    bench = get_benchmark("textvqa")
    root = make_textvqa(tmp_path / "textvqa")
    qs = bench.load_questions(root)
    assert [q.question_id for q in qs] == ["img1#0", "img1#1", "img2"]
    res = bench.score(qs, {"img1#0": "Nikon", "img1#1": "black", "img2": "STOP."}, root)
    assert res["value"] == pytest.approx(100 * (1.0 + 0.9 + 1.0) / 3)


def test_textvqa_reference_answer_file_with_repeated_ids_is_matched_by_prompt(tmp_path: Path) -> None:
    root = make_textvqa(tmp_path / "textvqa")
    qs = get_benchmark("textvqa").load_questions(root)
    # Reference-format answers: plain image ids, shuffled, each with the prompt it answered.
    recs = [
        {
            "question_id": q.source_id,
            "prompt": q.prompt,
            "text": t,
            "answer_id": "x",
            "model_id": "m",
            "metadata": {},
        }
        for q, t in zip(qs, ["Nikon", "black", "stop"], strict=True)
    ]
    write_jsonl(tmp_path / "answers.jsonl", [recs[1], recs[2], recs[0]])
    res = score_file("textvqa", tmp_path / "answers.jsonl", root / "llava_textvqa_val_v051_ocr.jsonl")
    assert res["value"] == pytest.approx(100 * 2.9 / 3)
    assert res["n_missing"] == 0 and res["predictions"]["n_matched_by_prompt"] == 2


# ---------------------------------------------------------------- GQA


def make_gqa(root: Path) -> Path:
    write_jsonl(
        root / "llava_gqa_testdev_balanced.jsonl",
        [
            {"question_id": qid, "image": f"n{qid}.jpg", "text": f"question {qid}?" + SUFFIX}
            for qid in ("201", "202", "203", "204")
        ],
    )
    gt = {
        "201": {"question": "q", "answer": "yes", "imageId": "n1", "types": {"structural": "verify"}},
        "202": {"question": "q", "answer": "cat", "imageId": "n2", "types": {"structural": "query"}},
        "203": {"question": "q", "answer": "left", "imageId": "n3", "types": {"structural": "query"}},
        "204": {"question": "q", "answer": "no", "imageId": "n4", "types": {"structural": "verify"}},
        "205": {"question": "q", "answer": "no", "imageId": "n5"},
    }
    (root / "testdev_balanced_questions.json").write_text(json.dumps(gt))
    return root


def test_gqa_exact_match_after_rstrip_and_lower(tmp_path: Path) -> None:
    bench = get_benchmark("gqa")
    root = make_gqa(tmp_path / "gqa")
    qs = bench.load_questions(root)
    preds = {"201": "Yes.", "202": "The cat", "203": "LEFT"}  # 204 missing
    keys = list(preds)
    random.Random(0).shuffle(keys)
    res = bench.score(list(reversed(qs)), {k: preds[k] for k in keys}, root)
    assert res["value"] == pytest.approx(50.0)
    assert res["n_missing"] == 1
    assert res["details"]["structural"] == {"query": pytest.approx(50.0), "verify": pytest.approx(50.0)}
    assert res["n_not_asked"] == 1 and "205" not in str(res["samples"])
    assert [s["question_id"] for s in res["samples"]] == ["201", "202", "203", "204"]  # file order
