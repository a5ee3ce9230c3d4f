"""Training data: LCS-558K-style pretraining captions and a mix665k-style finetuning mix.

Both are LLaVA conversation JSON lists (llava15.md §2). The mix follows the reference's response
formats: short answers with the single-word suffix, lettered multiple choice, multi-turn chats with
the image only in the first human turn, captions/descriptions, OCR-token prompts, VizWiz-style
prompts that may call for 'Unanswerable', and ~5% text-only samples (no "image" key).
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random
from typing import Any

from components.synth import knowledge, prompts
from components.synth.files import Writer
from components.synth.questions import (
    LETTERS,
    ask_weighted,
    choices,
    label_of,
    sample_question,
    unanswerable,
)
from components.synth.scene import Scene, sample_scene

TEXT_ONLY_FRACTION = 0.05
Turns = list[dict[str, str]]

# Sample types of the finetune mix and their shares (text-only is TEXT_ONLY_FRACTION of the total).
MIX: dict[str, float] = {
    "short": 0.74,
    "verify": 0.04,
    "choice": 0.05,
    "multi": 0.05,
    "describe": 0.03,
    "ocr": 0.02,
    "unanswerable": 0.02,
    "text": TEXT_ONLY_FRACTION,
}
# Question kinds by sample type. The colour of a lone shape dominates: it is the one attribute a tiny
# random-init model learns within the embedded default's minutes (measured: ~0.95 after 450 steps of 32).
# Quadrant lookups (colour_at, position_of) need far more steps at that size, shape kind and labels more
# still; they stay a minority so every benchmark has them (shared/reference/tiny-world.md).
SHORT: dict[str, float] = {
    "color_single": 0.55,
    "color_at": 0.12,
    "position_of": 0.1,
    "exists": 0.07,
    "count": 0.07,
    "kind_at": 0.03,
    "label_of": 0.02,
    "relation_color": 0.02,
    "choose_color": 0.02,
}
VERIFY: dict[str, float] = {
    "verify_color": 0.25,
    "verify_position": 0.25,
    "verify_count": 0.2,
    "verify_label": 0.15,
    "verify_sum": 0.15,
}
CHOICE: dict[str, float] = {
    "color_at": 0.3,
    "position_of": 0.25,
    "count": 0.15,
    "kind_at": 0.1,
    "label_of": 0.1,
    "relation_color": 0.1,
}
CONVERSE: dict[str, float] = {**SHORT, "verify_color": 0.04, "verify_count": 0.04}
VIZWIZ: dict[str, float] = {"color_at": 0.35, "position_of": 0.25, "label_of": 0.25, "count": 0.15}
UNANSWERABLE_SHARE = 0.25  # of VizWiz-style samples


def _turns(*pairs: tuple[str, str]) -> Turns:
    out = []
    for human, gpt in pairs:
        out += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return out


def apportion(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer counts proportional to `shares` that sum to `total` (largest remainder)."""
    norm = sum(shares.values())
    exact = {k: total * v / norm for k, v in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def shuffled_plan(total: int, shares: dict[str, float], rng: Random) -> list[str]:
    """`total` type names in exact proportions (see `apportion`), in a random order."""
    plan = [kind for kind, k in apportion(total, shares).items() for _ in range(k)]
    rng.shuffle(plan)
    return plan


# ---------------------------------------------------------------- pretraining


def pretrain_captions(w: Writer, rng: Random, n: int) -> list[dict[str, Any]]:
    """`n` caption samples, each with its own image under images/pretrain/."""
    records = []
    for i in range(n):
        scene = sample_scene(rng)
        rel = f"pretrain/{i // 1000:05d}/{i:09d}.{scene.ext}"
        w.image(f"images/{rel}", scene)
        instruction = prompts.with_image(rng.choice(prompts.CAPTION_INSTRUCTIONS), rng, after=0.5)
        records.append(
            {
                "id": f"{i:09d}",
                "image": rel,
                "conversations": _turns((instruction, prompts.caption(scene, rng))),
            }
        )
    return records


# ---------------------------------------------------------------- finetuning


def _short(rng: Random, weights: dict[str, float]) -> tuple[Scene, Turns]:
    scene, qa = sample_question(rng, weights)
    return scene, _turns(
        (prompts.with_image(prompts.short_prompt(qa.question), rng), prompts.short_answer(qa))
    )


def _choice(rng: Random) -> tuple[Scene, Turns]:
    scene, qa = sample_question(rng, CHOICE)
    options, answer = choices(qa, rng, rng.randint(2, 4))
    human = prompts.with_image(prompts.choice_prompt(qa.question, options), rng)
    return scene, _turns((human, LETTERS[answer]))


def _multi(scene: Scene, rng: Random) -> Turns:
    """2-3 rounds about one image: all short answers (VQA-style) or all sentences (chat-style)."""
    chat, rounds = rng.random() < 0.5, rng.choice((2, 3))
    asked: set[str] = set()
    pairs = []
    for _ in range(20):  # bounded: a 1-shape scene offers only a handful of distinct questions
        if len(pairs) == rounds:
            break
        qa = ask_weighted(scene, rng, CONVERSE)
        if qa.question in asked:
            continue
        asked.add(qa.question)
        human = qa.question if chat else prompts.short_prompt(qa.question)
        pairs.append((human, qa.sentence if chat else prompts.short_answer(qa)))
    first, answer = pairs[0]
    pairs[0] = (prompts.with_image(first, rng, after=0.3 if chat else 0.0), answer)
    return _turns(*pairs)


def _describe(scene: Scene, rng: Random) -> Turns:
    if rng.random() < 0.5:
        pair = (rng.choice(prompts.CAPTION_INSTRUCTIONS), prompts.caption(scene, rng))
    else:
        pair = (rng.choice(prompts.DETAIL_INSTRUCTIONS), prompts.description(scene))
    return _turns((prompts.with_image(pair[0], rng, after=0.3), pair[1]))


def _ocr(rng: Random) -> tuple[Scene, Turns]:
    scene = sample_scene(rng, min_shapes=2)  # as in TextVQA: a single label would be the only OCR token
    qa = label_of(scene, rng)
    human = prompts.ocr_prompt(qa.question, prompts.ocr_tokens(scene, rng))
    return scene, _turns((prompts.with_image(human, rng), qa.answer))


def _unanswerable(rng: Random) -> tuple[Scene, Turns]:
    if rng.random() < UNANSWERABLE_SHARE:
        scene = sample_scene(rng)
        qa = unanswerable(scene, rng)
    else:
        scene, qa = sample_question(rng, VIZWIZ)
    human = prompts.with_image(prompts.unanswerable_prompt(qa.question), rng)
    return scene, _turns((human, prompts.short_answer(qa)))


def _on_fresh_scene(build: Callable[[Scene, Random], Turns]) -> Callable[[Random], tuple[Scene, Turns]]:
    def run(rng: Random) -> tuple[Scene, Turns]:
        scene = sample_scene(rng)
        return scene, build(scene, rng)

    return run


def _text_only(rng: Random) -> Turns:
    """One or two rounds of text facts, answered briefly (with the suffix) or in a sentence."""
    pairs: list[tuple[str, str]] = []
    rounds = rng.choice((1, 1, 2))
    while len(pairs) < rounds:
        qa, _fact = knowledge.text_fact(rng)
        if any(qa.question in human for human, _ in pairs):
            continue
        if rng.random() < 0.5:
            pairs.append((prompts.short_prompt(qa.question), qa.answer))
        else:
            pairs.append((qa.question, qa.sentence))
    return _turns(*pairs)


_IMAGE_BUILDERS: dict[str, Callable[[Random], tuple[Scene, Turns]]] = {
    "short": lambda rng: _short(rng, SHORT),
    "verify": lambda rng: _short(rng, VERIFY),
    "choice": _choice,
    "multi": _on_fresh_scene(_multi),
    "describe": _on_fresh_scene(_describe),
    "ocr": _ocr,
    "unanswerable": _unanswerable,
}


def finetune_mix(w: Writer, rng: Random, n: int) -> list[dict[str, Any]]:
    """`n` finetuning samples in a shuffled, fixed order; image samples get fresh images/finetune/ files."""
    plan = shuffled_plan(n, MIX, rng)
    records: list[dict[str, Any]] = []
    for i, kind in enumerate(plan):
        sample_id = f"synth_{i:06d}"
        if kind == "text":
            records.append({"id": sample_id, "conversations": _text_only(rng)})
            continue
        scene, turns = _IMAGE_BUILDERS[kind](rng)
        rel = f"finetune/{i // 1000:03d}/{i:06d}.{scene.ext}"
        w.image(f"images/{rel}", scene)
        records.append({"id": sample_id, "image": rel, "conversations": turns})
    return records
