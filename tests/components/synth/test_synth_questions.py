import re
from collections import Counter, defaultdict
from random import Random

import pytest

from components.synth import knowledge
from components.synth.conversations import apportion
from components.synth.eval_common import GQA_WEIGHTS, VQA_WEIGHTS
from components.synth.questions import (
    COUNTS,
    OPEN,
    YES_NO_KINDS,
    ask,
    choices,
    sample_question,
    supports,
    unanswerable,
)
from components.synth.scene import COLORS, POSITIONS, Scene, sample_scene

SCENES = [sample_scene(Random(i)) for i in range(400)]
_COLOR = "|".join(COLORS)
_POSITION = "|".join(POSITIONS)


def _named(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return m.group(1)


def _truth(scene: Scene, kind: str, q: str) -> str:
    """The answer recomputed from the scene and the question text alone."""
    if kind == "color_single":
        (shape,) = scene.shapes
        return shape.color
    if kind == "color_at":
        return scene.at(_named(rf"({_POSITION})", q)).color
    if kind == "position_of":
        return scene.of_color(_named(rf"({_COLOR})", q)).position
    if kind == "count":
        return str(len(scene.shapes))
    if kind == "kind_at":
        return scene.at(_named(rf"({_POSITION})", q)).kind
    if kind == "label_of":
        return scene.of_color(_named(rf"({_COLOR})", q)).label
    if kind == "color_of_kind":
        kind_named = _named(r"the (circle|square|triangle)", q)
        (shape,) = [s for s in scene.shapes if s.kind == kind_named]
        return shape.color
    if kind == "relation_color":
        phrase, anchor = re.search(
            rf"shape (to the left of|to the right of|above|below) the ({_COLOR})", q
        ).groups()
        side = {"to the left of": "left", "to the right of": "right", "above": "top", "below": "bottom"}[
            phrase
        ]
        (other,) = [s for s in scene.shapes if side in s.position]
        assert scene.of_color(anchor) is not other
        return other.color
    if kind == "choose_color":
        return scene.at(_named(rf"({_POSITION})", q)).color
    if kind == "exists":
        return "yes" if _named(rf"({_COLOR})", q) in scene.colors else "no"
    if kind == "verify_color":
        return "yes" if scene.at(_named(rf"({_POSITION})", q)).color == _named(rf" ({_COLOR})\?", q) else "no"
    if kind == "verify_position":
        return (
            "yes"
            if scene.of_color(_named(rf"({_COLOR})", q)).position == _named(rf"({_POSITION})", q)
            else "no"
        )
    if kind == "verify_count":
        return "yes" if int(_named(r"exactly (\d)", q)) == len(scene.shapes) else "no"
    if kind == "verify_label":
        return (
            "yes" if _named(r"(?:number|word) (\w+) written", q) in [s.label for s in scene.shapes] else "no"
        )
    if kind == "verify_sum":
        k, total = map(int, re.search(r"plus (\d+) equal to (\d+)", q).groups())
        return "yes" if len(scene.shapes) + k == total else "no"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", sorted(OPEN) + sorted(YES_NO_KINDS))
def test_answers_are_read_off_the_scene(kind):
    rng = Random(1)
    asked = 0
    for scene in SCENES:
        if not supports(kind, scene):
            continue
        qa = ask(kind, scene, rng)
        asked += 1
        assert qa.kind == kind and qa.answer in qa.domain
        assert qa.answer == _truth(scene, kind, qa.question), (qa, scene)
    assert asked > 50


@pytest.mark.parametrize("kind", sorted(YES_NO_KINDS))
def test_yes_no_questions_honour_the_requested_answer(kind):
    rng = Random(2)
    for scene in SCENES[:100]:
        for yes in (True, False):
            qa = ask(kind, scene, rng, yes)
            assert qa.answer == ("yes" if yes else "no") == _truth(scene, kind, qa.question)


def test_unanswerable_questions_name_something_absent():
    rng = Random(3)
    for scene in SCENES[:200]:
        qa = unanswerable(scene, rng)
        assert qa.answer == "unanswerable"
        assert qa.target not in scene.colors and scene.at(qa.target) is None


def test_unsupported_and_unknown_kinds_are_rejected():
    one_shape = next(s for s in SCENES if len(s.shapes) == 1)
    assert not supports("relation_color", one_shape)
    with pytest.raises(ValueError, match="does not apply"):
        ask("relation_color", one_shape, Random(0))
    with pytest.raises(ValueError, match="unknown question kind 'colour'"):
        ask("colour", one_shape, Random(0))


def test_choices_hold_the_answer_once_among_distinct_options():
    rng = Random(4)
    letters = Counter()
    for scene in SCENES[:200]:
        qa = ask("color_at", scene, rng)
        options, idx = choices(qa, rng, 4)
        assert len(options) == len(set(options)) == 4 and options[idx] == qa.answer
        letters[idx] += 1
    assert min(letters.values()) > 30  # the right letter is spread over A-D
    qa = ask("kind_at", SCENES[0], rng)
    assert len(choices(qa, rng, 4)[0]) == 3  # capped by the domain (three kinds)


def _blind_accuracy(weights: dict[str, float], n: int = 6000) -> float:
    """Best accuracy of an image-blind guesser that knows the question kind (and, for 'A or B'
    questions, which option comes first)."""
    rng = Random(5)
    groups: dict[str, Counter] = defaultdict(Counter)
    for _ in range(n):
        _, qa = sample_question(rng, weights)
        answer = qa.domain.index(qa.answer) if qa.kind == "choose_color" else qa.answer
        groups[qa.kind][answer] += 1
    return sum(c.most_common(1)[0][1] for c in groups.values()) / n


@pytest.mark.parametrize("weights", [VQA_WEIGHTS, GQA_WEIGHTS], ids=["vqa", "gqa"])
def test_short_answer_mixes_leave_an_image_blind_model_at_chance(weights):
    assert _blind_accuracy(weights) <= 0.25


def test_counts_stay_balanced_when_other_kinds_need_special_scenes():
    # relation questions need 2+ shapes; if they fell back to other kinds on unsuitable scenes, count
    # questions would pile up on one-shape scenes and "1" would dominate.
    rng = Random(6)
    drawn = (sample_question(rng, {"count": 0.3, "relation_color": 0.7}) for _ in range(4000))
    counts = Counter(qa.answer for _, qa in drawn if qa.kind == "count")
    total = sum(counts.values())
    assert set(counts) == set(COUNTS[:3])
    assert all(0.28 < v / total < 0.39 for v in counts.values()), counts


def test_apportion_is_exact_and_proportional():
    counts = apportion(2500, {"a": 0.44, "b": 0.51, "c": 0.05})
    assert sum(counts.values()) == 2500 and counts["c"] == 125
    assert sum(apportion(7, {"a": 1, "b": 1, "c": 1}).values()) == 7


def test_text_facts_are_true():
    rng = Random(7)
    for _ in range(300):
        qa, fact = knowledge.text_fact(rng)
        assert qa.answer in qa.domain and qa.answer in fact
        if qa.kind == "arithmetic":
            a, op, b = re.search(r"(\d+) (plus|minus) (\d+)", qa.question).groups()
            assert int(qa.answer) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
