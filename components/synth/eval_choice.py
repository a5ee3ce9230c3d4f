"""Multiple-choice benchmarks: ScienceQA, MMBench (English and Chinese, with circular copies), SEED."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from components.synth import knowledge
from components.synth.eval_common import Bench
from components.synth.prompts import IMAGE_TOKEN, choice_prompt
from components.synth.questions import LETTERS, QA, choices, format_options, sample_question

SQA_IMAGE_FRACTION = 0.6
SQA_KINDS: dict[str, float] = {
    "color_at": 0.35,
    "position_of": 0.25,
    "count": 0.2,
    "kind_at": 0.1,
    "relation_color": 0.1,
}
MMBENCH_KINDS: dict[str, float] = {
    "color_at": 0.35,
    "position_of": 0.25,
    "count": 0.15,
    "kind_at": 0.1,
    "label_of": 0.15,
}
# Real MMBench leaf categories and their level-2 groups.
MMBENCH_CATEGORIES: dict[str, tuple[str, str]] = {
    "color_at": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "kind_at": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "position_of": ("object_localization", "finegrained_perception (instance-level)"),
    "count": ("object_localization", "finegrained_perception (instance-level)"),
    "label_of": ("ocr", "finegrained_perception (instance-level)"),
}
MMBENCH_HINT = {
    "en": "The image shows simple shapes on a grey background.",
    "cn": "图中是灰色背景上的简单图形。",
}
CN_WORDS: dict[str, str] = {
    "red": "红色",
    "green": "绿色",
    "blue": "蓝色",
    "yellow": "黄色",
    "purple": "紫色",
    "orange": "橙色",
    "cyan": "青色",
    "pink": "粉色",
    "top left": "左上角",
    "top right": "右上角",
    "bottom left": "左下角",
    "bottom right": "右下角",
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
}
CN_QUESTIONS: dict[str, str] = {
    "color_at": "{t}的图形是什么颜色？",
    "position_of": "{t}的图形在图片的什么位置？",
    "count": "图中有几个图形？",
    "kind_at": "{t}的图形是什么形状？",
    "label_of": "{t}的图形上写着什么？",
}
SEED_QUESTION_TYPES: dict[str, int] = {
    "Scene Understanding": 1,
    "Instance Identity": 2,
    "Instance Attributes": 3,
    "Instance Location": 4,
    "Instances Counting": 5,
    "Spatial Relation": 6,
    "Instance Interaction": 7,
    "Visual Reasoning": 8,
    "Text Understanding": 9,
    "Action Recognition": 10,
    "Action Prediction": 11,
    "Procedure Understanding": 12,
}
SEED_IMAGE_KINDS: dict[str, tuple[float, str]] = {  # kind -> (share, SEED dimension)
    "color_at": (0.35, "Instance Attributes"),
    "position_of": (0.25, "Instance Location"),
    "count": (0.15, "Instances Counting"),
    "relation_color": (0.1, "Spatial Relation"),
    "label_of": (0.15, "Text Understanding"),
}
# "Video" items are single still frames (SEED itself scores LLaVA on a video's middle frame); they take
# SEED's video dimensions so per-type tables have the real layout.
SEED_VIDEO_KINDS: dict[str, tuple[float, str]] = {
    "color_at": (0.4, "Action Recognition"),
    "position_of": (0.35, "Action Prediction"),
    "count": (0.25, "Procedure Understanding"),
}
SEED_VIDEO_FRACTION = 0.3


# ---------------------------------------------------------------- ScienceQA


def _sqa_problem(b: Bench, pid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(problems.json entry, llava_test_CQM-A.json entry) for one problem, with or without an image."""
    rng = b.rng
    if rng.random() < SQA_IMAGE_FRACTION:
        scene, qa = sample_question(rng, SQA_KINDS, fmt="png")
        b.image(f"{pid}/image.png", scene)
        hint = "Look at the picture of shapes." if rng.random() < 0.4 else ""
        image: str | None = "image.png"
    else:
        qa, fact = knowledge.text_fact(rng)
        hint = fact if rng.random() < 0.6 else ""
        image = None
    options, answer = choices(qa, rng, rng.randint(2, 4))
    text = (f"Context: {hint}\n" if hint else "") + f"{qa.question}\n{format_options(options)}"
    problem = {
        "question": qa.question,
        "choices": options,
        "answer": answer,
        "hint": hint,
        "image": image,
        "split": "test",
    }
    entry: dict[str, Any] = {"id": pid}
    if image is not None:
        entry["image"] = f"{pid}/image.png"
        text = f"{IMAGE_TOKEN}\n{text}"
    entry["conversations"] = [{"from": "human", "value": text}, {"from": "gpt", "value": LETTERS[answer]}]
    return problem, entry


def build_sqa(b: Bench) -> None:
    problems: dict[str, Any] = {}
    entries = []
    for i in range(b.n):
        pid = str(i + 1)
        problems[pid], entry = _sqa_problem(b, pid)
        entries.append(entry)
    b.write_questions("llava_test_CQM-A.json", entries, fmt="llava_json")
    b.write_annotations("problems.json", problems)
    b.write_annotations("pid_splits.json", {"test": list(problems)}, records=len(problems))


# ---------------------------------------------------------------- MMBench


MMBENCH_COLUMNS = "index question hint A B C D answer category l2-category image source split".split()


@dataclass(frozen=True)
class _Base:
    """One MMBench question before its circular copies are made."""

    index: int
    question: str
    hint: str
    options: list[str]
    answer: int
    kind: str
    image_b64: str


def _mmbench_text(qa: QA, options: list[str], lang: str) -> tuple[str, list[str]]:
    if lang == "en":
        return qa.question, options
    question = CN_QUESTIONS[qa.kind].format(t=CN_WORDS.get(qa.target, qa.target))
    return question, [CN_WORDS.get(o, o) for o in options]


def build_mmbench(b: Bench, lang: str, tsv_name: str) -> None:
    """Base questions plus their circular copies: copy k has index k*1_000_000 + base and options
    rotated by k, so a circular evaluation can require every copy right."""
    bases: list[_Base] = []
    while sum(len(x.options) for x in bases) < b.n:  # each base question gives one row per option
        scene, qa = sample_question(b.rng, MMBENCH_KINDS)
        options, answer = choices(qa, b.rng, 4)
        question, shown = _mmbench_text(qa, options, lang)
        hint = MMBENCH_HINT[lang] if b.rng.random() < 0.3 else ""
        image = base64.b64encode(b.w.embedded(f"{b.path(tsv_name)}#{len(bases)}", scene)).decode()
        bases.append(_Base(len(bases), question, hint, shown, answer, qa.kind, image))
    rows = []
    for copy in range(max(len(x.options) for x in bases)):
        for x in bases:
            m = len(x.options)
            if copy >= m:
                continue
            rotated = x.options[copy:] + x.options[:copy] + [""] * (4 - m)
            category, l2 = MMBENCH_CATEGORIES[x.kind]
            letter = LETTERS[(x.answer - copy) % m]
            rows.append(
                [
                    copy * 1_000_000 + x.index,
                    x.question,
                    x.hint,
                    *rotated,
                    letter,
                    category,
                    l2,
                    x.image_b64,
                    "synthetic",
                    "dev",
                ]
            )
    b.has_images = False
    b.w.tsv(b.path(tsv_name), MMBENCH_COLUMNS, rows, role=f"{b.split}_questions", benchmark=b.name)
    b.questions, b.n_questions = b.path(tsv_name), len(rows)
    b.annotations.append(b.path(tsv_name))


# ---------------------------------------------------------------- SEED-Bench


def build_seed(b: Bench) -> None:
    rows, questions = [], []
    for i in range(b.n):
        video = b.rng.random() < SEED_VIDEO_FRACTION
        kinds = SEED_VIDEO_KINDS if video else SEED_IMAGE_KINDS
        scene, qa = sample_question(b.rng, {k: share for k, (share, _) in kinds.items()})
        dimension = kinds[qa.kind][1]
        options, answer = choices(qa, b.rng, 4)
        qid = str(100_000 + i)
        folder = "SEED-Bench-video-image" if video else "SEED-Bench-image"
        rel = f"{folder}/{qid}.{scene.ext}"
        b.image(rel, scene)
        rows.append(
            {
                "question_id": qid,
                "image": rel,
                "text": choice_prompt(qa.question, options),
                "category": dimension,
            }
        )
        questions.append(
            {
                "question_id": qid,
                "question": qa.question,
                **{f"choice_{c.lower()}": o for c, o in zip("ABCD", options, strict=True)},
                "answer": LETTERS[answer],
                "data_id": rel,
                "data_type": "video" if video else "image",
                "question_type_id": SEED_QUESTION_TYPES[dimension],
            }
        )
    b.write_questions("llava-seed-bench.jsonl", rows)
    b.write_annotations(
        "SEED-Bench.json",
        {"questions": questions, "question_type": SEED_QUESTION_TYPES},
        records=len(questions),
    )
