"""Pure scorers for the LLaVA-1.5 benchmarks, matching the official evaluators' rules.

Each function scores or parses one thing; aggregation over a benchmark lives in the benchmark entries.
Behaviour follows the reference scripts (see shared/reference/llava15.md §5.3), including their quirks,
so that numbers stay comparable with the paper; quirks we keep on purpose are commented.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------- VQA answer normalisation (EvalAI)

# The VQA evaluation's contraction table (data, as published with the VQA challenge evaluation).
# Keys with capitals ("Im", "Ive", "Id've") can never match after lower-casing; kept for fidelity.
# fmt: off
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")
# fmt: on
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
# A period not followed by a digit (the official pattern's intended look-behind is a no-op, so "2." and
# "a.b" lose their period while "2.5" and ".5" keep it).
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (== 32) where `count` goes, so only the first 32 periods go.
_PERIOD_STRIP_COUNT = 32


def _punctuation(text: str) -> str:
    # Decisions look at the input text, not the progressively edited one, as the official code does.
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_DECIMAL.sub("", out, count=_PERIOD_STRIP_COUNT)


def _digits_and_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """EvalAI answer processing: what VQAv2/VizWiz uploads and TextVQA scoring compare.

    Lower-case; drop "," and "?"; "'s" -> " 's"; newlines/tabs -> spaces; punctuation removed (next to a
    space, or anywhere when the text has digit,digit) or else replaced by a space; periods stripped unless
    before a digit; number words none/zero..ten -> digits; articles dropped; contractions restored.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text))


# ---------------------------------------------------------------- VQA soft accuracy


def vqa_answer_scores(gt_answers: Sequence[str]) -> dict[str, float]:
    """Soft score of each distinct normalised human answer.

    For each distinct answer: the mean over the leave-one-out subsets (drop one of the N annotators) of
    min(1, matches among the remaining N-1 / 3). With 10 annotators an answer given by >= 4 scores 1.
    """
    if not gt_answers:
        raise ValueError("no ground-truth answers to score against")
    answers = [normalize_vqa_answer(a) for a in gt_answers]
    scores: dict[str, float] = {}
    for candidate in set(answers):
        total = sum(1 for a in answers if a == candidate)
        # Leaving out an annotator who gave `candidate` leaves total-1 matches, any other leaves total.
        per_subset = [min(1.0, (total - (a == candidate)) / 3.0) for a in answers]
        scores[candidate] = sum(per_subset) / len(per_subset)
    return scores


def vqa_soft_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Standard VQA accuracy of one prediction (normalised) against N human answers."""
    return vqa_answer_scores(gt_answers).get(normalize_vqa_answer(prediction), 0.0)


# ---------------------------------------------------------------- GQA


def gqa_normalize(text: str) -> str:
    """convert_gqa_for_eval.py: prediction = text.rstrip('.').lower()."""
    return text.rstrip(".").lower()


def gqa_correct(prediction: str, answer: str) -> bool:
    """The official GQA eval compares the converted prediction with the answer exactly."""
    return gqa_normalize(prediction) == answer


# ---------------------------------------------------------------- yes/no benchmarks


def parse_pope_answer(text: str) -> str:
    """eval_pope.py: keep text before the first '.', drop commas, split on spaces; 'no' if any word is
    exactly 'No', 'not' or 'no', otherwise 'yes' (so an empty or unrelated answer counts as yes)."""
    first = text.split(".")[0]
    words = first.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def binary_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE metrics with 'yes' as the positive class (labels other than 'no' count as yes).

    Precision/recall/F1 are 0 when undefined (no positive predictions or labels) instead of dividing by 0.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no items to score")
    pred = [p != "no" for p in predictions]
    gold = [lab != "no" for lab in labels]
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
    tn = sum(not p and not g for p, g in zip(pred, gold, strict=True))
    fn = sum(not p and g for p, g in zip(pred, gold, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(pred) / len(pred),
    }


def parse_mme_answer(text: str) -> str:
    """MME calculation.py: 'yes'/'no' if the lower-cased answer is exactly that, else 'yes' or 'no' if
    the first 4 characters contain it (yes checked first), else 'other' (always wrong)."""
    ans = text.lower()
    if ans in ("yes", "no"):
        return ans
    head = ans[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_subtask(pairs: Sequence[tuple[tuple[str, str], tuple[str, str]]]) -> dict[str, float]:
    """One MME subtask from its image pairs: each pair is two (ground truth, parsed prediction).

    acc = fraction of questions right; acc+ = fraction of images with both right; score = acc·100 + acc+·100.
    """
    if not pairs:
        raise ValueError("no image pairs to score")
    right = [[g.lower() == p for g, p in pair] for pair in pairs]
    n_questions = 2 * len(pairs)
    acc = sum(sum(r) for r in right) / n_questions
    acc_plus = sum(all(r) for r in right) / len(pairs)
    other = sum(p == "other" for pair in pairs for _, p in pair)
    return {
        "acc": acc,
        "acc_plus": acc_plus,
        # calculation.py's own arithmetic (acc*100 + acc_plus*100): 100*(acc+acc_plus) differs in the last
        # bit for some counts (99.99999999999999 vs 100.0 for acc 4/6, acc+ 1/3), and so do the totals.
        "score": acc * 100 + acc_plus * 100,
        "other_answers": other,
        "images": len(pairs),
    }


MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


# ---------------------------------------------------------------- multiple choice

SQA_OPTIONS = ("A", "B", "C", "D", "E")
# The official pattern: '.' is any character, so "The answer is C" at the very end does not match.
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_sqa_letter(text: str, options: Sequence[str] = SQA_OPTIONS) -> str | None:
    """eval_science_qa.py: the text is a letter; or starts with "X. "; or "The answer is X." occurs
    exactly once. Anything else is FAILED (None), which scores as wrong."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _SQA_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def sqa_choice_index(letter: str | None, n_choices: int, options: Sequence[str] = SQA_OPTIONS) -> int:
    """Index of the chosen option, or -1 for FAILED / a letter beyond the question's choices."""
    valid = list(options[:n_choices])
    return valid.index(letter) if letter in valid else -1


_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:[.):]|\s*$)")
_ANSWER_IS_LETTER = re.compile(r"(?i:answer is):?\s*\(?([A-Z])\b")


def parse_option_letter(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a free-form MMBench answer picks, or None when it picks none.

    In order: a bare letter ("B", "B.", "(B)"); a leading letter with ".", ")" or ":" ("B. blue");
    exactly one distinct "answer is X"; an answer equal to one option's text (case-insensitive, trailing
    period ignored). Letters must be among `options` (letter -> option text).
    """
    s = text.strip()
    m = _LEADING_LETTER.match(s)
    if m and m.group(1) in options:
        return m.group(1)
    said = set(_ANSWER_IS_LETTER.findall(s))
    if len(said) == 1 and (letter := said.pop()) in options:
        return letter
    plain = s.rstrip(".").strip().lower()
    matches = [k for k, v in options.items() if v.strip().rstrip(".").lower() == plain]
    return matches[0] if len(matches) == 1 else None


def circular_correct(copies: Iterable[bool]) -> bool:
    """MMBench CircularEval: a question counts only if every circular copy of it was answered right."""
    flags = list(copies)
    if not flags:
        raise ValueError("a circular group needs at least one copy")
    return all(flags)


def seed_correct(text: str, answer: str) -> bool:
    """convert_seed_for_submission.py: exact string equality, no parsing."""
    return text == answer


# ---------------------------------------------------------------- GPT-judge replies


def parse_review_scores(review: str) -> tuple[float, float] | None:
    """LLaVA-Bench review: two scores on the first line, separated by a space or comma.

    None where the reference returns [-1, -1] (a parse failure, to be counted, never averaged).
    """
    first = review.split("\n")[0].replace(",", " ")
    parts = first.split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def parse_mmvet_score(content: str) -> float | None:
    """MM-Vet grader reply: the first space-separated token as a float in [0, 1], else None."""
    token = content.split(" ")[0].strip()
    try:
        score = float(token)
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def relative_scores(pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    """summarize_gpt_review.py: the mean (reference, candidate) scores, each rounded to 3 decimals; then
    relative = round(candidate / reference * 100, 1) and the 1-10 means on a 0-100 scale (x10, 1 decimal).

    The rounding order is the reference's: rounding only the final ratio gives e.g. 55.6 where it prints
    55.5 (means 6 and 10/3).
    """
    if not pairs:
        raise ValueError("no judged pairs")
    # numpy's mean over the pairs, as the reference computes it, so even the last bit agrees.
    ref, cand = (round(x, 3) for x in np.asarray(pairs, dtype=np.float64).mean(0).tolist())
    return {
        "relative": round(cand / ref * 100, 1) if ref else 0.0,
        "reference": round(ref * 10, 1),
        "candidate": round(cand * 10, 1),
        "n": len(pairs),
    }


def mean(values: Iterable[float]) -> float:
    vals = list(values)
    if not vals:
        raise ValueError("mean of nothing")
    return sum(vals) / len(vals)
