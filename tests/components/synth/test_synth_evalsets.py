"""Every benchmark file parses in its documented format, and its answers are what the image shows."""

import base64
import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from components.synth.scene import COLORS, POSITIONS

SHORT = "\nAnswer the question using a single word or phrase."
VIZWIZ = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
CHOICE = "\nAnswer with the option's letter from the given choices directly."
_COLOR = "|".join(COLORS)
_POSITION = "|".join(POSITIONS)

# folder, question file, suffix every question text ends with
QUESTION_JSONL = {
    "vqav2": ("vqav2", "llava_vqav2_mscoco_test-dev2015.jsonl", SHORT),
    "gqa": ("gqa", "llava_gqa_testdev_balanced.jsonl", SHORT),
    "vizwiz": ("vizwiz", "llava_test.jsonl", VIZWIZ),
    "textvqa": ("textvqa", "llava_textvqa_val_v051_ocr.jsonl", SHORT),
    "pope": ("pope", "llava_pope_test.jsonl", SHORT),
    "mme": ("MME", "llava_mme.jsonl", SHORT),
    "seed": ("seed_bench", "llava-seed-bench.jsonl", CHOICE),
    "llava_bench": ("llava-bench-in-the-wild", "questions.jsonl", ""),
    "mmvet": ("mm-vet", "llava-mm-vet.jsonl", ""),
}


def _questions(world, bench):
    folder, name, _ = QUESTION_JSONL[bench]
    return world.jsonl(world.eval(folder) / name)


def _pixels(world, folder, image):
    return world.pixel_colors(f"eval/{folder}/images/{image}")


@pytest.mark.parametrize("bench", sorted(QUESTION_JSONL))
def test_question_jsonl_rows_have_the_documented_fields_and_images(world, bench):
    folder, _, suffix = QUESTION_JSONL[bench]
    rows = _questions(world, bench)
    assert 60 <= len(rows) <= 250
    for row in rows:
        assert set(row) == {"question_id", "image", "text", "category"}
        assert (world.eval(folder) / "images" / row["image"]).is_file()
        assert row["text"].endswith(suffix) and "<image>" not in row["text"]
        if not suffix:
            assert "Answer" not in row["text"]
    if bench != "mme":  # MME repeats its id (category/file) for the two questions of an image
        assert len({r["question_id"] for r in rows}) == len(rows)


def test_eval_images_are_held_out(world):
    files = world.manifest["files"]
    train = {f["sha256"] for f in files if f["role"] == "images"}
    held_out = {f["sha256"] for f in files if f["role"] == "eval_images"}
    dev = {f["sha256"] for f in files if f["role"] == "dev_images"}
    assert held_out and dev and not train & held_out and not (train | held_out) & dev


def _data_files(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if "images" not in p.parts}


def test_dev_copies_have_the_benchmark_format_and_their_own_questions(world):
    """dev/<folder> is what a sweep selects on: the same files as eval/<folder>, other images and questions."""
    from components.synth.evalsets import BENCHMARKS, DEV_BENCHMARKS

    assert set(world.manifest["dev"]) == set(DEV_BENCHMARKS) == set(world.manifest["counts"]["dev_questions"])
    for name in DEV_BENCHMARKS:
        folder = BENCHMARKS[name].folder
        dev, test = world.root / "dev" / folder, world.eval(folder)
        assert _data_files(dev) == _data_files(test)  # the same question and annotation files
        entry = world.manifest["dev"][name]
        rows = [json.loads(line) for line in (world.root / entry["questions"]).read_text().splitlines()]
        assert len(rows) == entry["n_questions"] == world.manifest["eval"][name]["n_questions"]
        assert all((dev / "images" / r["image"]).is_file() for r in rows)
        test_rows = [json.loads(line) for line in (world.root / world.manifest["eval"][name]["questions"])
                     .read_text().splitlines()]
        assert [(r["image"], r["text"]) for r in rows] != [(r["image"], r["text"]) for r in test_rows]


# ---------------------------------------------------------------- short answers


def _short_answer_sets(world):
    vqav2 = world.json(world.eval("vqav2") / "v2_mscoco_val2014_annotations.json")["annotations"]
    gqa = world.json(world.eval("gqa") / "testdev_balanced_questions.json")
    vizwiz = world.json(world.eval("vizwiz") / "val.json")
    textvqa = world.json(world.eval("textvqa") / "TextVQA_0.5.1_val.json")["data"]
    top = lambda answers: Counter(answers).most_common(1)[0][0]  # noqa: E731
    return {
        "vqav2": [a["multiple_choice_answer"] for a in vqav2],
        "gqa": [a["answer"] for a in gqa.values()],
        "vizwiz": [top(x["answer"] for x in a["answers"]) for a in vizwiz],
        "textvqa": [top(a["answers"]) for a in textvqa],
    }


def test_no_short_answer_dominates(world):
    sets = _short_answer_sets(world)
    for name, answers in [*sets.items(), ("all", [a for v in sets.values() for a in v])]:
        answer, n = Counter(answers).most_common(1)[0]
        assert n / len(answers) <= 0.25, (name, answer, n, len(answers))


def test_vqav2_annotations_have_ten_answers_with_some_dissent(world):
    rows = _questions(world, "vqav2")
    anns = world.json(world.eval("vqav2") / "v2_mscoco_val2014_annotations.json")["annotations"]
    assert [a["question_id"] for a in anns] == [r["question_id"] for r in rows]
    dissent = 0
    for a in anns:
        answers = [x["answer"] for x in a["answers"]]
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        top, n = Counter(answers).most_common(1)[0]
        assert top == a["multiple_choice_answer"] and n >= 7
        dissent += len(set(answers)) > 1
        assert isinstance(a["image_id"], int) and a["answer_type"] in ("yes/no", "number", "other")
    assert 0.1 < dissent / len(anns) < 0.5  # soft accuracy gets exercised


def test_gqa_annotations_match_the_questions(world):
    rows = _questions(world, "gqa")
    anns = world.json(world.eval("gqa") / "testdev_balanced_questions.json")
    assert list(anns) == [r["question_id"] for r in rows]
    for r in rows:
        a = anns[r["question_id"]]
        assert r["text"] == a["question"] + SHORT and r["image"] == a["imageId"] + Path(r["image"]).suffix


def test_vizwiz_indexes_annotations_and_includes_unanswerable(world):
    rows = _questions(world, "vizwiz")
    anns = world.json(world.eval("vizwiz") / "val.json")
    assert [r["question_id"] for r in rows] == list(range(len(anns)))
    unanswerable = 0
    for r, a in zip(rows, anns, strict=True):
        assert r["image"] == a["image"] and r["text"] == a["question"] + VIZWIZ
        assert len(a["answers"]) == 10 and all(
            set(x) == {"answer", "answer_confidence"} for x in a["answers"]
        )
        top = Counter(x["answer"] for x in a["answers"]).most_common(1)[0][0]
        assert a["answerable"] == int(top != "unanswerable")
        if not a["answerable"]:
            unanswerable += 1
            scene = world.scenes[f"eval/vizwiz/images/{a['image']}"]
            named = re.search(rf"({_COLOR}|{_POSITION})", a["question"]).group(1)
            assert all(named not in (s["color"], s["position"]) for s in scene["shapes"])
    assert 0.05 < unanswerable / len(anns) <= 0.2


def test_textvqa_prompts_carry_ocr_tokens_and_key_on_the_image_id(world):
    rows = _questions(world, "textvqa")
    data = world.json(world.eval("textvqa") / "TextVQA_0.5.1_val.json")["data"]
    keys = {(d["image_id"], d["question"].lower()) for d in data}
    assert len(keys) == len(data) == len(rows)
    for r, d in zip(rows, data, strict=True):
        lines = r["text"].split("\n")
        assert len(lines) == 3 and lines[1].startswith("Reference OCR token: ")  # eval_textvqa.py's parser
        assert (r["question_id"], lines[0].lower()) in keys and r["question_id"] == d["image_id"]
        assert isinstance(d["question_id"], int) and len(d["answers"]) == 10
        tokens = lines[1].removeprefix("Reference OCR token: ").split(", ")
        answer = Counter(d["answers"]).most_common(1)[0][0]
        assert answer in tokens and len(tokens) >= 3
        scene = world.scenes[f"eval/textvqa/images/{r['image']}"]
        color = re.search(rf"({_COLOR})", lines[0]).group(1)
        assert answer == next(s["label"] for s in scene["shapes"] if s["color"] == color)


# ---------------------------------------------------------------- answers depend on the image


def test_colour_answers_are_the_colour_rendered_at_the_shape_centre(world):
    checked = 0
    vqa = {
        a["question_id"]: a["multiple_choice_answer"]
        for a in world.json(world.eval("vqav2") / "v2_mscoco_val2014_annotations.json")["annotations"]
    }
    gqa = world.json(world.eval("gqa") / "testdev_balanced_questions.json")
    for bench, folder, truth in (
        ("vqav2", "vqav2", lambda r: vqa[r["question_id"]]),
        ("gqa", "gqa", lambda r: gqa[r["question_id"]]["answer"]),
    ):
        for r in _questions(world, bench):
            m = re.match(
                rf"(?:What color is the shape in the|What is the color of the shape in the|"
                rf"Which color is the) ({_POSITION})",
                r["text"],
            )
            if m:
                assert _pixels(world, folder, r["image"])[m.group(1)] == truth(r), r
                checked += 1
    assert checked > 40


def test_multiple_choice_colour_answers_match_the_pixels(world):
    seed = {
        q["question_id"]: q for q in world.json(world.eval("seed_bench") / "SEED-Bench.json")["questions"]
    }
    checked = 0
    for r in _questions(world, "seed"):
        m = re.match(rf"What color is the shape in the ({_POSITION})\?", r["text"])
        if m:
            q = seed[r["question_id"]]
            chosen = q[f"choice_{q['answer'].lower()}"]
            assert _pixels(world, "seed_bench", r["image"])[m.group(1)] == chosen
            checked += 1
    assert checked > 10


def test_pope_labels_match_the_colours_rendered(world):
    rows = _questions(world, "pope")
    by_category = {}
    for category in ("adversarial", "popular", "random"):
        labels = world.jsonl(world.eval("pope") / f"coco/coco_pope_{category}.json")
        questions = [r for r in rows if r["category"] == category]
        assert [x["question_id"] for x in labels] == [
            q["question_id"] for q in questions
        ]  # scorer zips these
        assert Counter(x["label"] for x in labels) == {"yes": len(labels) // 2, "no": len(labels) // 2}
        for x, q in zip(labels, questions, strict=True):
            assert q["text"] == x["text"] + SHORT and q["image"] == x["image"]
            color = re.fullmatch(rf"Is there an? ({_COLOR}) shape in the image\?", x["text"]).group(1)
            present = set(_pixels(world, "pope", x["image"]).values())
            assert x["label"] == ("yes" if color in present else "no")
        by_category[category] = [x["text"] for x in labels if x["label"] == "no"]
    assert by_category["random"] != by_category["adversarial"] != by_category["popular"]


def test_mme_pairs_are_consecutive_with_one_yes_and_one_no(world):
    rows = _questions(world, "mme")
    root = world.eval("MME") / "MME_Benchmark_release_version"
    assert {"existence", "count", "position", "color", "OCR", "numerical_calculation"} == {
        r["category"] for r in rows
    }
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        assert first["question_id"] == second["question_id"] == first["image"] == second["image"]
        category, file = first["question_id"].split("/")
        assert category == first["category"]
        lines = (root / category / "questions_answers_YN" / f"{Path(file).stem}.txt").read_text().splitlines()
        pairs = [line.split("\t") for line in lines]
        assert [q for q, _ in pairs] == [
            r["text"].removesuffix(SHORT) + " Please answer yes or no." for r in (first, second)
        ]
        assert sorted(a for _, a in pairs) == ["No", "Yes"]
        if category == "color":
            pixels = _pixels(world, "MME", first["image"])
            for q, a in pairs:
                pos, color = re.match(rf"Is the shape in the ({_POSITION}) ({_COLOR})\?", q).groups()
                assert (pixels[pos] == color) == (a == "Yes")


# ---------------------------------------------------------------- multiple choice


def test_scienceqa_has_problems_with_and_without_images(world):
    root = world.eval("scienceqa")
    entries = world.json(root / "llava_test_CQM-A.json")
    problems = world.json(root / "problems.json")
    assert world.json(root / "pid_splits.json") == {"test": [e["id"] for e in entries]}
    with_image = 0
    for e in entries:
        p = problems[e["id"]]
        assert set(p) >= {"question", "choices", "answer", "hint", "image", "split"} and p["split"] == "test"
        human, gpt = e["conversations"]
        assert gpt["value"] == "ABCDE"[p["answer"]] and 2 <= len(p["choices"]) <= 5
        assert human["value"].endswith("\n".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(p["choices"])))
        assert ("Context: " in human["value"]) == bool(p["hint"])
        if p["image"]:
            with_image += 1
            assert e["image"] == f"{e['id']}/image.png" and (root / "images" / e["image"]).is_file()
            assert human["value"].startswith("<image>\n")
        else:
            assert "image" not in e and "<image>" not in human["value"]
    assert 0.3 < with_image / len(entries) < 0.9


@pytest.mark.parametrize(
    ("folder", "name", "chinese"),
    [("mmbench", "mmbench_dev_20230712.tsv", False), ("mmbench_cn", "mmbench_dev_cn_20231003.tsv", True)],
)
def test_mmbench_tsv_has_circular_copies_and_embedded_images(world, folder, name, chinese):
    with (world.eval(folder) / name).open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == [
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
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(int(r["index"]) % 1_000_000, []).append(r)
    letters = Counter(r["answer"] for r in rows)
    assert max(letters.values()) / len(rows) < 0.4
    for base, copies in groups.items():
        options = [[r[c] for c in "ABCD" if r[c]] for r in copies]
        assert len(copies) == len(options[0]) in (3, 4)  # one copy per option
        correct = {r[r["answer"]] for r in copies}
        assert len(correct) == 1  # every rotation points at the same option text
        for k, (r, opts) in enumerate(zip(copies, options, strict=True)):
            assert int(r["index"]) == k * 1_000_000 + base and opts == options[0][k:] + options[0][:k]
        image = Image.open(io.BytesIO(base64.b64decode(copies[0]["image"])))
        assert image.size[0] != image.size[1]
        assert bool(re.search(r"[\u4e00-\u9fff]", copies[0]["question"])) == chinese


def test_seed_has_image_and_video_items_with_four_options(world):
    rows = _questions(world, "seed")
    ann = world.json(world.eval("seed_bench") / "SEED-Bench.json")
    types = ann["question_type"]
    questions = {q["question_id"]: q for q in ann["questions"]}
    assert Counter(q["data_type"] for q in questions.values()).keys() == {"image", "video"}
    for r in rows:
        q = questions[r["question_id"]]
        options = [q[f"choice_{c}"] for c in "abcd"]
        assert (
            r["text"]
            == q["question"]
            + "\n"
            + "\n".join(f"{c}. {o}" for c, o in zip("ABCD", options, strict=True))
            + CHOICE
        )
        assert q["answer"] in "ABCD" and q["question_type_id"] in types.values()
        assert types[r["category"]] == q["question_type_id"]


# ---------------------------------------------------------------- open-ended


def test_llava_bench_has_references_and_captions_in_question_order(world):
    root = world.eval("llava-bench-in-the-wild")
    rows = _questions(world, "llava_bench")
    answers = world.jsonl(root / "answers_gpt4.jsonl")
    context = world.jsonl(root / "context.jsonl")
    assert [a["question_id"] for a in answers] == [r["question_id"] for r in rows]
    assert all(a["text"] and a["prompt"] == r["text"] for a, r in zip(answers, rows, strict=True))
    assert Counter(r["category"] for r in rows) == {"conv": 20, "detail": 20, "complex": 20}
    assert [c["image"] for c in context] == sorted({r["image"] for r in rows})
    for c in context:
        scene = world.scenes[f"eval/llava-bench-in-the-wild/images/{c['image']}"]
        assert all(s["color"] in c["caption"] and s["position"] in c["caption"] for s in scene["shapes"])


def test_mmvet_answers_and_capabilities(world):
    rows = _questions(world, "mmvet")
    truth = world.json(world.eval("mm-vet") / "mm-vet.json")
    assert list(truth) == [f"v1_{r['question_id']}" for r in rows]
    caps = set()
    for r in rows:
        t = truth[f"v1_{r['question_id']}"]
        assert t["imagename"] == r["image"] and t["question"] == r["text"] and t["answer"]
        assert t["capability"] and set(t["capability"]) <= {"rec", "ocr", "know", "gen", "spat", "math"}
        caps |= set(t["capability"])
    assert caps >= {"rec", "ocr", "spat", "math"}
