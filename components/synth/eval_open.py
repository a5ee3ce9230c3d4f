"""Open-ended benchmarks: LLaVA-Bench (in-the-Wild) and MM-Vet, with reference answers for a judge."""

from __future__ import annotations

import hashlib
from random import Random
from typing import Any

from components.synth import knowledge
from components.synth.eval_common import Bench
from components.synth.prompts import DETAIL_INSTRUCTIONS, caption, description
from components.synth.questions import ask_weighted
from components.synth.scene import Scene, sample_scene

CONV_KINDS: dict[str, float] = {"color_at": 0.35, "position_of": 0.3, "count": 0.2, "kind_at": 0.15}
JUDGE_MODEL = "gpt-4-0314"  # the model LLaVA-Bench's reference answers are attributed to


def answer_id(*parts: object) -> str:
    """A stable stand-in for the shortuuid the reference writes (same inputs, same id)."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:22]


def _names(shapes: list[Any]) -> str:
    words = [f"the {s.color} {s.kind}" for s in shapes]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _mixable(scene: Scene) -> tuple[str, str, str] | None:
    for (a, b), result in sorted(knowledge.MIXES.items()):
        if a in scene.colors and b in scene.colors:
            return a, b, result
    return None


def complex_question(scene: Scene, rng: Random) -> tuple[str, str]:
    """A question that needs two steps (find, then count / combine / group), with a reference answer."""
    options = ["halves"]
    if len(scene.shapes) >= 2:
        options.append("remove")
    if _mixable(scene):
        options.append("mix")
    choice = rng.choice(options)
    if choice == "remove":
        gone = rng.choice(scene.shapes)
        left = [s for s in scene.shapes if s is not gone]
        n = len(left)
        return (
            f"If the {gone.color} shape were taken away, how many shapes would be left?",
            f"{n} shape{'s' if n > 1 else ''} would be left: {_names(left)}.",
        )
    if choice == "mix":
        a, b, result = _mixable(scene)  # type: ignore[misc]
        return (
            f"What color would you get by mixing the colors of the {a} shape and the {b} shape?",
            f"The shapes are {a} and {b}, and mixing {a} with {b} gives {result}.",
        )
    left = [s for s in scene.shapes if s.position.endswith("left")]
    right = [s for s in scene.shapes if s.position.endswith("right")]
    parts = [
        f"{side.capitalize()} half: {_names(group) if group else 'no shapes'}."
        for side, group in (("left", left), ("right", right))
    ]
    return "Which shapes are in the left half of the image, and which are in the right half?", " ".join(parts)


def build_llava_bench(b: Bench) -> None:
    """Images with one conversation, one detailed-description and one complex-reasoning question each."""
    rows, answers, contexts = [], [], []
    for i in range(max(1, b.n // 3)):
        scene = sample_scene(b.rng)
        name = f"{i + 1:03d}.{scene.ext}"
        b.image(name, scene)
        contexts.append({"image": name, "caption": description(scene)})
        qa = ask_weighted(scene, b.rng, CONV_KINDS)
        items = [
            ("conv", qa.question, qa.sentence),
            ("detail", b.rng.choice(DETAIL_INSTRUCTIONS), description(scene)),
            ("complex", *complex_question(scene, b.rng)),
        ]
        for category, question, reference in items:
            qid = len(rows)
            rows.append({"question_id": qid, "image": name, "text": question, "category": category})
            answers.append(
                {
                    "question_id": qid,
                    "prompt": question,
                    "text": reference,
                    "answer_id": answer_id(b.name, qid),
                    "model_id": JUDGE_MODEL,
                    "metadata": {},
                }
            )
    b.write_questions("questions.jsonl", rows)
    b.write_annotations("answers_gpt4.jsonl", answers, fmt="jsonl")
    b.write_annotations("context.jsonl", contexts, fmt="jsonl")


# ---------------------------------------------------------------- MM-Vet


MMVET_KINDS: dict[str, float] = {
    "rec": 0.25,
    "spat": 0.2,
    "ocr": 0.15,
    "math": 0.15,
    "know": 0.1,
    "gen": 0.15,
}


def mmvet_question(scene: Scene, rng: Random, kind: str) -> tuple[str, str, list[str]] | None:
    """(question, answer, capabilities); answers list accepted variants with MM-Vet's <OR>."""
    s = rng.choice(scene.shapes)
    if kind == "rec":
        return f"What color is the shape in the {s.position}?", s.color, ["rec"]
    if kind == "spat":
        upper = s.position.replace("top", "upper").replace("bottom", "lower")
        return f"Where is the {s.color} shape?", f"{s.position}<OR>{upper}", ["rec", "spat"]
    if kind == "ocr":
        return f"What is written on the {s.color} shape?", s.label, ["ocr"]
    if kind == "math":
        k = rng.randint(1, 5)
        return (
            f"What is the number of shapes in the image plus {k}?",
            str(len(scene.shapes) + k),
            ["rec", "math"],
        )
    if kind == "know":
        mix = _mixable(scene)
        if mix is None:
            return None
        a, b, result = mix
        return (
            f"What color do you get by mixing the colors of the {a} and {b} shapes?",
            result,
            ["rec", "know"],
        )
    if kind == "gen":
        return "Describe the image in one sentence.", caption(scene, rng), ["rec", "gen"]
    raise ValueError(f"unknown MM-Vet question kind {kind!r}")


def build_mmvet(b: Bench) -> None:
    rows, truth = [], {}
    kinds = list(MMVET_KINDS)
    for i in range(b.n):
        item = None
        while item is None:  # "know" needs a mixable pair of colours; redraw scene and kind until it fits
            scene = sample_scene(b.rng)
            item = mmvet_question(scene, b.rng, b.rng.choices(kinds, [MMVET_KINDS[k] for k in kinds])[0])
        question, answer, capabilities = item
        name = f"v1_{i}.{scene.ext}"
        b.image(name, scene)
        rows.append({"question_id": i, "image": name, "text": question, "category": ",".join(capabilities)})
        truth[f"v1_{i}"] = {
            "imagename": name,
            "question": question,
            "answer": answer,
            "capability": capabilities,
        }
    b.write_questions("llava-mm-vet.jsonl", rows)
    b.write_annotations("mm-vet.json", truth)
