"""'Which method for me?' against the grid table (results/runs.csv), computed here from the rows themselves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.errors import UserError
from training.paths import REPO_ROOT
from training.study.choice import which_method

T_975_2DF = 4.303  # Student's t, 97.5 %, two degrees of freedom: three seeds
GRID = pd.read_csv(REPO_ROOT / "results" / "runs.csv")


def interval(values: list[float]) -> tuple[float, float, float]:
    values = np.asarray(values)
    half = T_975_2DF * values.std(ddof=1) / math.sqrt(len(values))
    return values.mean(), values.mean() - half, values.mean() + half


def seed_scores(task: str, method: str, fraction: float, budget: float | None) -> dict[int, float]:
    rows = GRID[(GRID.task == task) & (GRID.method == method) & (GRID.data_fraction == fraction)]
    rows = rows[rows.budget_params == budget] if budget is not None else rows
    metric = "accuracy" if task == "vqa" else "CIDEr-D"
    return dict(zip(rows.seed, rows[metric], strict=True))


def expected_between(task: str, examples: int, budget: float, low: float, high: float) -> dict[str, tuple]:
    """Every method on the data line (and IA3 at its fixed count) interpolated per seed in log(data share)."""
    full = GRID[(GRID.task == task) & (GRID.data_fraction == 1.0)].train_examples.iloc[0]
    weight = (math.log(examples / full) - math.log(low)) / (math.log(high) - math.log(low))
    out = {}
    for method in sorted(set(GRID.method) - {"zero-shot", "full"}):  # the grid's trained methods under 18k
        held = None if method == "ia3" else budget
        at_low, at_high = seed_scores(task, method, low, held), seed_scores(task, method, high, held)
        out[method] = interval([(1 - weight) * at_low[s] + weight * at_high[s] for s in sorted(at_low)])
    return out


def test_a_vqa_point_between_grid_data_sizes_is_interpolated_ranked_and_tied_by_the_rule() -> None:
    choice = which_method(GRID, "vqa", "300", "18k")  # 300 questions: between the 209 (5 %) and 418 (10 %) runs
    expected = expected_between("vqa", 300, 18000, 0.05, 0.10)
    trained = [e for e in choice.ranking if e.method != "zero-shot"]

    assert choice.status == "interpolated"
    assert [e.method for e in trained] == sorted(expected, key=lambda m: -expected[m][0])
    for estimate in trained:
        mean, low, high = expected[estimate.method]
        assert (estimate.mean, estimate.low, estimate.high) == pytest.approx((mean, low, high), abs=1e-9)
        assert "between 209 examples (5 %) and 418 examples (10 %)" in estimate.how
        assert len(estimate.runs) == 6  # three seeds at each neighbour
    best_mean = max(m for m, _, _ in expected.values())
    tied = {m for m, (mean, _, high) in expected.items() if mean < best_mean and high >= best_mean}
    assert {e.method for e in choice.ranking if e.tied} == tied
    assert tied and len(tied) < len(expected) - 1  # the rule separates: some tie, some do not
    assert choice.ranking[0].best and choice.train == {
        "task": "vqa",
        "method": trained[0].method,
        "budget": "18k",
        "data_fraction": round(300 / 4176, 4),
    }
    assert choice.sentence.startswith("For 300 visual question answering examples (7.2 % of the data) and 18k")
    assert f"take {trained[0].label}" in choice.sentence and "interpolated between 209" in choice.sentence
    assert {r["method"] for r in choice.not_ranked} == {"full"}  # 2.98M parameters do not fit 18k


def test_the_budget_line_interpolates_in_log_parameters_at_all_the_data() -> None:
    choice = which_method(GRID, "vqa", "100%", "30k")
    weight = (math.log(30000) - math.log(18000)) / (math.log(57000) - math.log(18000))
    low, high = seed_scores("vqa", "lora", 1.0, 18000), seed_scores("vqa", "lora", 1.0, 57000)
    mean, _, _ = interval([(1 - weight) * low[s] + weight * high[s] for s in low])
    lora = next(e for e in choice.ranking if e.method == "lora")
    assert lora.mean == pytest.approx(mean) and lora.trainable_params == [20480, 56320]
    assert "between 18k parameters and 57k parameters" in lora.how
    prompt = next(r for r in choice.not_ranked if r["method"] == "prompt")
    assert "largest budget for it is 18k" in prompt["reason"]  # not extrapolated past its last grid budget


def test_a_grid_point_is_read_as_measured_from_its_three_runs() -> None:
    choice = which_method(GRID, "caption", "500", "18k")  # the 25 % runs, 500 caption images
    lora = next(e for e in choice.ranking if e.method == "lora")
    mean, low, high = interval(list(seed_scores("caption", "lora", 0.25, 18000).values()))
    assert choice.status == "on the grid" and not lora.interpolated
    assert (lora.mean, lora.low, lora.high) == pytest.approx((mean, low, high))
    assert lora.runs == [f"caption__lora__b18k__f0.25__s{s}" for s in range(3)]


def test_outside_the_grid_says_so_instead_of_guessing() -> None:
    choice = which_method(GRID, "vqa", "10000", "18k")  # more questions than the whole training set
    assert choice.status == "outside the grid" and choice.train is None
    assert [e.method for e in choice.ranking] == ["zero-shot"]
    assert choice.sentence.startswith("Outside the grid: it ran no method at 10,000 visual question answering")
    assert "at most the whole training set, 4,176 examples" in choice.sentence


def test_off_both_lines_ranks_only_what_the_grid_ran_there() -> None:
    choice = which_method(GRID, "vqa", "10%", "57k")  # the grid varies one axis at a time: no budgeted run here
    assert [e.method for e in choice.ranking] == ["ia3", "zero-shot"]
    assert "no run with 57k parameters on 10 % of the data" in choice.sentence


def test_bad_input_says_what_to_send() -> None:
    with pytest.raises(UserError, match="number of training examples"):
        which_method(GRID, "vqa", "lots", "18k")
    with pytest.raises(UserError, match="Budget"):
        which_method(GRID, "vqa", "300", "many")
    with pytest.raises(UserError, match="not one of"):
        which_method(GRID, "ocr", "300", "18k")


def test_the_runs_an_answer_rests_on_are_named_in_words_and_their_ids_are_in_the_notes() -> None:
    from app.tabs.choose import notes, ranking_table  # the page's table, from the same answer

    choice = which_method(GRID, "vqa", "300", "18k")  # LoRA rests on its 5 % and 10 % runs, three seeds each
    table = ranking_table(choice).set_index("method")
    assert table.loc["LoRA", "runs it rests on"] == (
        "6 runs: LoRA 18k on 5 % of scene-vqa, seeds 0, 1, 2; LoRA 18k on 10 % of scene-vqa, seeds 0, 1, 2"
    )
    assert table.loc["(IA)³", "runs it rests on"].startswith("6 runs: (IA)³ on 5 % of scene-vqa, seeds 0, 1, 2")
    assert not table["runs it rests on"].str.contains("__").any()  # no grid-point id in the table
    lora = next(e for e in choice.ranking if e.method == "lora")
    assert f"- LoRA: {', '.join(lora.runs)}" in notes(choice)
    assert lora.runs[0] == "vqa__lora__b18k__f0.05__s0"


def test_the_answer_says_the_scale_of_its_score() -> None:
    from types import SimpleNamespace

    from app.tabs.choose import answer

    services = SimpleNamespace(which_method=lambda task, data, params: which_method(GRID, task, data, params))
    said = answer(services, "caption", "500", "18k")["sentence"]
    assert said.startswith("**On the grid.** For 500 image captioning examples")
    assert said.endswith(
        "*CIDEr-D: how closely a caption matches the human ones, rare shared word groups counting "
        "most: 0 (nothing in common) to 10 (word for word as every human caption); higher is better.*"
    )
