"""POPE, MME, ScienceQA, MMBench and SEED entries on tiny fixture files in the eval.zip formats."""

import base64
import csv
import json
import random
import re
from pathlib import Path

import pytest

from components.evaluate.benchmarks import BenchmarkDataError, get_benchmark
from components.evaluate.scoring import score_file

SUFFIX = "\nAnswer the question using a single word or phrase."
MC = "\nAnswer with the option's letter from the given choices directly."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def shuffled(d: dict, seed: int = 0) -> dict:
    keys = list(d)
    random.Random(seed).shuffle(keys)
    return {k: d[k] for k in keys}


# ---------------------------------------------------------------- POPE

POPE_ITEMS = {  # category -> [(image, object, label)]
    "adversarial": [("a1.jpg", "dog", "yes"), ("a2.jpg", "cat", "no"), ("a3.jpg", "car", "yes")],
    "random": [("r1.jpg", "tree", "no"), ("r2.jpg", "cup", "yes"), ("r3.jpg", "bus", "no")],
}


def make_pope(root: Path) -> Path:
    rows, qid = [], 0
    for cat, items in POPE_ITEMS.items():
        labels = []
        for image, obj, label in items:
            qid += 1
            text = f"Is there a {obj} in the image?"
            rows.append({"question_id": qid, "image": image, "text": text + SUFFIX, "category": cat})
            labels.append({"question_id": qid, "image": image, "text": text, "label": label})
        write_jsonl(root / "coco" / f"coco_pope_{cat}.json", labels)
    write_jsonl(root / "llava_pope_test.jsonl", rows)
    return root


POPE_PREDS = {
    1: "Yes",
    2: "No",
    3: "No, there is not.",  # adversarial: TP1 TN1 FN1 -> F1 2/3
    4: "No",
    5: "Yes.",
    6: "no",
}  # random: TP1 TN2 -> F1 1


def test_pope_per_split_metrics_and_mean_f1(tmp_path: Path) -> None:
    bench = get_benchmark("pope")
    root = make_pope(tmp_path / "pope")
    res = bench.score(bench.load_questions(root), POPE_PREDS, root)
    adv = res["details"]["adversarial"]
    assert (adv["TP"], adv["FP"], adv["TN"], adv["FN"]) == (1, 0, 1, 1)
    assert adv["precision"] == pytest.approx(100.0) and adv["recall"] == pytest.approx(50.0)
    assert adv["f1"] == pytest.approx(200 / 3) and adv["yes_ratio"] == pytest.approx(100 / 3)
    assert res["details"]["random"]["f1"] == pytest.approx(100.0)
    assert res["value"] == pytest.approx((200 / 3 + 100) / 2)


def test_pope_order_comes_from_the_question_file_not_the_predictions(tmp_path: Path) -> None:
    bench = get_benchmark("pope")
    root = make_pope(tmp_path / "pope")
    qs = bench.load_questions(root)
    base = bench.score(qs, POPE_PREDS, root)["value"]
    for seed in range(3):
        qs_shuffled = qs[:]
        random.Random(seed).shuffle(qs_shuffled)
        assert bench.score(qs_shuffled, shuffled(POPE_PREDS, seed), root)["value"] == pytest.approx(base)
    # And via an answers file written in a scrambled order.
    recs = [{"question_id": k, "prompt": "", "text": v} for k, v in shuffled(POPE_PREDS, 7).items()]
    write_jsonl(tmp_path / "ans.jsonl", recs)
    assert score_file("pope", tmp_path / "ans.jsonl", root / "llava_pope_test.jsonl")[
        "value"
    ] == pytest.approx(base)


def test_pope_missing_prediction_counts_as_wrong(tmp_path: Path) -> None:
    bench = get_benchmark("pope")
    root = make_pope(tmp_path / "pope")
    preds = {k: v for k, v in POPE_PREDS.items() if k != 1}  # label yes, now missing -> a false negative
    res = bench.score(bench.load_questions(root), preds, root)
    adv = res["details"]["adversarial"]
    assert (adv["TP"], adv["FN"]) == (0, 2) and adv["f1"] == 0.0
    assert res["n_missing"] == 1


def test_pope_label_file_out_of_order_is_an_error(tmp_path: Path) -> None:
    bench = get_benchmark("pope")
    root = make_pope(tmp_path / "pope")
    path = root / "coco" / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[1], lines[0], lines[2]]) + "\n")
    with pytest.raises(BenchmarkDataError, match=r"coco_pope_random.json:1: label is for image 'r2.jpg'"):
        bench.score(bench.load_questions(root), POPE_PREDS, root)


# ---------------------------------------------------------------- MME

MME_GT = {  # subtask -> image -> [(question, answer)] (one yes, one no)
    "existence": {
        "e1.jpg": [("Is there a dog?", "Yes"), ("Is there a cat?", "No")],
        "e2.jpg": [("Is there a car?", "Yes"), ("Is there a bus?", "No")],
    },
    "numerical_calculation": {"n1.png": [("Is the answer 4?", "Yes"), ("Is the answer 5?", "No")]},
}


def make_mme(root: Path, gt: dict[str, dict[str, list[tuple[str, str]]]] = MME_GT) -> Path:
    rows = []
    for task, images in gt.items():
        qa = root / "MME_Benchmark_release_version" / task / "questions_answers_YN"
        qa.mkdir(parents=True)
        for image, pairs in images.items():
            (qa / (image.split(".")[0] + ".txt")).write_text(
                "".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in pairs)
            )
            rows += [
                {
                    "question_id": f"{task}/{image}",
                    "image": f"{task}/{image}",
                    "text": q + SUFFIX,
                    "category": task,
                }
                for q, _ in pairs
            ]
    write_jsonl(root / "llava_mme.jsonl", rows)
    return root


MME_ANSWERS = ["Yes", "No", "No", "no", "yes", "maybe"]  # in question-file order


def test_mme_acc_acc_plus_and_totals(tmp_path: Path) -> None:
    bench = get_benchmark("mme")
    root = make_mme(tmp_path / "MME")
    qs = bench.load_questions(root)
    # Two questions per image share the file's id, so ours get "#k" suffixes.
    assert qs[0].question_id == "existence/e1.jpg#0" and qs[1].question_id == "existence/e1.jpg#1"
    res = bench.score(qs, {q.question_id: a for q, a in zip(qs, MME_ANSWERS, strict=True)}, root)
    ex = res["details"]["subtasks"]["existence"]
    assert ex["acc"] == pytest.approx(75.0) and ex["acc_plus"] == pytest.approx(50.0)
    assert ex["score"] == pytest.approx(125.0)
    num = res["details"]["subtasks"]["numerical_calculation"]
    assert num["score"] == pytest.approx(50.0) and num["other_answers"] == 1
    assert res["details"]["perception"] == pytest.approx(125.0)
    assert res["details"]["cognition"] == pytest.approx(50.0)
    assert res["value"] == pytest.approx(125.0) and res["unit"] == "points"


def test_mme_scores_and_totals_use_the_reference_arithmetic(tmp_path: Path) -> None:
    # existence: 3 images, 4/6 questions and 1/3 images right; count: 5 images, 4/10 and 1/5 right. For
    # both, calculation.py's acc*100 + acc_plus*100 differs in the last bit from 100*(acc + acc_plus).
    def images(prefix: str, n: int) -> dict[str, list[tuple[str, str]]]:
        return {
            f"{prefix}{i}.jpg": [(f"Is {prefix}{i} a?", "Yes"), (f"Is {prefix}{i} b?", "No")]
            for i in range(n)
        }

    root = make_mme(tmp_path / "MME", {"existence": images("e", 3), "count": images("c", 5)})
    answers = {
        "existence": ["Yes", "No", "Yes", "Yes", "No", "No"],  # image 0 both right, 1 and 2 one each
        "count": ["Yes", "No", "Yes", "Yes", "No", "No", "No", "Yes", "No", "Yes"],  # 1 both, 2 one, 2 none
    }
    bench = get_benchmark("mme")
    qs = bench.load_questions(root)
    order = iter(answers["existence"] + answers["count"])
    res = bench.score(qs, {q.question_id: next(order) for q in qs}, root)
    existence = 4 / 6 * 100 + 1 / 3 * 100
    count = 4 / 10 * 100 + 1 / 5 * 100
    assert res["details"]["subtasks"]["existence"]["score"] == existence
    assert res["details"]["subtasks"]["count"]["score"] == count
    assert res["value"] == res["details"]["perception"] == 0 + existence + count  # summed in the tool's order
    assert existence != 100 * (4 / 6 + 1 / 3) and count != 100 * (4 / 10 + 1 / 5)


def test_mme_reference_answer_file_shuffled_and_with_repeated_ids(tmp_path: Path) -> None:
    root = make_mme(tmp_path / "MME")
    qs = get_benchmark("mme").load_questions(root)
    recs = [
        {"question_id": q.source_id, "prompt": q.prompt, "text": a}
        for q, a in zip(qs, MME_ANSWERS, strict=True)
    ]
    random.Random(3).shuffle(recs)
    write_jsonl(tmp_path / "ans.jsonl", recs)
    res = score_file("mme", tmp_path / "ans.jsonl", root / "llava_mme.jsonl")
    assert res["value"] == pytest.approx(125.0) and res["n_missing"] == 0


def test_mme_pairs_must_be_consecutive_per_image(tmp_path: Path) -> None:
    bench = get_benchmark("mme")
    root = make_mme(tmp_path / "MME")
    path = root / "llava_mme.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(BenchmarkDataError, match="different images"):
        bench.score(bench.load_questions(root), {}, root)


def test_mme_missing_answer_is_other(tmp_path: Path) -> None:
    bench = get_benchmark("mme")
    root = make_mme(tmp_path / "MME")
    qs = bench.load_questions(root)
    preds = {q.question_id: a for q, a in zip(qs, MME_ANSWERS, strict=True)}
    del preds[qs[0].question_id]
    res = bench.score(qs, preds, root)
    assert res["details"]["subtasks"]["existence"]["score"] == pytest.approx(100 * (2 / 4 + 0 / 2))
    assert res["n_missing"] == 1


# ---------------------------------------------------------------- ScienceQA


def make_sqa(root: Path) -> Path:
    root.mkdir(parents=True)
    problems = {
        "p1": {
            "question": "Which color?",
            "choices": ["red", "blue", "green"],
            "answer": 1,
            "hint": "A ball.",
            "image": "image.png",
            "split": "test",
        },
        "p2": {
            "question": "Which is hot?",
            "choices": ["sun", "ice"],
            "answer": 0,
            "hint": "",
            "image": "image.png",
            "split": "test",
        },
        "p3": {
            "question": "Which is a verb?",
            "choices": ["run", "cat", "blue", "walk"],
            "answer": 3,
            "hint": "",
            "image": None,
            "split": "test",
        },
        "p4": {
            "question": "Unasked?",
            "choices": ["a", "b"],
            "answer": 0,
            "hint": "",
            "image": None,
            "split": "test",
        },
    }
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": ["p1", "p2", "p3", "p4"]}))
    items = [
        {
            "id": "p1",
            "image": "p1/image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nContext: A ball.\nWhich color?\nA. red\nB. blue\nC. green",
                },
                {"from": "gpt", "value": "B"},
            ],
        },
        {
            "id": "p2",
            "image": "p2/image.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhich is hot?\nA. sun\nB. ice"},
                {"from": "gpt", "value": "A"},
            ],
        },
        {
            "id": "p3",
            "conversations": [
                {"from": "human", "value": "Which is a verb?\nA. run\nB. cat\nC. blue\nD. walk"},
                {"from": "gpt", "value": "D"},
            ],
        },
    ]
    (root / "llava_test_CQM-A.json").write_text(json.dumps(items))
    return root


def test_sqa_prompt_built_with_suffix_and_text_only_items(tmp_path: Path) -> None:
    bench = get_benchmark("scienceqa")
    qs = bench.load_questions(make_sqa(tmp_path / "scienceqa"))
    assert qs[0].prompt == "Context: A ball.\nWhich color?\nA. red\nB. blue\nC. green" + MC
    assert qs[0].image == "images/p1/image.png"
    assert qs[2].image is None and "<image>" not in qs[2].prompt
    assert bench.max_new_tokens == 1024


def test_sqa_letter_parsing_overall_and_img_accuracy(tmp_path: Path) -> None:
    bench = get_benchmark("sqa")
    root = make_sqa(tmp_path / "scienceqa")
    qs = bench.load_questions(root)
    res = bench.score(qs, {"p1": "B. blue", "p2": "The answer is A", "p3": "D"}, root)
    assert res["details"]["accuracy"] == pytest.approx(200 / 3)
    assert res["details"]["img_accuracy"] == pytest.approx(50.0)  # p2's answer has no trailing char: FAILED
    assert res["value"] == res["details"]["img_accuracy"]
    assert res["details"]["n_failed_parse"] == 1
    assert res["n_not_asked"] == 1  # p4 is in the test split but not in the question file
    # "The answer is C." works; a missing answer on an image item counts against IMG
    res2 = bench.score(qs, {"p2": "The answer is A.", "p3": "C"}, root)
    assert res2["details"]["img_accuracy"] == pytest.approx(50.0) and res2["n_missing"] == 1


# ---------------------------------------------------------------- MMBench

IMG = base64.b64encode(b"\x89PNG fake image bytes").decode()
MMB_COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "l2-category",
    "image",
    "source",
    "split",
]
MMB_ROWS = [
    # base question 0 with three options and its two circular copies
    [
        0,
        "What color is the car?",
        "Look at the car.",
        "red",
        "green",
        "blue",
        "nan",
        "B",
        "color",
        "attr",
        IMG,
        "s",
        "dev",
    ],
    [
        1_000_000,
        "What color is the car?",
        "Look at the car.",
        "green",
        "blue",
        "red",
        "nan",
        "A",
        "color",
        "attr",
        "0",
        "s",
        "dev",
    ],
    [
        2_000_000,
        "What color is the car?",
        "Look at the car.",
        "blue",
        "red",
        "green",
        "",
        "C",
        "color",
        "attr",
        IMG,
        "s",
        "dev",
    ],
    # base question 1 with two options and one copy
    [1, "Which animal?", "nan", "cat", "dog", "nan", "nan", "A", "animal", "obj", IMG, "s", "dev"],
    [1_000_001, "Which animal?", "nan", "dog", "cat", "nan", "nan", "B", "animal", "obj", IMG, "s", "dev"],
]


def make_mmbench(root: Path, with_answers: bool = True) -> Path:
    root.mkdir(parents=True)
    cols = MMB_COLUMNS if with_answers else [c for c in MMB_COLUMNS if c != "answer"]
    with (root / "mmbench_dev_20230712.tsv").open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(cols)
        for row in MMB_ROWS:
            w.writerow([v for c, v in zip(MMB_COLUMNS, row, strict=True) if c in cols])
    return root


def test_mmbench_prompt_and_embedded_image(tmp_path: Path) -> None:
    bench = get_benchmark("mmbench")
    qs = bench.load_questions(make_mmbench(tmp_path / "mmbench"))
    assert qs[0].prompt == "Look at the car.\nWhat color is the car?\nA. red\nB. green\nC. blue" + MC
    assert qs[3].prompt == "Which animal?\nA. cat\nB. dog" + MC  # "nan" hint and options dropped
    assert qs[0].image == b"\x89PNG fake image bytes"
    assert qs[1].image == qs[0].image  # image given as the index of the row holding it


def test_mmbench_circular_one_wrong_copy_fails_the_question(tmp_path: Path) -> None:
    bench = get_benchmark("mmbench")
    root = make_mmbench(tmp_path / "mmbench")
    qs = bench.load_questions(root)
    preds = {
        "0": "B",
        "1000000": "A. green",
        "2000000": "The answer is C.",  # all copies right
        "1": "A",
        "1000001": "A",
    }  # second copy wrong
    res = bench.score(qs, shuffled(preds), root)
    assert res["value"] == pytest.approx(50.0)
    assert res["details"]["single_pass_accuracy"] == pytest.approx(100.0)
    assert res["details"]["category"] == {"animal": 0.0, "color": 100.0}
    assert res["details"]["l2_category"] == {"attr": 100.0, "obj": 0.0}
    # a missing copy also fails its question
    del preds["2000000"]
    res = bench.score(qs, preds, root)
    assert res["value"] == 0.0 and res["n_missing"] == 1


def test_mmbench_cn_suffix(tmp_path: Path) -> None:
    root = make_mmbench(tmp_path / "mmbench_cn")
    (root / "mmbench_dev_20230712.tsv").rename(root / "mmbench_dev_cn_20231003.tsv")
    qs = get_benchmark("mmbench_cn").load_questions(root)
    assert qs[0].prompt.endswith("\nC. blue\n请直接回答选项字母。")


def test_mmbench_test_split_is_server_only_and_upload_has_prediction_column(tmp_path: Path) -> None:
    bench = get_benchmark("mmbench")
    root = make_mmbench(tmp_path / "mmbench", with_answers=False)
    qs = bench.load_questions(root)
    res = bench.score(qs, {"0": "B"}, root)
    assert res["status"] == "skipped" and "OpenCompass" in res["reason"]
    bench.write_upload(qs, {"0": "B. green"}, tmp_path / "sub.tsv")
    with (tmp_path / "sub.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == ["index", "question", "A", "B", "C", "D", "prediction", "split"]
    assert rows[0]["prediction"] == "B. green" and rows[1]["prediction"] == ""
    assert len(rows) == 5


def test_mmbench_bad_answer_letter_rejects_that_row_by_name(tmp_path: Path) -> None:
    root = make_mmbench(tmp_path / "mmbench")
    path = root / "mmbench_dev_20230712.tsv"
    path.write_text(path.read_text().replace("\tA\tanimal", "\tD\tanimal", 1))
    qs = get_benchmark("mmbench").load_questions(root)
    (bad,) = qs.rejected
    assert bad["reason"] == "malformed_question" and bad["question_id"] == "1"
    assert re.search(r"index 1\): answer 'D' is not one of", bad["message"])
    assert "1" not in {q.question_id for q in qs} and len(qs) == 4


# ---------------------------------------------------------------- SEED


def make_seed(root: Path) -> Path:
    write_jsonl(
        root / "llava-seed-bench.jsonl",
        [
            {
                "question_id": qid,
                "image": f"{qid}.jpg",
                "text": f"Q{qid}?\nA. a\nB. b\nC. c\nD. d" + MC,
                "category": "x",
            }
            for qid in (1, 2, 3, 4)
        ],
    )
    gt = {
        "question_type": {"Scene Understanding": 1, "Action Recognition": 10},
        "questions": [
            {"question_id": "1", "answer": "A", "data_type": "image", "question_type_id": 1},
            {"question_id": "2", "answer": "A", "data_type": "image", "question_type_id": 1},
            {"question_id": "3", "answer": "B", "data_type": "image", "question_type_id": 1},
            {"question_id": "4", "answer": "D", "data_type": "video", "question_type_id": 10},
            {"question_id": "5", "answer": "D", "data_type": "video", "question_type_id": 10},
        ],
    }
    (root / "SEED-Bench.json").write_text(json.dumps(gt))
    return root


def test_seed_exact_string_match_image_video_and_types(tmp_path: Path) -> None:
    bench = get_benchmark("seed")
    root = make_seed(tmp_path / "seed_bench")
    res = bench.score(bench.load_questions(root), {1: "A", 2: "A.", 3: "B", 4: "C"}, root)
    assert res["value"] == pytest.approx(50.0)
    assert res["details"]["image_accuracy"] == pytest.approx(200 / 3)
    assert res["details"]["video_accuracy"] == 0.0
    assert res["details"]["question_type"] == {
        "Action Recognition": 0.0,
        "Scene Understanding": pytest.approx(200 / 3),
    }
    assert res["n_not_asked"] == 1 and "warning" in res
