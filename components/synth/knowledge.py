"""Text-only questions (the world's stand-in for ShareGPT and ScienceQA's text items).

Small facts a text model can learn without an image: sums and differences of small numbers, which
colour two paints mix to, how many sides a shape has. Each fact can also be stated as a context
sentence, so a ScienceQA-style problem can carry it as its hint.
"""

from __future__ import annotations

from random import Random

from components.synth.questions import QA

NUMBERS: tuple[str, ...] = tuple(str(n) for n in range(0, 19))
MIXES: dict[tuple[str, str], str] = {
    ("blue", "yellow"): "green",
    ("red", "yellow"): "orange",
    ("red", "blue"): "purple",
    ("red", "white"): "pink",
    ("blue", "green"): "cyan",
}
MIX_RESULTS: tuple[str, ...] = tuple(sorted(set(MIXES.values())))
SIDES: dict[str, int] = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
SIDE_COUNTS: tuple[str, ...] = tuple(str(n) for n in sorted(set(SIDES.values())))


def arithmetic(rng: Random) -> tuple[QA, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5 or a < b:
        q, value, words = f"What is {a} plus {b}?", a + b, f"{a} plus {b} is {a + b}."
    else:
        q, value, words = f"What is {a} minus {b}?", a - b, f"{a} minus {b} is {a - b}."
    return QA("arithmetic", q, str(value), words, NUMBERS), words


def color_mix(rng: Random) -> tuple[QA, str]:
    (a, b), result = rng.choice(sorted(MIXES.items()))
    if rng.random() < 0.5:
        a, b = b, a
    q = rng.choice(
        (
            f"What color do you get when you mix {a} and {b} paint?",
            f"Which color is made by mixing {a} and {b}?",
        )
    )
    fact = f"Mixing {a} and {b} paint makes {result}."
    return QA("color_mix", q, result, fact, MIX_RESULTS), fact


def sides(rng: Random) -> tuple[QA, str]:
    shape, n = rng.choice(sorted(SIDES.items()))
    fact = f"A {shape} has {n} sides."
    return QA("sides", f"How many sides does a {shape} have?", str(n), fact, SIDE_COUNTS), fact


FACTS = (arithmetic, color_mix, sides)


def text_fact(rng: Random) -> tuple[QA, str]:
    """A random text-only question and the sentence that states its answer."""
    return rng.choice(FACTS)(rng)
