"""Caption metrics (pycocoevalcap scorers behind our tokenizer and shared METEOR) and VQA accuracy."""

from __future__ import annotations

import math
import os
import subprocess
import tempfile

import pytest

from training.errors import UserError
from training.metrics import caption
from training.metrics.caption import (
    METRICS,
    PER_SAMPLE_METRICS,
    caption_scores,
    caption_scores_per_sample,
    ptb_tokenize,
    single_caption_scores,
)
from training.metrics.vqa import normalize_answer, vqa_accuracy_single, vqa_scores

needs_java = pytest.mark.skipif(not caption.java_available(), reason="caption metrics need Java")

# Three images whose captions share only function words.
SCENES = {
    "1": "A red circle above a blue square.",
    "2": "Two green triangles on the left.",
    "3": "A small yellow star in the corner.",
}


# ---------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("matching", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (5, 1.0), (6, 1.0), (7, 1.0), (8, 1.0), (9, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_averages_leave_one_out_subsets_of_ten(matching: int, expected: float) -> None:
    answers = ["yes"] * matching + ["no"] * (10 - matching)
    assert vqa_accuracy_single("yes", answers) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),
        ("ten", "10"),
        ("none", "0"),
        ("a dog.", "dog"),
        ("The Cat!", "cat"),
        ("grey", "grey"),
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("whats up?", "what's up"),
        ("1,000", "1000"),  # a digit-comma-digit deletes every mark
        ("$1,000.00", "$1000.00"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("5.", "5"),
        ("black/white", "black white"),  # a mark inside a word becomes a space
        ("yes, it is", "yes it is"),  # a mark next to a space is deleted
        ("left-side", "left side"),
        ("(yes)", "yes"),
        ("  One\tpizza\n", "1 pizza"),
    ],
)
def test_normalize_answer_follows_official_vqa_rules(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # Ten identical human answers: only newlines, tabs and outer spaces go, then an exact comparison.
        ("red", ["red"] * 10, 1.0),
        (" red\n", ["red"] * 10, 1.0),
        ("Red", ["red"] * 10, 0.0),
        ("red.", ["red"] * 10, 0.0),
        ("2", ["two"] * 10, 0.0),
        ("two", ["two"] * 10, 1.0),
        ("the dog", ["dog"] * 10, 0.0),
        ("2", ["Two"] * 10, 0.0),
        # Human answers that differ: prediction and answers are both normalized.
        ("Red", ["red"] * 9 + ["blue"], 1.0),
        ("a Dog", ["dog"] * 3 + ["cat"] * 7, 0.9),
        ("Two", ["two"] * 2 + ["three"] * 8, 0.6),  # number words: "two" -> "2" on both sides
        ("2", ["two"] * 5 + ["3"] * 5, 1.0),
        ("the dog", ["dog"] * 2 + ["a cat"] * 8, 0.6),  # articles dropped on both sides
        ("a cat", ["dog"] * 2 + ["the cat"] * 8, 1.0),
        ("yes.", ["yes"] * 4 + ["no"] * 6, 1.0),  # punctuation
        ("yes", ["Yes!"] * 3 + ["no"] * 7, 0.9),
        ("black/white", ["black white"] * 3 + ["gray"] * 7, 0.9),
        ("dont know", ["don't know"] * 2 + ["no"] * 8, 0.6),  # contractions restored
    ],
)
def test_vqa_accuracy_normalizes_only_when_the_human_answers_differ(prediction, answers, expected) -> None:
    """The official vqaEval.py quirk: ten identical human answers are compared without normalization."""
    assert vqa_accuracy_single(prediction, answers) == pytest.approx(expected)


def test_single_human_answer_is_scored_by_exact_match_after_normalization() -> None:
    assert vqa_accuracy_single("Red.", ["red"]) == 1.0
    assert vqa_accuracy_single("blue", ["red"]) == 0.0


def test_vqa_scores_gives_percent_overall_per_sample_and_per_type() -> None:
    scores = vqa_scores(
        predictions=["2", "3", "1", "red"],
        answers=[["two"] * 10, ["2"] * 10, ["1"] + ["2"] * 9, ["red"] * 10],
        question_types=["how many", "how many", "how many", "what color"],
    )
    # "2" against ten identical "two" scores 0 (no normalization when the human answers agree).
    assert scores["per_sample"] == pytest.approx([0.0, 0.0, 30.0, 100.0])
    assert scores["accuracy"] == pytest.approx(32.5)
    assert scores["per_type"] == pytest.approx({"how many": 10.0, "what color": 100.0})


def test_vqa_scores_without_types_has_no_per_type() -> None:
    assert vqa_scores(["yes"], [["yes"] * 10]) == {"accuracy": 100.0, "per_sample": [100.0]}


def test_vqa_scores_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        vqa_scores(["yes", "no"], [["yes"] * 10])
    with pytest.raises(ValueError, match="question types"):
        vqa_scores(["yes"], [["yes"] * 10], question_types=["a", "b"])


# ---------------------------------------------------------------- captions


@needs_java
def test_exact_matches_score_perfectly_and_reuse_one_meteor_process() -> None:
    references = {image_id: [text] for image_id, text in SCENES.items()}
    corpus, per_sample = caption_scores_per_sample(dict(SCENES), references)
    assert list(corpus) == list(METRICS)
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L"):
        assert corpus[name] == pytest.approx(1.0), name
    # One reference per image: every cosine similarity is 1, so CIDEr-D is 10 on each image.
    assert corpus["CIDEr-D"] == pytest.approx(10.0)
    for scores in per_sample.values():
        assert list(scores) == list(PER_SAMPLE_METRICS)
        assert scores == pytest.approx({"BLEU-4": 1.0, "METEOR": 1.0, "ROUGE-L": 1.0, "CIDEr-D": 10.0})

    meteor_pid = caption._meteor.meteor_p.pid
    assert caption_scores(dict(SCENES), references) == corpus
    assert caption._meteor.meteor_p.pid == meteor_pid


@needs_java
def test_cider_d_takes_document_frequencies_from_the_evaluated_set() -> None:
    references = {
        "1": [SCENES["1"], "a red circle is over a blue square"],
        "2": [SCENES["2"], "two triangles, both green, at left"],
        "3": [SCENES["3"], "a tiny yellow star sits in a corner"],
    }
    corpus, per_sample = caption_scores_per_sample(dict(SCENES), references)
    assert corpus["BLEU-4"] == pytest.approx(1.0)
    assert corpus["METEOR"] == pytest.approx(1.0)
    assert corpus["ROUGE-L"] == pytest.approx(1.0)
    # The second reference of each image matches less than the first: between 0 and 10.
    ciders = [scores["CIDEr-D"] for scores in per_sample.values()]
    assert all(0.0 < value < 10.0 for value in ciders)
    assert corpus["CIDEr-D"] == pytest.approx(sum(ciders) / 3)
    # Alone, the same exact match gets 0: every n-gram is in every (the only) image.
    alone, alone_per_sample = caption_scores_per_sample({"1": SCENES["1"]}, {"1": references["1"]})
    assert alone["CIDEr-D"] == 0.0
    assert alone_per_sample["1"]["CIDEr-D"] == 0.0


@needs_java
def test_bleu_pools_counts_over_images_with_brevity_penalty() -> None:
    corpus, per_sample = caption_scores_per_sample(
        {"a": "the cat on the mat", "b": "a red car"},
        {"a": ["the cat is sitting on the mat"], "b": ["a blue car"]},
    )
    # a: 5/5 unigrams match, 5 words against 7 -> BP exp(1 - 7/5). b: 2/3 match, no penalty.
    # Corpus: 7/8 unigrams match, 8 words against 10 -> BP exp(1 - 10/8).
    assert corpus["BLEU-1"] == pytest.approx(7 / 8 * math.exp(1 - 10 / 8))
    assert corpus["BLEU-1"] != pytest.approx((math.exp(1 - 7 / 5) + 2 / 3) / 2)
    assert per_sample["b"]["BLEU-4"] < 1e-3  # no 3-gram or 4-gram in common


@needs_java
def test_single_caption_scores_rouge_l_and_meteor_by_hand() -> None:
    scores = single_caption_scores("A dog runs on grass.", ["a dog is running on the grass"])
    assert list(scores) == ["BLEU-4", "METEOR", "ROUGE-L"]
    # LCS "a dog on grass" = 4 of 5 hypothesis words and 4 of 7 reference words; beta = 1.2.
    precision, recall, beta2 = 4 / 5, 4 / 7, 1.2**2
    assert scores["ROUGE-L"] == pytest.approx((1 + beta2) * precision * recall / (recall + beta2 * precision))

    # METEOR 1.5 (en): function words weigh 0.25, content words 0.75; alpha .85, beta .2, gamma .6.
    # "a cat" against "a cat sits": P = 1, R = 1 / 1.75, one chunk over 2 matches.
    meteor = single_caption_scores("a cat", ["a cat sits"])["METEOR"]
    recall = 1 / 1.75
    f_mean = recall / (0.85 + 0.15 * recall)
    assert meteor == pytest.approx(f_mean * (1 - 0.6 * 0.5**0.2), rel=1e-4)


@needs_java
def test_empty_prediction_scores_zero_instead_of_crashing() -> None:
    corpus, per_sample = caption_scores_per_sample(
        {"empty": "", "punctuation": "...", "partial": "a cat"},
        {"empty": ["a dog"], "punctuation": [""], "partial": ["a cat sits"]},
    )
    zero = {name: 0.0 for name in PER_SAMPLE_METRICS}
    assert per_sample["empty"] == zero
    assert per_sample["punctuation"] == zero
    assert per_sample["partial"]["ROUGE-L"] > 0.5
    assert corpus["ROUGE-L"] == pytest.approx(per_sample["partial"]["ROUGE-L"] / 3)


@needs_java
def test_tokenizer_lowercases_and_strips_punctuation_like_coco() -> None:
    texts = ["A Dog, runs... FAST!", 'It\'s a "big" (red) ball;', "", "line\rbreaks\u2028inside", "café: 3.5 - ok"]
    assert ptb_tokenize(texts) == [
        "a dog runs fast",
        "it 's a big -lrb- red -rrb- ball",  # pycocoevalcap keeps brackets too
        "",
        "line breaks inside",
        "café 3.5 ok",
    ]


@needs_java
def test_tokenizer_temp_file_goes_to_system_temp_dir_not_package(monkeypatch, tmp_path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    package_dir = caption.PTB_TOKENIZER_JAR.parent
    package_files = sorted(os.listdir(package_dir))
    inputs_seen = []
    real_run = subprocess.run

    def spy_run(command, *args, **kwargs):
        inputs_seen.append((command[-1], os.path.exists(command[-1])))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy_run)
    assert ptb_tokenize(["A red ball."]) == ["a red ball"]
    [(path, existed)] = inputs_seen
    assert existed and os.path.dirname(path) == str(scratch)
    assert os.listdir(scratch) == []  # removed afterwards
    assert sorted(os.listdir(package_dir)) == package_files


def test_missing_java_raises_user_error_with_install_hint(monkeypatch) -> None:
    monkeypatch.setattr(caption, "find_java", lambda: None)
    assert not caption.java_available()
    with pytest.raises(UserError, match="apt-get install openjdk-17-jre-headless"):
        caption_scores({"1": "a dog"}, {"1": ["a dog"]})
    with pytest.raises(UserError, match="Java"):
        ptb_tokenize(["a dog"])


@needs_java
def test_failed_meteor_process_is_closed_and_replaced(monkeypatch) -> None:
    class DeadMeteor:
        owner_pid = os.getpid()
        closed = False

        def compute_score(self, references, hypotheses):
            raise ValueError("could not convert string to float: ''")  # what a dead process gives

        def close(self) -> str:
            self.closed = True
            return "java died"

    dead = DeadMeteor()
    monkeypatch.setattr(caption, "_meteor", dead)
    with pytest.raises(RuntimeError, match="METEOR Java process failed .java died."):
        caption_scores({"1": "a dog"}, {"1": ["a dog"]})
    assert dead.closed
    assert caption._meteor is None


def test_caption_inputs_are_checked_before_scoring() -> None:
    with pytest.raises(ValueError, match="same image ids"):
        caption_scores({"1": "a dog"}, {"2": ["a dog"]})
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({"1": "a dog"}, {"1": "a dog"})
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({"1": "a dog"}, {"1": []})
