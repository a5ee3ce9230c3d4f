"""Prompt formats of LLaVA-1.5's data and benchmarks, and the world's captions.

The suffixes are the reference's exact strings (llava15.md §2.3, §5.1), so a model finetuned on the
synthetic mix meets the same formats in the synthetic benchmarks as a real model meets in real ones.
"""

from __future__ import annotations

from random import Random

from components.synth.questions import LABELS, QA, a, format_options, written
from components.synth.scene import Scene

SHORT_SUFFIX = "Answer the question using a single word or phrase."
CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."
CHOICE_SUFFIX_CN = "请直接回答选项字母。"
UNANSWERABLE_HINT = "When the provided information is insufficient, respond with 'Unanswerable'."
IMAGE_TOKEN = "<image>"

CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Render a clear and concise summary of the photo.",
    "Describe the image concisely.",
    "Give a brief description of the image.",
    "Share a concise interpretation of the image provided.",
    "Write a terse but informative summary of the picture.",
    "Provide a brief description of the given image.",
)
DETAIL_INSTRUCTIONS: tuple[str, ...] = (
    "Describe this image in detail.",
    "Describe the image in detail.",
    "Explain what you see in the image in detail.",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def with_image(text: str, rng: Random, after: float = 0.0) -> str:
    """Put the image token before the text (the usual case) or, with probability `after`, after it."""
    return f"{text}\n{IMAGE_TOKEN}" if rng.random() < after else f"{IMAGE_TOKEN}\n{text}"


def short_prompt(question: str) -> str:
    return f"{question}\n{SHORT_SUFFIX}"


def unanswerable_prompt(question: str) -> str:
    return f"{question}\n{UNANSWERABLE_HINT}\n{SHORT_SUFFIX}"


def choice_prompt(question: str, options: list[str], suffix: str = CHOICE_SUFFIX) -> str:
    return f"{question}\n{format_options(options)}\n{suffix}"


def ocr_tokens(scene: Scene, rng: Random) -> list[str]:
    """The labels in the image plus one or two spurious tokens, as an OCR system would report them.

    The spurious tokens keep a model that ignores the image from answering by elimination.
    """
    present = [s.label for s in scene.shapes]
    extra = rng.sample([w for w in LABELS if w not in present], rng.randint(1, 2))
    tokens = present + extra
    rng.shuffle(tokens)
    return tokens


def ocr_prompt(question: str, tokens: list[str]) -> str:
    return f"{question}\nReference OCR token: {', '.join(tokens)}\n{SHORT_SUFFIX}"


def short_answer(qa: QA) -> str:
    """The training target for a short-answer prompt: yes/no capitalised as LLaVA's data has it."""
    if qa.answer in ("yes", "no", "unanswerable"):
        return qa.answer.capitalize()
    return qa.answer


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene, rng: Random) -> str:
    """A brief caption in one of a few styles, naming every shape's colour, kind and quadrant."""
    listed = _join([f"{a(s.color)} {s.kind} in the {s.position}" for s in scene.shapes])
    n = len(scene.shapes)
    style = rng.randrange(3)
    if style == 0:
        text = listed[0].upper() + listed[1:] + "."
    elif style == 1:
        text = f"{NUMBER_WORDS[n].capitalize()} shape{'s' if n > 1 else ''} on a grey background: {listed}."
    else:
        text = f"A grey picture with {listed}."
    if rng.random() < 0.3:
        s = rng.choice(scene.shapes)
        text += f" The {s.color} {s.kind} has {written(s.label)} on it."
    return text


def description(scene: Scene) -> str:
    """A detailed description: every shape with its colour, kind, quadrant and label."""
    n = len(scene.shapes)
    head = f"The image shows {NUMBER_WORDS[n]} shape{'s' if n > 1 else ''} on a plain grey background."
    body = [
        f"In the {s.position} there is {a(s.color)} {s.kind} with {written(s.label)} written on it."
        for s in scene.shapes
    ]
    return " ".join([head, *body])
