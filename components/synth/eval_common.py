"""Shared pieces of the benchmark builders: the per-benchmark context and VQA-style answer lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random
from typing import Any

from components.synth.files import Writer
from components.synth.prompts import NUMBER_WORDS
from components.synth.questions import QA
from components.synth.scene import COLORS, POSITIONS, Scene

# Short-answer benchmarks: mostly single-patch attributes, so the image-blind prior stays <= 0.25
# (colour 1/8, quadrant 1/4, count 1/3, yes/no 1/2, kind 1/3, label 1/16, weighted by these shares).
VQA_WEIGHTS: dict[str, float] = {
    "color_at": 0.35,
    "color_of_kind": 0.05,
    "position_of": 0.2,
    "exists": 0.1,
    "count": 0.12,
    "kind_at": 0.08,
    "label_of": 0.1,
}
GQA_WEIGHTS: dict[str, float] = {  # the embedded default's learning check (tiny.yaml): mostly lone-shape colour
    "color_single": 0.7,
    "color_at": 0.1,
    "exists": 0.1,
    "count": 0.1,
}
VARIANT_SHARE = 0.3  # questions whose 10 answers include 1-3 dissenting annotators

_CONFUSABLE = {
    "red": ("orange", "pink"),
    "orange": ("red", "yellow"),
    "yellow": ("orange", "green"),
    "green": ("cyan", "yellow"),
    "cyan": ("blue", "green"),
    "blue": ("purple", "cyan"),
    "purple": ("blue", "pink"),
    "pink": ("purple", "red"),
}
_POSITION_VARIANTS = {
    p: (p.replace("top", "upper").replace("bottom", "lower"), *p.split()) for p in POSITIONS
}
_KIND_VARIANTS = {"circle": ("ball", "dot"), "square": ("rectangle", "box"), "triangle": ("pyramid", "arrow")}


@dataclass
class Bench:
    """One benchmark being written: its folder under eval/ (or dev/), its random stream and its outputs."""

    name: str  # registry name, e.g. "vqav2"
    folder: str  # folder under eval/, named as in the real eval.zip, e.g. "vqav2", "MME"
    w: Writer
    rng: Random
    n: int  # target number of questions
    split: str = "eval"  # "eval": the benchmark itself; "dev": a held-out copy for the sweep to select on
    questions: str = ""
    annotations: list[str] = field(default_factory=list)
    n_questions: int = 0
    has_images: bool = True

    def path(self, rel: str) -> str:
        return f"{self.split}/{self.folder}/{rel}"

    def image(self, name: str, scene: Scene) -> bytes:
        """Save a held-out image under the benchmark's images/ folder; `name` is relative to it."""
        return self.w.image(self.path(f"images/{name}"), scene, role=f"{self.split}_images", benchmark=self.name)

    def write_questions(self, rel: str, rows: list[dict[str, Any]], fmt: str = "jsonl") -> None:
        if fmt == "jsonl":
            self.w.jsonl(self.path(rel), rows, role=f"{self.split}_questions", benchmark=self.name)
        else:
            self.w.json(self.path(rel), rows, role=f"{self.split}_questions", benchmark=self.name, fmt=fmt)
        self.questions, self.n_questions = self.path(rel), len(rows)

    def write_annotations(self, rel: str, obj: Any, fmt: str = "json", records: int | None = None) -> None:
        if fmt == "jsonl":
            self.w.jsonl(self.path(rel), obj, role=f"{self.split}_annotations", benchmark=self.name)
        else:
            self.w.json(
                self.path(rel), obj, role=f"{self.split}_annotations", benchmark=self.name, fmt=fmt, records=records
            )
        self.annotations.append(self.path(rel))

    def summary(self) -> dict[str, Any]:
        return {
            "folder": f"{self.split}/{self.folder}",
            "questions": self.questions,
            "annotations": self.annotations,
            "images": self.path("images") if self.has_images else None,
            "n_questions": self.n_questions,
        }


def answer_variants(answer: str) -> tuple[str, ...]:
    """Plausible dissenting annotator answers for a ground-truth answer."""
    if answer in COLORS:
        return _CONFUSABLE[answer]
    if answer in _POSITION_VARIANTS:
        return _POSITION_VARIANTS[answer]
    if answer in _KIND_VARIANTS:
        return _KIND_VARIANTS[answer]
    if answer in ("yes", "no"):
        return ("no",) if answer == "yes" else ("yes",)
    if answer == "unanswerable":
        return ("unsuitable", "no shape")
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        # The number word normalises to the same answer; the neighbour does not.
        return NUMBER_WORDS[int(answer)], str(int(answer) + 1)
    return (answer.upper(), "unknown")


def ten_answers(qa: QA, rng: Random) -> list[str]:
    """Ten annotator answers: all the truth, or (VARIANT_SHARE of questions) 7-9 truths and 1-3 variants."""
    answers = [qa.answer] * 10
    if rng.random() < VARIANT_SHARE:
        variants = answer_variants(qa.answer)
        for i in rng.sample(range(10), rng.randint(1, 3)):
            answers[i] = rng.choice(variants)
    return answers


def answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    if answer == "unanswerable":
        return "unanswerable"
    return "number" if answer.isdigit() else "other"


def question_type(question: str) -> str:
    """VQAv2-style question type: the question's first words, lower-cased."""
    return " ".join(question.lower().rstrip("?").split()[:3])
