"""The verdict builder on synthetic tables whose answers are known, and on tables too small to judge."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from training.cli import main
from training.report import (
    NOT,
    PARTLY,
    REPRODUCED,
    UNDETERMINED,
    Interval,
    build_findings,
    build_report,
    per_seed_slopes,
)

FAMILY = {"prompt": "embedding composition", "prefix": "embedding composition", "lora": "layer composition",
          "serial-adapter": "layer composition", "parallel-adapter": "layer composition", "full": "baseline",
          "zero-shot": "baseline"}  # fmt: skip
PEFT = ("prompt", "prefix", "lora", "serial-adapter", "parallel-adapter")
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
BUDGETS = {"10k": 10_000, "32k": 32_000, "100k": 100_000, "320k": 320_000}


def synthetic(vqa_data, vqa_params, caption_data, caption_params, layer_bonus: float, seeds: int = 3,
              noise: float = 0.3) -> pd.DataFrame:  # fmt: skip
    """A sweep table: the metric is a known function of log10(fraction) and log10(params), plus seeded noise."""
    rng = np.random.default_rng(0)
    rows = []

    def add(task, method, budget, params, fraction, seed, value):
        metric = "accuracy" if task == "vqa" else "CIDEr-D"
        rows.append({"task": task, "method": method, "family": FAMILY[method], "budget": budget,
                     "trainable_params": params, "data_fraction": fraction, "seed": seed,
                     "train_s": 20.0 if FAMILY[method] == "layer composition" else 30.0,
                     metric: value + rng.normal(0, noise)})  # fmt: skip

    for seed in range(seeds):
        for method in PEFT:
            bonus = layer_bonus if FAMILY[method] == "layer composition" else 0.0
            for fraction in FRACTIONS:
                add("vqa", method, "32k", 32_000, fraction, seed, 40 + bonus + vqa_data(math.log10(fraction)))
                add("caption", method, "32k", 32_000, fraction, seed, 60 + bonus + caption_data(math.log10(fraction)))
            for budget, params in BUDGETS.items():
                x = math.log10(params / 32_000)
                add("vqa", method, budget, params, 1.0, seed, 40 + bonus + vqa_params(x))
                add("caption", method, budget, params, 1.0, seed, 60 + bonus + caption_params(x))
        for fraction in FRACTIONS:
            add("vqa", "full", None, 3_000_000, fraction, seed, 45 + vqa_data(math.log10(fraction)))
        for task in ("vqa", "caption"):
            add(task, "zero-shot", None, 0, None, seed, 5.0)
    return pd.DataFrame(rows)


def verdicts(frame: pd.DataFrame) -> list[str]:
    return [finding.verdict for finding in build_findings(frame)]


def rising(slope):
    return lambda x: slope * x


def flat(x):
    return 0.0


def peak(x):  # best at 32k (x = 0), worse on both sides
    return -12 * x * x


def test_the_papers_picture_is_reproduced_on_every_finding():
    frame = synthetic(rising(8), rising(6), flat, peak, layer_bonus=4)
    assert verdicts(frame) == [REPRODUCED, REPRODUCED, REPRODUCED]


def test_the_opposite_picture_is_not_reproduced():
    frame = synthetic(flat, rising(-6), rising(10), rising(8), layer_bonus=-4)
    assert verdicts(frame) == [NOT, NOT, NOT]


def test_one_axis_out_of_two_is_partly():
    frame = synthetic(rising(8), flat, flat, rising(8), layer_bonus=4)
    vqa, caption, _ = build_findings(frame)
    assert (vqa.verdict, caption.verdict) == (PARTLY, PARTLY)
    assert "5 of 5 methods judged" in caption.summary and "interior for 0 of 5" in caption.summary


def test_a_layer_lead_on_one_task_only_is_partly():
    frame = synthetic(rising(8), rising(6), flat, peak, layer_bonus=0)
    frame.loc[(frame.task == "vqa") & (frame.family == "layer composition"), "accuracy"] += 5
    assert build_findings(frame)[2].verdict == PARTLY


def test_one_seed_is_too_few_to_judge_and_says_so(tmp_path):
    path = tmp_path / "runs.csv"
    synthetic(rising(8), rising(6), flat, peak, layer_bonus=4, seeds=1).to_csv(path, index=False)
    report = build_report(path, figures=False).read_text()
    assert report.count(f"**Answer: {UNDETERMINED}.**") == 3
    assert "Too few seeds to judge (1 per point" in report


@pytest.mark.parametrize("content", [None, "", "task,method,seed\n"])
def test_a_missing_or_empty_table_gives_a_report_that_says_how_to_get_results(tmp_path, content):
    path = tmp_path / "runs.csv"
    if content is not None:
        path.write_text(content)
    assert main(["report", "--results", str(path), "--no-figures"]) == 0
    assert "No results yet" in (tmp_path / "report.md").read_text()


def test_a_table_of_one_task_judges_what_it_can(tmp_path):
    frame = synthetic(rising(8), rising(6), flat, peak, layer_bonus=4)
    vqa_only = frame[frame.task == "vqa"].drop(columns=["CIDEr-D"])
    vqa, caption, families = build_findings(vqa_only)
    assert (vqa.verdict, caption.verdict, families.verdict) == (REPRODUCED, UNDETERMINED, PARTLY)


def test_t_interval_and_per_seed_slope_match_hand_computed_values():
    interval = Interval.of([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.high - interval.mean == pytest.approx(4.303 / math.sqrt(3))
    assert not Interval.of([5.0]).known and Interval.of([]) is None
    frame = pd.DataFrame({"seed": [0] * 3 + [1] * 3, "x": [0.01, 0.1, 1.0] * 2,
                          "y": [2 + 3 * math.log10(x) for x in (0.01, 0.1, 1.0)] * 2})  # fmt: skip
    assert per_seed_slopes(frame, "x", "y") == pytest.approx([3.0, 3.0])


@pytest.mark.slow
def test_the_report_draws_its_figures_and_links_them(tmp_path):
    pytest.importorskip("kaleido")
    if not (shutil.which("chromium") or shutil.which("google-chrome")):
        pytest.skip("kaleido needs a Chrome or Chromium to render")
    path = tmp_path / "runs.csv"
    synthetic(rising(8), rising(6), flat, peak, layer_bonus=4).to_csv(path, index=False)
    report = build_report(path).read_text()
    for name in ("data_size", "param_size", "families"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 10_000
        assert f"(figures/{name}.png)" in report
    assert "could not be rendered" not in report


def test_a_gap_larger_than_the_embedding_score_is_explained_with_their_means():
    frame = synthetic(rising(8), rising(6), flat, peak, layer_bonus=4)
    embedding = (frame.task == "vqa") & (frame.family == "embedding composition")
    frame.loc[embedding, "accuracy"] = 1.0  # prompt and prefix barely move from zero-shot
    families = build_findings(frame)[2]
    assert families.verdict == REPRODUCED
    assert "On vqa the gap is larger than the embedding methods' own score" in families.discussion
    assert "prefix 1, prompt 1; zero-shot:" in families.discussion
    assert "On caption" not in families.discussion
