"""Hand-worked cases for the pure scorers, following the official evaluators' rules."""

import pytest

from components.evaluate import metrics as m
from components.evaluate.metrics import normalize_vqa_answer as norm


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("ten apples", "10 apples"),
        ("The dog.", "dog"),  # article dropped, trailing period stripped
        ("a red car", "red car"),
        ("An apple", "apple"),
        ("dont", "don't"),  # contraction table
        ("its wont work", "its won't work"),
        ("Im", "im"),  # capitalised table keys can never match after lower-casing
        ("1,000", "1000"),  # commas are dropped before anything else
        ("2.5", "2.5"),  # decimal point kept
        ("2.", "2"),
        ("3.14.", "3.14"),
        (".5", ".5"),
        ("e.g. this", "eg this"),
        ("Unanswerable", "unanswerable"),
        ("yes!", "yes"),  # "!" not next to a space: becomes a space
        ("left-hand", "left hand"),
        ("left - hand", "left hand"),  # next to a space: removed outright
        ("it's red", "it 's red"),
        ("Yes\n", "yes"),
        ("what\tcolor?", "what color"),
        ("a/b", "b"),  # "/" -> space, then "a" is an article
        ("", ""),
    ],
)
def test_normalize_vqa_answer(raw: str, expected: str) -> None:
    assert norm(raw) == expected


def test_digit_comma_digit_strips_all_punctuation() -> None:
    # In the official processor the digit,digit test makes every punctuation mark vanish instead of
    # becoming a space (only reachable inside the punctuation step, since commas go first).
    assert m._punctuation("5,000-ish") == "5000ish"
    assert m._punctuation("x-ish") == "x ish"


def test_period_strip_stops_after_32() -> None:
    # The official code passes re.UNICODE (32) as the count.
    text = "a." * 40
    assert m._punctuation(text).count(".") == 8


@pytest.mark.parametrize(
    ("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_soft_accuracy_by_number_of_matching_annotators(matches: int, expected: float) -> None:
    gts = ["cat"] * matches + ["dog"] * (10 - matches)
    assert m.vqa_soft_accuracy("cat", gts) == pytest.approx(expected)


def test_vqa_soft_accuracy_normalises_both_sides() -> None:
    gts = ["two"] * 3 + ["3"] * 7
    assert m.vqa_soft_accuracy("Two.", gts) == pytest.approx(0.9)
    assert m.vqa_soft_accuracy("three", gts) == pytest.approx(1.0)
    assert m.vqa_soft_accuracy("1", gts) == 0.0
    with pytest.raises(ValueError):
        m.vqa_soft_accuracy("x", [])


def test_gqa_exact_match() -> None:
    assert m.gqa_correct("Yes.", "yes")
    assert m.gqa_correct("Left...", "left")
    assert not m.gqa_correct("The cat", "cat")  # no article stripping in GQA
    assert not m.gqa_correct("yes ", "yes")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("No, there is not.", "no"),
        ("Yes. But there is no cat", "yes"),  # only the first sentence counts
        ("There is no dog", "no"),
        ("not", "no"),
        ("Nope", "yes"),  # no exact word match
        ("NO", "yes"),  # only "No", "no" and "not" count
        ("", "yes"),
    ],
)
def test_parse_pope_answer(text: str, parsed: str) -> None:
    assert m.parse_pope_answer(text) == parsed


def test_binary_metrics_hand_worked() -> None:
    out = m.binary_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert (out["TP"], out["FP"], out["TN"], out["FN"]) == (2, 1, 1, 1)
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["yes_ratio"] == pytest.approx(0.6)


def test_binary_metrics_no_positive_predictions_is_zero_not_a_crash() -> None:
    out = m.binary_metrics(["no", "no"], ["yes", "no"])
    assert out["precision"] == 0.0 and out["f1"] == 0.0


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("yes, there is", "yes"),
        ("Not really", "no"),
        ("none", "no"),
        ("I don't know", "other"),
        ("There is no cat", "other"),
        ("", "other"),
    ],
)
def test_parse_mme_answer(text: str, parsed: str) -> None:
    assert m.parse_mme_answer(text) == parsed


def test_mme_subtask_acc_and_acc_plus() -> None:
    pairs = [
        (("Yes", "yes"), ("No", "no")),  # both right
        (("Yes", "yes"), ("No", "yes")),  # one right
        (("Yes", "other"), ("No", "no")),  # one right, one "other"
    ]
    out = m.mme_subtask(pairs)
    assert out["acc"] == 4 / 6
    assert out["acc_plus"] == 1 / 3
    assert out["other_answers"] == 1
    # calculation.py's arithmetic to the last bit: acc*100 + acc_plus*100, which here is not 100(acc+acc+).
    assert out["score"] == 4 / 6 * 100 + 1 / 3 * 100 == 99.99999999999999
    assert out["score"] != 100 * (4 / 6 + 1 / 3)


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("B. blue", "B"),
        ("The answer is C.", "C"),
        ("The answer is C", None),  # the official regex needs a character after the letter
        ("The answer is A. The answer is B.", None),  # must match exactly once
        ("b", None),
        ("B.blue", None),
        ("(B)", None),
    ],
)
def test_parse_sqa_letter(text: str, letter: str | None) -> None:
    assert m.parse_sqa_letter(text) == letter


def test_sqa_choice_index() -> None:
    assert m.sqa_choice_index("B", 3) == 1
    assert m.sqa_choice_index("E", 3) == -1  # beyond this question's choices
    assert m.sqa_choice_index(None, 3) == -1


OPTIONS = {"A": "red", "B": "blue", "C": "green"}


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("B. blue", "B"),
        ("(C) green", "C"),
        ("C) green", "C"),
        ("The answer is C.", "C"),
        ("Answer is: (A)", "A"),
        ("blue", "B"),
        ("Blue.", "B"),
        ("A cat sits there", None),  # a leading article is not a choice
        ("D", None),  # not an option of this question
        ("the answer is a cat", None),
        ("I cannot tell", None),
    ],
)
def test_parse_option_letter(text: str, letter: str | None) -> None:
    assert m.parse_option_letter(text, OPTIONS) == letter


def test_circular_correct() -> None:
    assert m.circular_correct([True, True, True])
    assert not m.circular_correct([True, False, True])


def test_seed_exact_match() -> None:
    assert m.seed_correct("A", "A")
    assert not m.seed_correct("A.", "A")
    assert not m.seed_correct("A ", "A")


@pytest.mark.parametrize(
    ("review", "scores"),
    [
        ("8 6\nAssistant 1 is better", (8.0, 6.0)),
        ("7,9\n", (7.0, 9.0)),
        ("7.5 8", (7.5, 8.0)),
        ("7, 9", None),  # the reference splits on single spaces: comma + space leaves an empty field
        ("Scores: 8 6", None),
        ("8\n6", None),
        ("", None),
        ("eight six", None),
    ],
)
def test_parse_review_scores(review: str, scores: tuple[float, float] | None) -> None:
    assert m.parse_review_scores(review) == scores


@pytest.mark.parametrize(
    ("content", "score"),
    [("0.7", 0.7), ("1.0 ", 1.0), ("0.0", 0.0), ("1.5", None), ("correct", None), ("", None)],
)
def test_parse_mmvet_score(content: str, score: float | None) -> None:
    assert m.parse_mmvet_score(content) == score


def test_relative_scores() -> None:
    out = m.relative_scores([(8.0, 6.0), (10.0, 9.0)])
    assert out == {"relative": 83.3, "reference": 90.0, "candidate": 75.0, "n": 2}


def test_relative_scores_round_the_means_before_the_ratio() -> None:
    # Means 6 and 10/3: summarize_gpt_review.py rounds them to 6.0 and 3.333 first, so it prints 55.5;
    # the unrounded ratio (55.555...) would round to 55.6.
    out = m.relative_scores([(6.0, 3.0), (6.0, 3.0), (6.0, 4.0)])
    assert out["relative"] == 55.5 and round(100 * (10 / 3) / 6, 1) == 55.6
    assert out["reference"] == 60.0 and out["candidate"] == 33.3
