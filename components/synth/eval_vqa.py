"""Short-answer benchmarks: VQAv2, GQA, VizWiz and TextVQA, in their LLaVA eval.zip file formats."""

from __future__ import annotations

from typing import Any

from components.synth.conversations import VIZWIZ, shuffled_plan
from components.synth.eval_common import (
    GQA_WEIGHTS,
    VQA_WEIGHTS,
    Bench,
    answer_type,
    question_type,
    ten_answers,
)
from components.synth.prompts import ocr_prompt, ocr_tokens, short_prompt, unanswerable_prompt
from components.synth.questions import label_of, sample_question, unanswerable
from components.synth.scene import sample_scene

UNANSWERABLE_FRACTION = 0.12  # VizWiz questions about something the image does not show


def build_vqav2(b: Bench) -> None:
    rows, annotations = [], []
    for image_id in range(1, b.n + 1):
        scene, qa = sample_question(b.rng, VQA_WEIGHTS)
        name = f"vqav2_{image_id:06d}.{scene.ext}"
        b.image(name, scene)
        qid = image_id * 1000  # VQAv2's own scheme: image id then a per-image counter
        rows.append(
            {"question_id": qid, "image": name, "text": short_prompt(qa.question), "category": "default"}
        )
        answers = ten_answers(qa, b.rng)
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "question_type": question_type(qa.question),
                "answer_type": answer_type(qa.answer),
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                    for j, a in enumerate(answers)
                ],
                "multiple_choice_answer": qa.answer,
            }
        )
    b.write_questions("llava_vqav2_mscoco_test-dev2015.jsonl", rows)
    b.write_annotations(
        "v2_mscoco_val2014_annotations.json", {"annotations": annotations}, records=len(annotations)
    )


def build_gqa(b: Bench) -> None:
    rows: list[dict[str, Any]] = []
    annotations: dict[str, dict[str, Any]] = {}
    for index in range(1, b.n + 1):
        scene, qa = sample_question(b.rng, GQA_WEIGHTS)
        image_id = f"n{index:06d}"
        name = f"{image_id}.{scene.ext}"
        b.image(name, scene)
        qid = str(20_000_000 + index)
        rows.append(
            {"question_id": qid, "image": name, "text": short_prompt(qa.question), "category": "default"}
        )
        annotations[qid] = {
            "question": qa.question,
            "answer": qa.answer,
            "fullAnswer": qa.sentence,
            "imageId": image_id,
            "isBalanced": True,
        }
    b.write_questions("llava_gqa_testdev_balanced.jsonl", rows)
    b.write_annotations("testdev_balanced_questions.json", annotations)


def build_vizwiz(b: Bench) -> None:
    """One question per image; UNANSWERABLE_FRACTION of them ask about an absent colour or empty quadrant."""
    shares = {"answerable": 1 - UNANSWERABLE_FRACTION, "unanswerable": UNANSWERABLE_FRACTION}
    plan = shuffled_plan(b.n, shares, b.rng)
    rows, annotations = [], []
    for i, kind in enumerate(plan):
        if kind == "unanswerable":
            scene = sample_scene(b.rng)
            qa = unanswerable(scene, b.rng)
        else:
            scene, qa = sample_question(b.rng, VIZWIZ)
        name = f"VizWiz_val_{i:08d}.{scene.ext}"
        b.image(name, scene)
        rows.append(
            {"question_id": i, "image": name, "text": unanswerable_prompt(qa.question), "category": "default"}
        )
        annotations.append(
            {
                "image": name,
                "question": qa.question,
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in ten_answers(qa, b.rng)],
                "answer_type": answer_type(qa.answer),
                "answerable": int(kind == "answerable"),
            }
        )
    b.write_questions("llava_test.jsonl", rows)
    b.write_annotations("val.json", annotations)


def build_textvqa(b: Bench) -> None:
    """One question per image about a label; the official matcher keys results by (image_id, question),
    and LLaVA's question file carries the image id as its question_id."""
    rows, data = [], []
    for i in range(b.n):
        scene = sample_scene(b.rng, min_shapes=2)  # with one shape the OCR tokens would give the answer away
        image_id = f"{(i + 1) * 0x9E3779B97F4A7C15 % 2**64:016x}"  # 16 hex digits, as TextVQA's ids
        name = f"{image_id}.{scene.ext}"
        b.image(name, scene)
        qa = label_of(scene, b.rng)
        tokens = ocr_tokens(scene, b.rng)
        rows.append(
            {
                "question_id": image_id,
                "image": name,
                "text": ocr_prompt(qa.question, tokens),
                "category": "default",
            }
        )
        data.append(
            {
                "question_id": 30_000 + i,
                "image_id": image_id,
                "question": qa.question,
                "answers": ten_answers(qa, b.rng),
                "ocr_tokens": tokens,
                "image_classes": ["shape"],
            }
        )
    b.write_questions("llava_textvqa_val_v051_ocr.jsonl", rows)
    b.write_annotations(
        "TextVQA_0.5.1_val.json",
        {"dataset_type": "val", "dataset_name": "textvqa", "data": data},
        records=len(data),
    )
