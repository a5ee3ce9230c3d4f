"""Questions about a scene, shared by the finetune mix and every benchmark.

Each generator returns a `QA` (question text, short answer, full-sentence answer, the answer domain
for multiple-choice distractors) or None when the scene cannot support the question (e.g. no shape
has a unique kind). Answers are read off the scene, never sampled, so they depend on the image; the
referenced object is drawn uniformly, so within a question kind the answers are balanced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from random import Random

from components.synth.scene import (
    COLORS,
    KINDS,
    LABELS,
    MAX_SHAPES,
    POSITIONS,
    ImageFormat,
    Scene,
    Shape,
    sample_scene,
)

COUNTS: tuple[str, ...] = tuple(str(n) for n in range(1, MAX_SHAPES + 2))  # one more than possible
YES_NO: tuple[str, ...] = ("yes", "no")


@dataclass(frozen=True)
class QA:
    kind: str  # generator name, e.g. "color_at"
    question: str  # no format suffix
    answer: str  # short answer, lower case
    sentence: str  # the answer as a full sentence
    domain: tuple[str, ...]  # every answer this kind can have (multiple-choice distractors)
    target: str = ""  # the attribute the question names (a position or a colour), for translations


COLOR_AT = (
    "What color is the shape in the {p}?",
    "What is the color of the shape in the {p}?",
    "Which color is the {p} shape?",
)
LABEL_OF = ("What is written on the {c} shape?", "What text is on the {c} shape?")


def _pick(rng: Random, templates: tuple[str, ...], **slots: str) -> str:
    return rng.choice(templates).format(**slots)


def a(word: str) -> str:
    """The word with its indefinite article ("an orange", "a red")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def written(label: str) -> str:
    return f"the number {label}" if label.isdigit() else f"the word {label}"


# ---------------------------------------------------------------- open questions


def color_at(scene: Scene, rng: Random) -> QA:
    s = rng.choice(scene.shapes)
    q = _pick(rng, COLOR_AT, p=s.position)
    return QA(
        "color_at", q, s.color, f"The shape in the {s.position} is {s.color}.", tuple(COLORS), s.position
    )


def color_single(scene: Scene, rng: Random) -> QA | None:
    """'What color is the shape?' about a one-shape scene: the colour is in every patch the shape covers,
    so even a tiny model learns it within minutes (shared/reference/tiny-world.md)."""
    if len(scene.shapes) != 1:
        return None
    s = scene.shapes[0]
    q = rng.choice(("What color is the shape?", "What is the color of the shape?", "Which color is the shape?"))
    return QA("color_single", q, s.color, f"The shape is {s.color}.", tuple(COLORS))


def _unique_kind(scene: Scene) -> list[Shape]:
    kinds = [s.kind for s in scene.shapes]
    return [s for s in scene.shapes if kinds.count(s.kind) == 1]


def color_of_kind(scene: Scene, rng: Random) -> QA | None:
    unique = _unique_kind(scene)
    if not unique:
        return None
    s = rng.choice(unique)
    q = _pick(rng, ("What color is the {k}?", "What is the color of the {k}?"), k=s.kind)
    return QA("color_of_kind", q, s.color, f"The {s.kind} is {s.color}.", tuple(COLORS), s.kind)


def position_of(scene: Scene, rng: Random) -> QA:
    s = rng.choice(scene.shapes)
    q = _pick(
        rng,
        (
            "Where is the {c} shape?",
            "In which part of the image is the {c} shape?",
            "Where is the {c} shape located?",
        ),
        c=s.color,
    )
    return QA(
        "position_of",
        q,
        s.position,
        f"The {s.color} shape is in the {s.position} of the image.",
        POSITIONS,
        s.color,
    )


def count(scene: Scene, rng: Random) -> QA:
    n = len(scene.shapes)
    q = rng.choice(
        ("How many shapes are there?", "How many shapes are in the image?", "How many shapes can you see?")
    )
    sentence = "There is 1 shape in the image." if n == 1 else f"There are {n} shapes in the image."
    return QA("count", q, str(n), sentence, COUNTS)


def kind_at(scene: Scene, rng: Random) -> QA:
    s = rng.choice(scene.shapes)
    q = _pick(
        rng,
        ("What shape is in the {p}?", "What kind of shape is in the {p}?", "Which shape is in the {p}?"),
        p=s.position,
    )
    return QA("kind_at", q, s.kind, f"The shape in the {s.position} is a {s.kind}.", KINDS, s.position)


def label_of(scene: Scene, rng: Random) -> QA:
    s = rng.choice(scene.shapes)
    q = _pick(rng, LABEL_OF, c=s.color)
    return QA("label_of", q, s.label, f"The {s.color} shape has {written(s.label)} on it.", LABELS, s.color)


_RELATIONS = {  # relation phrase -> (axis the relation is about, side the other shape is on)
    "to the left of": ("left", "right"),
    "to the right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}


def _relations(scene: Scene) -> list[tuple[str, Shape, Shape]]:
    """(phrase, anchor, other) for every 'the shape <phrase> the <anchor> shape' with exactly one answer."""
    found = []
    for phrase, (other_side, anchor_side) in _RELATIONS.items():
        others = [s for s in scene.shapes if other_side in s.position]
        if len(others) != 1:
            continue
        found += [(phrase, anchor, others[0]) for anchor in scene.shapes if anchor_side in anchor.position]
    return found


def relation_color(scene: Scene, rng: Random) -> QA | None:
    """'What color is the shape to the left of the blue shape?' asked only when exactly one shape fits."""
    options = _relations(scene)
    if not options:
        return None
    phrase, anchor, other = rng.choice(options)
    q = f"What color is the shape {phrase} the {anchor.color} shape?"
    sentence = f"The shape {phrase} the {anchor.color} shape is {other.color}."
    return QA("relation_color", q, other.color, sentence, tuple(COLORS), anchor.color)


def choose_color(scene: Scene, rng: Random) -> QA:
    s = rng.choice(scene.shapes)
    other = rng.choice([c for c in COLORS if c != s.color])
    a, b = (s.color, other) if rng.random() < 0.5 else (other, s.color)
    q = f"Is the shape in the {s.position} {a} or {b}?"
    return QA("choose_color", q, s.color, f"It is {s.color}.", (a, b), s.position)


# ---------------------------------------------------------------- yes/no questions


def exists(scene: Scene, rng: Random, yes: bool) -> QA:
    if yes:
        s = rng.choice(scene.shapes)
        color, sentence = s.color, f"Yes, there is {a(s.color)} {s.kind} in the {s.position}."
    else:
        color = rng.choice([c for c in COLORS if c not in scene.colors])
        sentence = f"No, there is no {color} shape in the image."
    q = _pick(
        rng,
        ("Is there {c} shape in the image?", "Is there {c} shape?", "Does the image contain {c} shape?"),
        c=a(color),
    )
    return QA("exists", q, "yes" if yes else "no", sentence, YES_NO, color)


def unanswerable(scene: Scene, rng: Random) -> QA:
    """A question about something the image does not show (VizWiz's 'unanswerable').

    Worded exactly like answerable colour and label questions, so only the image tells them apart.
    """
    if rng.random() < 0.5:
        color = rng.choice([c for c in COLORS if c not in scene.colors])
        q, target = _pick(rng, LABEL_OF, c=color), color
        sentence = f"There is no {color} shape in the image, so this cannot be answered."
    else:
        position = rng.choice([p for p in POSITIONS if scene.at(p) is None])
        q, target = _pick(rng, COLOR_AT, p=position), position
        sentence = f"There is no shape in the {position}, so this cannot be answered."
    return QA("unanswerable", q, "unanswerable", sentence, ("unanswerable",), target)


def verify_color(scene: Scene, rng: Random, yes: bool) -> QA:
    s = rng.choice(scene.shapes)
    color = s.color if yes else rng.choice([c for c in COLORS if c != s.color])
    q = f"Is the shape in the {s.position} {color}?"
    sentence = f"{'Yes' if yes else 'No'}, the shape in the {s.position} is {s.color}."
    return QA("verify_color", q, "yes" if yes else "no", sentence, YES_NO, s.position)


def verify_position(scene: Scene, rng: Random, yes: bool) -> QA:
    s = rng.choice(scene.shapes)
    position = s.position if yes else rng.choice([p for p in POSITIONS if p != s.position])
    q = f"Is the {s.color} shape in the {position} of the image?"
    sentence = f"{'Yes' if yes else 'No'}, the {s.color} shape is in the {s.position}."
    return QA("verify_position", q, "yes" if yes else "no", sentence, YES_NO, s.color)


def verify_count(scene: Scene, rng: Random, yes: bool) -> QA:
    n = len(scene.shapes)
    k = n if yes else int(rng.choice([c for c in COUNTS if c != str(n)]))
    q = "Is there exactly 1 shape in the image?" if k == 1 else f"Are there exactly {k} shapes in the image?"
    sentence = f"{'Yes' if yes else 'No'}, " + (
        "there is 1 shape in the image." if n == 1 else f"there are {n} shapes in the image."
    )
    return QA("verify_count", q, "yes" if yes else "no", sentence, YES_NO)


def verify_label(scene: Scene, rng: Random, yes: bool) -> QA:
    present = [s.label for s in scene.shapes]
    label = rng.choice(present) if yes else rng.choice([w for w in LABELS if w not in present])
    q = f"Is {written(label)} written on one of the shapes?"
    sentence = f"{'Yes' if yes else 'No'}, {written(label)} is {'' if yes else 'not '}written on a shape."
    return QA("verify_label", q, "yes" if yes else "no", sentence, YES_NO, label)


def verify_sum(scene: Scene, rng: Random, yes: bool) -> QA:
    """Counting plus arithmetic: the cognition-style question (MME numerical_calculation)."""
    n, k = len(scene.shapes), rng.randint(1, 4)
    total = n + k if yes else n + k + rng.choice([d for d in (-2, -1, 1, 2) if n + k + d > 0])
    q = f"Is the number of shapes plus {k} equal to {total}?"
    sentence = f"{'Yes' if yes else 'No'}, there {'is' if n == 1 else 'are'} {n} and {n} plus {k} is {n + k}."
    return QA("verify_sum", q, "yes" if yes else "no", sentence, YES_NO)


OpenGenerator = Callable[[Scene, Random], "QA | None"]
YesNoGenerator = Callable[[Scene, Random, bool], QA]

OPEN: dict[str, OpenGenerator] = {
    "color_single": color_single,
    "color_at": color_at,
    "color_of_kind": color_of_kind,
    "position_of": position_of,
    "count": count,
    "kind_at": kind_at,
    "label_of": label_of,
    "relation_color": relation_color,
    "choose_color": choose_color,
}
YES_NO_KINDS: dict[str, YesNoGenerator] = {
    "exists": exists,
    "verify_color": verify_color,
    "verify_position": verify_position,
    "verify_count": verify_count,
    "verify_label": verify_label,
    "verify_sum": verify_sum,
}


def supports(kind: str, scene: Scene) -> bool:
    """Whether a question of `kind` can be asked about `scene` with a unique answer."""
    if kind == "color_single":
        return len(scene.shapes) == 1
    if kind == "color_of_kind":
        return bool(_unique_kind(scene))
    if kind == "relation_color":
        return bool(_relations(scene))
    if kind in OPEN or kind in YES_NO_KINDS:
        return True
    raise ValueError(f"unknown question kind {kind!r}; known: {sorted(OPEN) + sorted(YES_NO_KINDS)}")


def ask(kind: str, scene: Scene, rng: Random, yes: bool | None = None) -> QA:
    """One question of `kind` about `scene`; yes/no kinds answer yes with probability 1/2 unless told."""
    if not supports(kind, scene):
        raise ValueError(f"question kind {kind!r} does not apply to this scene ({len(scene.shapes)} shapes)")
    if kind in YES_NO_KINDS:
        return YES_NO_KINDS[kind](scene, rng, rng.random() < 0.5 if yes is None else yes)
    qa = OPEN[kind](scene, rng)
    assert qa is not None  # guaranteed by supports()
    return qa


def draw_kind(rng: Random, weights: dict[str, float]) -> str:
    kinds = list(weights)
    return rng.choices(kinds, weights=[weights[k] for k in kinds])[0]


def sample_question(
    rng: Random, weights: dict[str, float], *, min_shapes: int = 1, fmt: ImageFormat | None = None
) -> tuple[Scene, QA]:
    """A question kind drawn by `weights`, then a fresh scene that supports it.

    Drawing the kind first and redrawing the scene (never the kind) keeps answers balanced: had we
    redrawn the kind on an unsuitable scene, one-shape scenes would get more count questions, and
    "1" would become the most likely count answer.
    """
    kind = draw_kind(rng, weights)
    for _ in range(200):
        scene = sample_scene(rng, min_shapes=min_shapes, fmt=fmt)
        if supports(kind, scene):
            return scene, ask(kind, scene, rng)
    raise RuntimeError(f"no sampled scene supports question kind {kind!r}")


def ask_weighted(scene: Scene, rng: Random, weights: dict[str, float]) -> QA:
    """A question about a given scene (multi-turn chats), kinds drawn by `weights` among those it supports."""
    return ask(draw_kind(rng, {k: w for k, w in weights.items() if supports(k, scene)}), scene, rng)


def choices(qa: QA, rng: Random, n_options: int) -> tuple[list[str], int]:
    """`n_options` shuffled options (the answer and distinct distractors from its domain), answer index."""
    distractors = [d for d in qa.domain if d != qa.answer]
    n = min(n_options, len(distractors) + 1)
    options = [qa.answer, *rng.sample(distractors, n - 1)]
    rng.shuffle(options)
    return options, options.index(qa.answer)


LETTERS = "ABCDE"


def format_options(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
