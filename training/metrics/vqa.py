"""VQAv2 accuracy exactly as the official evaluation script (`vqaEval.py`, GT-Vision-Lab/VQA) computes it.

Per question, as the current official script does it, quirk included:
- the prediction and every human answer lose newlines, tabs and outer spaces;
- only when the human answers are NOT all identical are the prediction and the human answers normalized
  (punctuation rules, lower case, number words to digits, articles dropped, contractions restored). With ten
  identical answers the comparison is exact: "Red" against ten "red" scores 0, "two" against ten "two" 1;
- accuracy is min(1, matches / 3) over the other nine answers, averaged over the ten leave-one-out subsets.

An older revision of the script (still copied by some toolkits) always normalized the prediction and ran only
the punctuation step on the human answers; published VQAv2 numbers come from the current one, matched here.
Outside the official script's domain: a question with a single human answer (user datasets) is scored by
exact match after full normalization of both, since leave-one-out would leave nothing to match.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

# Deleted, or turned into a space, by `_strip_punctuation`. Periods and apostrophes are not in the list.
_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
# The official pattern `(?!<=\d)(\.)(?!\d)` has a mistyped look-behind that never applies, so in effect
# every period not followed by a digit goes: "dog." -> "dog", "3.5" stays, "5." -> "5".
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# The official contraction map, entry for entry (including its odd ones: capitalised keys that can never
# match lower-cased words, and "somebody'd" mapped to "somebodyd").
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    # A mark next to a space is deleted ("yes, it is" -> "yes it is"); one inside a word becomes a space
    # ("black/white" -> "black white"); a digit-comma-digit anywhere ("1,000") deletes every mark.
    # The tests look at the original text, not the partly cleaned one, as the official script does.
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    cleaned = text
    for mark in _PUNCTUATION:
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            cleaned = cleaned.replace(mark, "")
        else:
            cleaned = cleaned.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", cleaned)


def _normalize_words(text: str) -> str:
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def _clean(text: str) -> str:
    """What the official script does to every answer, always: newlines and tabs to spaces, outer spaces off."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The official VQA answer normalization: punctuation, lower case, number words, articles, contractions."""
    return _normalize_words(_strip_punctuation(_clean(text)))


def vqa_accuracy_single(prediction: str, answers: list[str]) -> float:
    """VQA accuracy (0..1) of one prediction against the human answers, as the official script scores it.

    With 10 answers of which k match: min(1, matches / 3) averaged over the ten leave-one-out subsets of
    nine, i.e. 0, 0.3, 0.6, 0.9, 1.0 for k = 0, 1, 2, 3, >= 4. Answers are normalized only when the human
    answers differ (the official quirk, see the module docstring). A single answer is scored by exact match
    after normalization.
    """
    if not answers:
        raise ValueError("a question needs at least one human answer to be scored")
    humans = [_clean(answer) for answer in answers]
    predicted = _clean(prediction)
    if len(set(humans)) > 1 or len(humans) == 1:
        humans = [normalize_answer(answer) for answer in humans]
        predicted = normalize_answer(predicted)
    matches = [human == predicted for human in humans]
    if len(matches) == 1:
        return float(matches[0])
    total = sum(matches)
    return sum(min(1.0, (total - left_out) / 3) for left_out in matches) / len(matches)


def vqa_scores(
    predictions: list[str], answers: list[list[str]], question_types: list[str] | None = None
) -> dict[str, Any]:
    """VQA accuracy of a set of predictions, all in percent (0..100).

    Returns `accuracy` (mean over questions), `per_sample` (one value per question, in input order) and,
    when `question_types` is given, `per_type` (mean over the questions of each type).
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if question_types is not None and len(question_types) != len(predictions):
        raise ValueError(f"{len(question_types)} question types for {len(predictions)} questions")
    if not predictions:
        raise ValueError("no questions to score")
    per_sample = [100.0 * vqa_accuracy_single(p, a) for p, a in zip(predictions, answers, strict=True)]
    scores: dict[str, Any] = {"accuracy": sum(per_sample) / len(per_sample), "per_sample": per_sample}
    if question_types is not None:
        by_type: dict[str, list[float]] = defaultdict(list)
        for question_type, accuracy in zip(question_types, per_sample, strict=True):
            by_type[question_type].append(accuracy)
        scores["per_type"] = {name: sum(values) / len(values) for name, values in by_type.items()}
    return scores
