"""Yes/no benchmarks: POPE (three negative-sampling splits) and MME (one yes and one no per image)."""

from __future__ import annotations

from random import Random
from typing import Any

from components.synth.eval_common import Bench
from components.synth.prompts import short_prompt
from components.synth.questions import QA, YES_NO_KINDS, a
from components.synth.scene import COLORS, sample_scene

POPE_CATEGORIES: tuple[str, ...] = ("adversarial", "popular", "random")
POPE_PER_IMAGE = 2  # yes questions per image per split, and as many no questions
# MME subtask -> the yes/no question kind that probes it (five perception, one cognition subtask).
MME_CATEGORIES: dict[str, str] = {
    "existence": "exists",
    "count": "verify_count",
    "position": "verify_position",
    "color": "verify_color",
    "OCR": "verify_label",
    "numerical_calculation": "verify_sum",
}
MME_SUFFIX = " Please answer yes or no."


def _distance(a: str, b: str) -> int:
    return sum((x - y) ** 2 for x, y in zip(COLORS[a], COLORS[b], strict=True))


def pope_negatives(present: tuple[str, ...], category: str, popularity: list[str], rng: Random) -> list[str]:
    """Absent colours to ask about, chosen the way each POPE split chooses absent objects.

    random: uniformly; popular: the colours most frequent in the training images; adversarial: the
    colours most easily confused with one in the image (nearest in RGB), the world's analogue of
    objects that co-occur with the ones present.
    """
    absent = [c for c in COLORS if c not in present]
    if category == "random":
        return rng.sample(absent, POPE_PER_IMAGE)
    if category == "popular":
        return sorted(absent, key=popularity.index)[:POPE_PER_IMAGE]
    if category == "adversarial":
        return sorted(absent, key=lambda c: (min(_distance(c, p) for p in present), c))[:POPE_PER_IMAGE]
    raise ValueError(f"unknown POPE category {category!r}; expected one of {POPE_CATEGORIES}")


def build_pope(b: Bench, popularity: list[str]) -> None:
    """Each image serves all three splits: same yes questions, split-specific no questions."""
    per_split = max(1, b.n // len(POPE_CATEGORIES))
    n_images = -(-per_split // (2 * POPE_PER_IMAGE))
    scenes = [sample_scene(b.rng, min_shapes=POPE_PER_IMAGE) for _ in range(n_images)]
    names = [f"pope_{i:06d}.{s.ext}" for i, s in enumerate(scenes, 1)]
    for name, scene in zip(names, scenes, strict=True):
        b.image(name, scene)
    rows: list[dict[str, Any]] = []
    for category in POPE_CATEGORIES:
        labels = []
        for name, scene in zip(names, scenes, strict=True):
            yes = b.rng.sample(scene.colors, POPE_PER_IMAGE)
            no = pope_negatives(scene.colors, category, popularity, b.rng)
            for y, n in zip(yes, no, strict=True):  # alternate yes/no, as POPE's files do
                for color, label in ((y, "yes"), (n, "no")):
                    qid = len(rows) + 1
                    text = f"Is there {a(color)} shape in the image?"
                    rows.append(
                        {"question_id": qid, "image": name, "text": short_prompt(text), "category": category}
                    )
                    labels.append({"question_id": qid, "image": name, "text": text, "label": label})
        b.write_annotations(f"coco/coco_pope_{category}.json", labels, fmt="jsonl")
    b.write_questions("llava_pope_test.jsonl", rows)


def build_mme(b: Bench) -> None:
    """Per subtask, images with a consecutive (yes, no) pair in random order, as MME's acc+ needs."""
    per_category = max(1, b.n // (2 * len(MME_CATEGORIES)))
    rows: list[dict[str, Any]] = []
    for category, kind in MME_CATEGORIES.items():
        for j in range(per_category):
            scene = sample_scene(b.rng)
            file = f"{j + 1:04d}.{scene.ext}"
            b.image(f"{category}/{file}", scene)
            pair: list[QA] = [YES_NO_KINDS[kind](scene, b.rng, yes) for yes in (True, False)]
            b.rng.shuffle(pair)
            for qa in pair:
                rows.append(
                    {
                        "question_id": f"{category}/{file}",
                        "image": f"{category}/{file}",
                        "text": short_prompt(qa.question),
                        "category": category,
                    }
                )
            stem = file.rsplit(".", 1)[0]
            b.w.text(
                b.path(f"MME_Benchmark_release_version/{category}/questions_answers_YN/{stem}.txt"),
                [f"{qa.question}{MME_SUFFIX}\t{qa.answer.capitalize()}" for qa in pair],
                role=f"{b.split}_annotations",
                benchmark=b.name,
            )
    b.annotations.append(b.path("MME_Benchmark_release_version"))
    b.write_questions("llava_mme.jsonl", rows)
