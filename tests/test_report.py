"""The verdict builder on synthetic tables and item scores whose answers are known, and on tables too small."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from training.catalog import CATALOG, METHOD_NAMES, NO_BUDGET_METHODS, PEFT_METHODS
from training.cli import main
from training.study.report import (
    BOOTSTRAP_SEED,
    FLAT_SHARE,
    NOT,
    PARTLY,
    REPRODUCED,
    RESAMPLES,
    UNDETERMINED,
    Interval,
    Part,
    Prior,
    Stats,
    Unit,
    build_findings,
    build_report,
    family_gaps,
    judged_methods,
    load_item_scores,
    seed_slopes,
)

PEFT = PEFT_METHODS[:5]  # the paper's five, which the catalog lists first
FAMILY = {method: CATALOG[method].family for method in (*PEFT, "full", "zero-shot")}
FAMILY_OF = {method: info.family for method, info in CATALOG.items()}
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
BUDGETS = {"10k": 10_000, "32k": 32_000, "100k": 100_000, "320k": 320_000}


def synthetic(
    vqa_data,
    vqa_params,
    caption_data,
    caption_params,
    layer_bonus: float,
    seeds: int = 3,
    noise: float = 0.3,
    shapes: dict | None = None,
) -> pd.DataFrame:
    """A sweep table: the metric is a known function of log10(fraction) and log10(params), plus seeded noise.

    `shapes` overrides the function for one (task, method, axis), e.g. {("vqa", "prefix", "data"): flat}."""
    rng = np.random.default_rng(0)
    shapes = shapes or {}
    default = {
        ("vqa", "data"): vqa_data,
        ("vqa", "params"): vqa_params,
        ("caption", "data"): caption_data,
        ("caption", "params"): caption_params,
    }
    rows = []

    def add(task, method, budget, params, fraction, seed, value, towers="text"):
        metric = "accuracy" if task == "vqa" else "CIDEr-D"
        rows.append(
            {
                "task": task,
                "method": method,
                "family": FAMILY[method],
                "budget": budget,
                "trainable_params": params,
                "data_fraction": fraction,
                "seed": seed,
                "towers": None if method == "zero-shot" else "both" if method == "full" else towers,
                "train_s": 20.0 if FAMILY[method] == "layer composition" else 30.0,
                "run": f"{task}__{method}__{budget}__{fraction}__{towers}__s{seed}",
                metric: value + rng.normal(0, noise),
            }
        )

    def shape(task, method, axis):
        return shapes.get((task, method, axis), default[(task, axis)])

    for seed in range(seeds):
        for method in PEFT:
            bonus = layer_bonus if FAMILY[method] == "layer composition" else 0.0
            for fraction in FRACTIONS:
                x = math.log10(fraction)
                add("vqa", method, "32k", 32_000, fraction, seed, 40 + bonus + shape("vqa", method, "data")(x))
                add("caption", method, "32k", 32_000, fraction, seed, 60 + bonus + shape("caption", method, "data")(x))
            for budget, params in BUDGETS.items():
                x = math.log10(params / 32_000)
                add("vqa", method, budget, params, 1.0, seed, 40 + bonus + shape("vqa", method, "params")(x))
                add("caption", method, budget, params, 1.0, seed, 60 + bonus + shape("caption", method, "params")(x))
        for fraction in FRACTIONS:
            add("vqa", "full", None, 3_000_000, fraction, seed, 45 + vqa_data(math.log10(fraction)))
        for task in ("vqa", "caption"):
            add(task, "zero-shot", None, 0, None, seed, 5.0)
    return pd.DataFrame(rows).drop_duplicates("run", keep="first")


def write_item_scores(
    frame: pd.DataFrame,
    path,
    items: int = 40,
    item_noise: float = 3.0,
    skip: int = 0,
    question_types: list[str] | None = None,
) -> None:
    """Per-item scores whose mean is each run's table metric: a shared item difficulty (which pairing cancels)
    plus the run's own item noise. The first `skip` runs are left out."""
    rng = np.random.default_rng(1)
    difficulty = {task: rng.normal(0, 10, items) for task in ("vqa", "caption")}
    lines = []
    for row in frame.iloc[skip:].to_dict("records"):
        metric = row["accuracy" if row["task"] == "vqa" else "CIDEr-D"]
        scores = difficulty[row["task"]] + rng.normal(0, item_noise, items)
        scores += metric - scores.mean()
        record = {"run": row["run"], "task": row["task"], "scores": scores.tolist()}
        if question_types and row["task"] == "vqa":
            record["question_types"] = question_types
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def verdicts(frame: pd.DataFrame) -> list[str]:
    return [finding.verdict for finding in build_findings(frame)]


def rising(slope):
    return lambda x: slope * x


def flat(x):
    return 0.0


def peak(x):  # best at 32k (x = 0), worse on both sides
    return -12 * x * x


def papers_picture(**kwargs) -> pd.DataFrame:
    return synthetic(rising(8), rising(6), flat, peak, layer_bonus=4, **kwargs)


def test_the_findings_judge_the_methods_of_the_sweep_s_grid_or_else_those_the_table_has():
    frame = papers_picture()
    assert judged_methods(frame[frame.method != "prefix"]) == [m for m in PEFT if m != "prefix"]
    # Every PEFT method of the grid is a unit, with runs or not (LoHa: added to paper-v2 after the rules).
    assert judged_methods(frame, ["zero-shot", "full", *PEFT, "loha"]) == [*PEFT, "loha"]


def test_the_papers_picture_is_reproduced_on_every_finding_and_without_the_smallest_fraction():
    findings = build_findings(papers_picture())
    assert [f.verdict for f in findings] == [REPRODUCED, REPRODUCED, REPRODUCED]
    assert [f.robust for f in findings] == [REPRODUCED, REPRODUCED, REPRODUCED]
    assert "12 of 12 pairs x task x towers hold. Not holding: none." in findings[2].summary


def test_the_opposite_picture_is_not_reproduced():
    frame = synthetic(flat, rising(-6), rising(10), rising(8), layer_bonus=-4)
    assert verdicts(frame) == [NOT, NOT, NOT]


def test_a_method_that_does_not_move_is_named_and_makes_finding_1_partly():
    frame = papers_picture(shapes={("vqa", "prefix", "data"): flat, ("vqa", "prompt", "params"): flat})
    vqa = build_findings(frame)[0]
    assert vqa.verdict == PARTLY
    assert "rises with data and with parameters for lora, serial-adapter, parallel-adapter." in vqa.summary
    assert "Does not rise with data: prefix; with parameters: prompt." in vqa.summary
    rows = {line.split(" | ")[0].strip("| "): line for line in vqa.table[2:]}
    assert rows["prefix"].endswith("| partly | partly |") and rows["lora"].endswith("| reproduced | reproduced |")


def test_the_view_without_the_smallest_fraction_can_flip_a_verdict():
    # Accuracy jumps from 1 % to 5 % of the data and is flat after: the slope rests on the 1 % point alone.
    def step(x):
        return -20.0 if x < -1.5 else 0.0

    vqa = build_findings(synthetic(step, rising(6), flat, peak, layer_bonus=4))[0]
    assert (vqa.verdict, vqa.robust) == (REPRODUCED, PARTLY)
    assert "(does not rise with data: prompt, prefix, lora, serial-adapter, parallel-adapter)" in vqa.summary


def test_finding_2_needs_the_test_to_separate_the_tasks():
    separated = build_findings(papers_picture())[1]
    assert separated.verdict == REPRODUCED and "the flatness part separates the tasks" in separated.summary
    # VQA shaped like captioning: the same test passes on both tasks, so it says nothing about consistency.
    same = build_findings(synthetic(flat, peak, flat, peak, layer_bonus=4))[1]
    assert same.verdict == PARTLY
    assert "The same test on VQA: flat for 5 and an interior optimum for 5 of 5 methods" in same.summary
    assert "does not separate the tasks" in same.summary and "does not tell the tasks apart" in same.discussion


def test_one_axis_out_of_two_is_partly():
    frame = synthetic(rising(8), flat, flat, rising(8), layer_bonus=4)
    vqa, caption, _ = build_findings(frame)
    assert (vqa.verdict, caption.verdict) == (PARTLY, PARTLY)
    assert "Does not rise with data: none; with parameters: prompt, prefix, lora, serial-adapter, " in vqa.summary
    assert (
        "no interior optimum for prompt, prefix, lora, serial-adapter, parallel-adapter (best budgets"
        in caption.summary
    )


def test_finding_3_is_judged_per_pair_and_names_the_pair_that_pooling_hides():
    frame = papers_picture(noise=0.0)
    lagging = (frame.task == "caption") & (frame.method == "lora")
    frame.loc[lagging, "CIDEr-D"] -= 6  # lora behind both embedding methods on captioning; the families still lead
    families = build_findings(frame)[2]
    # The pooled families lead on both tasks and 10 of 12 pairs (83 %, at least 2/3) hold: reproduced overall, with
    # the two pairs that do not hold named.
    assert families.verdict == REPRODUCED
    assert "10 of 12 units reproduced (83%; the rule needs 67%)" in families.summary
    assert (
        "Not holding: lora vs prompt (caption, towers text: not reproduced), lora vs prefix (caption, towers "
        "text: not reproduced)."
    ) in families.summary
    pooled = next(line for line in families.table if "caption | all | layer composition" in line)
    assert pooled.split(" | ")[5] == "2 [2, 2] (n=3), p=0"  # (-2 + 4 + 4) / 3: pooled, the families show a lead


def test_finding_3_is_judged_per_tower_setting():
    frame = papers_picture()
    both = frame[frame.method.isin(["lora", "prompt"]) & (frame.task == "vqa")].copy()
    both["towers"] = "both"
    both["run"] = both["run"] + "-both"
    both.loc[both.method == "lora", "accuracy"] -= 10  # on both towers LoRA falls behind prompt tuning
    _, _, families = build_findings(pd.concat([frame, both], ignore_index=True))
    # Every pair on each tower setting the task was run with is a unit: the 5 pairs never run on both towers are
    # undetermined. 12 of 18 units hold, and on VQA the families pooled over the tower settings no longer lead.
    assert families.verdict == PARTLY and "12 of 18 units reproduced" in families.summary
    assert "lora vs prefix (vqa, towers both: undetermined, no matched cells)" in families.summary
    assert "lora vs prompt (vqa, towers both: not reproduced)" in families.summary
    assert any(line.startswith("| vqa | all | lora - prompt |") for line in families.table)  # pooled view shown


def test_the_bootstrap_interval_covers_a_known_difference_that_seeds_alone_call_exact(tmp_path):
    # No seed noise: every seed has the same run means, so the t-interval has no width; the items still vary.
    frame = papers_picture(noise=0.0)
    path = tmp_path / "items.jsonl"
    write_item_scores(frame, path)
    items = load_item_scores(path)
    seeds_only = family_gaps(frame, "caption", Stats(frame, None))[2].gap
    assert (seeds_only.mean, seeds_only.low, seeds_only.high) == pytest.approx((4.0, 4.0, 4.0))
    booted = family_gaps(frame, "caption", Stats(frame, items))[2].gap
    assert booted.mean == pytest.approx(4.0)
    assert booted.low < 4.0 < booted.high and booted.high - booted.low > 0.3
    # Pairing by item cancels the shared difficulty (sd 10): the interval reflects the runs' own noise only.
    assert booted.high - booted.low < 1.0


def test_bootstrap_resamples_are_fixed_by_the_rng_seed(tmp_path):
    frame = papers_picture()
    path = tmp_path / "items.jsonl"
    write_item_scores(frame, path)
    first, second = (family_gaps(frame, "vqa", Stats(frame, load_item_scores(path)))[2].gap for _ in range(2))
    assert (first.low, first.high) == (second.low, second.high)
    assert Stats(frame, load_item_scores(path)).weights["vqa"].shape == (40, RESAMPLES)


def test_a_missing_or_incomplete_item_file_falls_back_to_seed_intervals_and_says_so(tmp_path):
    frame = papers_picture()
    frame.to_csv(tmp_path / "runs.csv", index=False)
    prior = Prior(30.0, {}, np.full(40, 30.0), "a test")
    report = build_report(tmp_path / "runs.csv", figures=False, prior=prior).read_text()
    assert "- vqa: intervals are t-intervals across seeds only (no `item_scores.jsonl`)" in report
    write_item_scores(frame, tmp_path / "item_scores.jsonl", skip=1)  # the first run (a VQA run) is missing
    report = build_report(tmp_path / "runs.csv", figures=False, prior=prior).read_text()
    vqa_runs = int((frame.task == "vqa").sum())
    assert f"- vqa: intervals are t-intervals across seeds only (1 of {vqa_runs} runs have no item scores" in report
    assert "- caption: intervals combine the bootstrap over seeds and 40 test items with the t-interval" in report


def test_the_prior_is_paired_by_item_only_when_the_item_file_lists_the_same_items(tmp_path):
    frame = papers_picture()
    write_item_scores(frame, tmp_path / "items.jsonl", question_types=["color", "count"] * 20)
    items = load_item_scores(tmp_path / "items.jsonl")
    ordered = np.linspace(0, 60, 40)  # mean 30
    same = Stats(frame, items, Prior(30.0, {}, ordered, "x", ["color", "count"] * 20))
    assert "prior" not in same.why_not
    assert same.prior_values("vqa")[1:] == pytest.approx(ordered @ same.weights["vqa"])
    shuffled = Stats(frame, items, Prior(30.0, {}, ordered, "x", ["count", "color"] * 20))
    assert "not the dataset's test split in order" in shuffled.why_not["prior"]
    assert set(shuffled.prior_values("vqa")) == {30.0}
    shorter = Stats(frame, items, Prior(30.0, {}, ordered[:30], "x"))
    assert shorter.why_not["prior"].startswith("the prior has 30 test items and the item scores 40")


def test_gains_over_zero_shot_and_the_answer_prior_are_reported(tmp_path):
    frame = papers_picture(noise=0.0)
    frame.to_csv(tmp_path / "runs.csv", index=False)
    prior = Prior(30.0, {}, np.full(40, 30.0), "a test")
    report = build_report(tmp_path / "runs.csv", figures=False, prior=prior).read_text()
    # lora at 32k and full data: 40 + 4 = 44; zero-shot 5; prior 30.
    assert (
        "| vqa | lora | 100% data, budget 32k | 44 [44, 44] (n=3) | 39 [39, 39] (n=3) | 14 [14, 14] (n=3) |" in report
    )
    assert "| caption | prompt | 100% data, budget 32k | 60 [60, 60] (n=3) | 55 [55, 55] (n=3) | - |" in report
    assert "Answer prior (VQA, majority training answer per question type, from `a test`): 30.0 %." in report


def test_the_per_question_type_table_shows_the_prior_per_type(tmp_path):
    frame = papers_picture(noise=0.0)
    vqa = frame.task == "vqa"
    frame.loc[vqa, "accuracy_color"] = frame.loc[vqa, "accuracy"] + 10
    frame.loc[vqa, "accuracy_exists"] = 0.0
    frame.to_csv(tmp_path / "runs.csv", index=False)
    prior = Prior(30.0, {"color": 21.5, "exists": 56.5}, np.full(40, 30.0), "a test")
    report = build_report(tmp_path / "runs.csv", figures=False, prior=prior).read_text()
    assert "| method | color | exists |" in report
    assert "| answer prior | 21.5 | 56.5 |" in report
    assert "| lora (32k) | 54.0 | 0.0 |" in report and "| zero-shot | 15.0 | 0.0 |" in report


def test_how_far_each_method_gets_reads_the_protocol_columns_and_the_item_scores(tmp_path):
    frame = papers_picture(noise=0.0)
    frame["val_metric"] = frame["accuracy"].fillna(frame["CIDEr-D"]) + 1
    frame["epochs_run"] = np.where(frame.method == "prefix", 30.0, 4.0)
    frame["stop_reason"] = np.where(frame.data_fraction == 0.01, "epoch cap", "patience")
    frame["lr_source"] = "results/lr.csv"
    frame["train_loss"] = np.where(frame.method == "prefix", 2.5, 0.5)
    frame["steps_run"] = 100
    frame["best_step"] = np.where(frame.data_fraction == 0.01, 100, 50)  # the capped runs kept their last step
    frame.to_csv(tmp_path / "runs.csv", index=False)
    write_item_scores(frame, tmp_path / "item_scores.jsonl")
    prefix = frame.run[
        (frame.task == "vqa") & (frame.method == "prefix") & (frame.budget == "320k") & (frame.data_fraction == 1.0)
    ]
    lines = (tmp_path / "item_scores.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):  # prefix tuning at its best cell earns nothing on half the questions
        record = json.loads(line)
        if record["run"] in set(prefix):
            record["scores"] = [0.0] * 20 + [80.0] * 20
            lines[i] = json.dumps(record)
    (tmp_path / "item_scores.jsonl").write_text("\n".join(lines) + "\n")
    report = build_report(tmp_path / "runs.csv", figures=False, prior=Prior(30.0, {}, np.full(40, 30.0), "x"))
    text = report.read_text()
    assert (
        "| vqa | prefix | budget 320k, 100% data (validation) | 47 | 46 | 50% | 2.5 | 30 | patience 24, epoch cap 3 "
        "| 3 | results/lr.csv |" in text
    )
    assert (
        "| caption | lora | budget 32k, 1% data (validation) | 65 | 64 | 0% | 0.5 | 4 | patience 24, epoch cap 3 | 3 |"
        in text
    )  # flat in data: the fractions tie, the first shown
    # At 1 %: 5 PEFT methods x 2 tasks and full fine-tuning on VQA, 3 seeds each.
    assert "**33 of 288 trained runs** were stopped by a cap while validation was still improving" in text
    assert "it predates the validation protocol" not in text and "these verdicts are withdrawn" not in text


def test_the_decision_rules_come_first_and_state_the_constants(tmp_path):
    papers_picture().to_csv(tmp_path / "runs.csv", index=False)
    report = build_report(tmp_path / "runs.csv", figures=False, prior=Prior(30.0, {}, np.full(40, 30.0), "x"))
    text = report.read_text()
    assert text.index("## Decision rules") < text.index("## Where the numbers come from") < text.index("## Finding 1")
    assert f"({RESAMPLES} resamples, RNG seed {BOOTSTRAP_SEED})" in text
    assert f"the rise from the smallest to the largest fraction is shown to be below {FLAT_SHARE:.0%} of that" in text
    assert "| 1. VQA (a task inconsistent with pre-training) improves with more data and more trainable " in text
    assert "parameters. | **reproduced** | reproduced |" in text
    # A table without validation scores predates the protocol: the withdrawal comes before its verdicts (Explore
    # shows this text as it is).
    warning = text.index("> **Not the study's answer: these verdicts are withdrawn.** This table predates")
    assert warning < text.index("| finding | answer |")


def test_one_seed_is_too_few_to_judge_and_says_so(tmp_path):
    path = tmp_path / "runs.csv"
    papers_picture(seeds=1).to_csv(path, index=False)
    report = build_report(path, figures=False, prior=Prior(30.0, {}, np.full(40, 30.0), "x")).read_text()
    assert report.count(f"**Answer: {UNDETERMINED}**") == 3
    assert "Too few seeds to judge (1 per point" in report
    assert "- Some grid points have fewer than 3 seeds (as few as 1)." in report


@pytest.mark.parametrize("content", [None, "", "task,method,seed\n"])
def test_a_missing_or_empty_table_gives_a_report_that_says_how_to_get_results(tmp_path, content):
    path = tmp_path / "runs.csv"
    if content is not None:
        path.write_text(content)
    assert main(["report", "--results", str(path), "--no-figures"]) == 0
    assert "No results yet" in (tmp_path / "report.md").read_text()


def test_a_table_of_one_task_judges_what_it_can():
    vqa_only = papers_picture()
    vqa_only = vqa_only[vqa_only.task == "vqa"].drop(columns=["CIDEr-D"])
    vqa, caption, families = build_findings(vqa_only)
    assert (vqa.verdict, caption.verdict, families.verdict) == (REPRODUCED, UNDETERMINED, PARTLY)
    assert "lora vs prompt (caption, towers -: undetermined, no caption runs of lora, prompt)" in families.summary


def test_malformed_item_lines_are_skipped_and_named(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"run": "a", "task": "vqa", "scores": [1, 2, 3]}\nnot json\n{"run": "b", "task": "vqa", "scores": [1, 2]}\n'
    )
    items = load_item_scores(path)
    assert list(items.scores) == ["a"]
    assert items.problems == [
        "line 2 is not a run's item scores (needs run, task and a list of scores)",
        "b: 2 item scores where the first vqa run has 3",
    ]
    assert load_item_scores(tmp_path / "absent.jsonl") is None


def test_t_interval_and_per_seed_slope_match_hand_computed_values():
    interval = Interval.of([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.high - interval.mean == pytest.approx(4.303 / math.sqrt(3))
    assert not Interval.of([5.0]).known and Interval.of([]) is None
    frame = pd.DataFrame(
        {
            "seed": [0] * 3 + [1] * 3,
            "x": [0.01, 0.1, 1.0] * 2,
            "y": [2 + 3 * math.log10(x) for x in (0.01, 0.1, 1.0)] * 2,
        }
    )
    slopes, levels = seed_slopes(frame, "x", frame[["y"]].to_numpy())
    assert [float(slopes[s][0]) for s in (0, 1)] == pytest.approx([3.0, 3.0])
    assert [float(levels[s][0]) for s in (0, 1)] == pytest.approx([2.0, 2.0])


def test_the_answer_prior_is_computed_from_the_table_s_vqa_dataset(tmp_path):
    frame = papers_picture(noise=0.0)
    frame["dataset_source"] = "assets/datasets/scene-vqa"
    frame.to_csv(tmp_path / "runs.csv", index=False)
    report = build_report(tmp_path / "runs.csv", figures=False).read_text()
    line = next(x for x in report.splitlines() if x.startswith("- Answer prior"))
    assert "from `assets/datasets/scene-vqa`" in line
    from training.data.dataset import load_dataset
    from training.run.tasks import answer_prior

    expected = answer_prior(load_dataset("assets/datasets/scene-vqa", "vqa"))["accuracy"]
    assert f"): {expected:.1f} %." in line
    gain = next(x for x in report.splitlines() if x.startswith("| vqa | lora | 100% data, budget 32k |"))
    assert gain.endswith(f"| {44 - expected:.3g} [{44 - expected:.3g}, {44 - expected:.3g}] (n=3) |")


@pytest.mark.parametrize("source", [None, "no/such-folder"])
def test_without_a_readable_vqa_dataset_the_report_says_why_there_is_no_prior(tmp_path, source):
    frame = papers_picture()
    if source:
        frame["dataset_source"] = str(tmp_path / source)
    frame.to_csv(tmp_path / "runs.csv", index=False)
    report = build_report(tmp_path / "runs.csv", figures=False).read_text()
    why = (
        "neither `sweep.json` nor the table names the VQA dataset"
        if source is None
        else f"the VQA dataset `{tmp_path / source}` could not be read (Dataset folder"
    )
    assert f"- No answer prior: {why}" in report
    assert "| vqa | lora | 100% data, budget 32k |" in report and "| answer prior |" not in report


@pytest.mark.slow
def test_the_report_draws_its_figures_and_links_them(tmp_path):
    pytest.importorskip("kaleido")
    if not (shutil.which("chromium") or shutil.which("google-chrome")):
        pytest.skip("kaleido needs a Chrome or Chromium to render")
    path = tmp_path / "runs.csv"
    papers_picture().to_csv(path, index=False)
    report = build_report(path, prior=Prior(30.0, {}, np.full(40, 30.0), "x")).read_text()
    for name in ("data_size", "param_size", "families"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 10_000
        assert f"(figures/{name}.png)" in report
    assert "could not be rendered" not in report


def with_ia3_and_dora(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's picture plus DoRA (LoRA's runs, shifted) and (IA)^3 (no knob: one fixed count, so only the data
    axis at the reference budget, as sweeps/paper.yaml runs it), both rising with data like the layer methods."""
    dora = frame[frame.method == "lora"].copy()
    dora["method"], dora["run"] = "dora", dora["run"].str.replace("lora", "dora")
    ia3 = frame[(frame.method == "lora") & (frame.budget == "32k")].copy()
    ia3["method"], ia3["run"], ia3["trainable_params"] = "ia3", ia3["run"].str.replace("lora", "ia3"), 5_120
    ia3["budget"] = None  # what the sweep table records for a method without a knob
    return pd.concat([frame, dora, ia3], ignore_index=True)


def test_ia3_and_dora_are_judged_and_drawn_beside_the_papers_methods(tmp_path):
    from app import results
    from app.figures import metric_figure

    frame = with_ia3_and_dora(papers_picture())
    assert judged_methods(frame) == [*PEFT, "ia3", "dora"]
    vqa, _, families = build_findings(frame)
    rows = {line.split(" | ")[0].strip("| "): line for line in vqa.table[2:]}
    assert {"ia3", "dora"} <= set(rows) and vqa.verdict == REPRODUCED  # (IA)^3 on its data axis alone
    # ...and the summary says so, rather than that a fixed count rises with parameters.
    assert (
        "for prompt, prefix, lora, serial-adapter, parallel-adapter, dora; with data, a fixed count's only "
        "axis, for ia3. Does not rise"
        in vqa.summary
        and "not judged" not in vqa.summary
    )
    # Each of the five layer methods (LoRA, both adapters, (IA)^3, DoRA) against each embedding method, both tasks.
    assert "20 of 20 pairs x task x towers hold." in families.summary
    # (IA)^3's 5,120 parameters meet the embedding methods at 10k, the grid budget nearest on a log scale, which
    # they run at full data only: one cell per seed.
    ia3_rows = [line for line in families.table if line.startswith("| vqa | text | ia3 - prompt |")]
    assert len(ia3_rows) == 1 and ia3_rows[0].split(" | ")[3] == "3", families.table

    frame.to_csv(tmp_path / "runs.csv", index=False)
    sweep, _ = results.load_sweep(tmp_path)
    shown = results.combined(sweep, results.user_frame([]), "vqa")
    traces = {trace.name for trace in metric_figure(shown, "data_fraction", "accuracy").data}
    assert {"(IA)³", "DoRA", "LoRA", "Prompt tuning"} <= traces
    by_params = {trace.name for trace in metric_figure(shown, "trainable_params", "accuracy").data}
    assert "DoRA" in by_params


def test_a_part_done_grid_says_so_before_its_verdicts(tmp_path):
    frame = papers_picture()
    frame.to_csv(tmp_path / "runs.csv", index=False)
    planned = len(frame) + 40
    meta = {"name": "paper", "done": len(frame), "runs_planned": planned, "remaining": 40, "sessions": []}
    (tmp_path / "sweep.json").write_text(json.dumps(meta))
    text = build_report(tmp_path / "runs.csv", figures=False, prior=Prior(30.0, {}, np.full(40, 30.0), "x")).read_text()
    warning = text.index(f"> **The grid is not finished: {len(frame)} of {planned} runs, 40 to go.**")
    assert warning < text.index("| finding | answer |")
    lora = int(((frame.task == "vqa") & (frame.method == "lora")).sum())
    assert f"vqa lora {lora}" in text
    (tmp_path / "sweep.json").write_text(json.dumps({**meta, "done": planned, "remaining": 0}))
    text = build_report(tmp_path / "runs.csv", figures=False, prior=Prior(30.0, {}, np.full(40, 30.0), "x")).read_text()
    assert "The grid is not finished" not in text


def test_a_part_done_grid_leaves_out_a_method_whose_reference_budget_has_no_full_data_run_yet(tmp_path):
    # As after the second sweep session: prefix tuning ran its reference budget at the small fractions only,
    # and another budget at full data. Its gains and per-type rows are left out, not failed on or shown as nan.
    frame = papers_picture(noise=0.0)
    vqa_prefix = (frame.task == "vqa") & (frame.method == "prefix")
    keep = ~vqa_prefix | ((frame.budget == "32k") & (frame.data_fraction < 1.0))
    keep |= vqa_prefix & (frame.budget == "100k") & (frame.data_fraction == 1.0)
    frame = frame[keep].copy()
    frame.loc[frame.task == "vqa", "accuracy_color"] = frame.loc[frame.task == "vqa", "accuracy"]
    frame.to_csv(tmp_path / "runs.csv", index=False)
    prior = Prior(30.0, {"color": 21.5}, np.full(40, 30.0), "a test")
    report = build_report(tmp_path / "runs.csv", figures=False, prior=prior).read_text()
    assert "| vqa | lora | 100% data, budget 32k |" in report
    assert "| vqa | prefix | 100% data" not in report and "| caption | prefix | 100% data, budget 32k |" in report
    assert "| lora (32k) |" in report and "| prefix (" not in report
    assert "nan" not in report


def test_a_run_without_a_budget_is_labelled_by_what_it_trains():
    from training.study.report import unbudgeted_label

    ia3 = pd.DataFrame({"method": ["ia3"] * 2, "trainable_params": [5120, 5120]})
    assert unbudgeted_label("ia3", ia3) == "its fixed 5,120 parameters"
    assert unbudgeted_label("full", ia3.assign(method="full")) == "all weights"


def test_the_readme_block_gets_the_report_s_verdict_table_and_nothing_else_changes(tmp_path):
    frame = papers_picture()
    frame.to_csv(tmp_path / "runs.csv", index=False)
    planned = len(frame) + 40
    meta = {"name": "paper", "done": len(frame), "runs_planned": planned, "remaining": 40, "wall_s": 7200.0}
    (tmp_path / "sweep.json").write_text(json.dumps(meta))
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nProse above.\n<!-- report:verdicts -->\n", "<!-- /report:verdicts -->\nProse below.\n"
    readme.write_text(before + "| an old table |\n" + after)
    prior = Prior(30.0, {}, np.full(40, 30.0), "x")
    report = build_report(tmp_path / "runs.csv", figures=False, prior=prior, readme=readme).read_text()
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after) and "an old table" not in text
    table = [line for line in report.splitlines() if line.startswith("| ") and line[2:3].isdigit()]
    assert [line.split(" | ")[1] for line in table] == [f"**{REPRODUCED}**"] * 3  # the paper's picture
    assert all(line in text.splitlines() for line in table)
    assert f"(**provisional: the grid is not finished ({len(frame)} of {planned} runs)**; seeds [0, 1, 2])" in text
    assert "`report.md`" in text  # the report's path as seen from the README's folder
    (tmp_path / "sweep.json").write_text(json.dumps({**meta, "done": planned, "remaining": 0}))
    build_report(tmp_path / "runs.csv", figures=False, prior=prior, readme=readme)
    text = readme.read_text()
    assert f"(the finished grid ({len(frame)} runs, 2.0 h of wall time); seeds [0, 1, 2])" in text
    assert text.count("| finding | answer |") == 1 and text.endswith(after)


@pytest.mark.parametrize("content", ["no markers\n", "<!-- /report:verdicts -->\n<!-- report:verdicts -->\n"])
def test_a_readme_without_its_markers_is_named_and_the_report_is_still_written(tmp_path, capsys, content):
    papers_picture(seeds=2).to_csv(tmp_path / "runs.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(content)
    assert main(["report", "--results", str(tmp_path / "runs.csv"), "--no-figures", "--readme", str(readme)]) == 2
    assert "needs exactly one <!-- report:verdicts --> line followed by one" in capsys.readouterr().err
    assert readme.read_text() == content and "| finding | answer |" in (tmp_path / "report.md").read_text()


# -- the second edition's rules, each pinned on a table whose answer is known -----------------------------------


def caption_tests(frame: pd.DataFrame) -> tuple[dict, dict]:
    """Finding 2's units on captioning and its pooled tests."""
    from training.study.report.finding_caption import flatness_units

    return flatness_units(frame, "caption", Stats(frame, None), judged_methods(frame))


def caption_units(frame: pd.DataFrame) -> dict:
    return caption_tests(frame)[0]


def test_a_flat_but_useless_method_is_not_flat():
    frame = papers_picture(noise=0.05)
    # Zero-shot captions as well as every fine-tuned run: the curves are flat because fine-tuning adds nothing.
    frame.loc[(frame.task == "caption") & (frame.method == "zero-shot"), "CIDEr-D"] = 64.0
    units = caption_units(frame)
    assert units["lora"]["unit"].holds("flat") is False
    assert units["lora"]["why"] == "no gain over zero-shot to be flat against"
    assert units["lora"]["unit"].state == PARTLY  # its interior optimum still holds
    caption = build_findings(frame)[1]
    assert "flat in data for none" in caption.summary and caption.verdict != REPRODUCED


def test_a_rise_of_five_percent_of_the_gain_counts_as_flat():
    # 1.4 CIDEr-D per tenfold data: 2.8 over the two decades against a gain of about 59 over zero-shot (5 %), a
    # steady rise whose slope is far above zero. Flatness is measured against the gain, not against zero.
    frame = synthetic(rising(8), rising(6), rising(1.4), peak, layer_bonus=4, noise=0.05)
    units = caption_units(frame)
    lora = units["lora"]
    assert lora["data"].slope.above_zero and lora["data"].slope.p < 0.001
    assert lora["share"].mean == pytest.approx(2.8 / 59, abs=0.005)
    assert lora["unit"].holds("flat") is True and lora["unit"].state == REPRODUCED
    assert all(u["unit"].holds("flat") for u in units.values())
    assert build_findings(frame)[1].verdict == REPRODUCED


def slopes_table(methods: list[str], data: tuple, params: tuple) -> pd.DataFrame:
    """VQA alone, no noise within a seed: each method's accuracy rises by data[s] points per tenfold data (1, 10 and
    100 % at 32k) and params[s] per tenfold parameters (10k, 32k, 100k at full data) in seed s; a method without a
    knob runs its fixed 5,120 parameters on the data axis only."""
    rows = []
    for method in methods:
        knob = method not in NO_BUDGET_METHODS
        for seed, (per_data, per_params) in enumerate(zip(data, params, strict=True)):
            for fraction in (0.01, 0.1, 1.0):
                at = ("32k", 32_000) if knob else (None, 5_120)
                rows.append((method, *at, fraction, seed, 40 + per_data * math.log10(fraction)))
            for budget, count in (("10k", 10_000), ("100k", 100_000)) if knob else ():
                rows.append((method, budget, count, 1.0, seed, 40 + per_params * math.log10(count / 32_000)))
    frame = pd.DataFrame(rows, columns=["method", "budget", "trainable_params", "data_fraction", "seed", "accuracy"])
    frame["task"], frame["towers"] = "vqa", "text"
    frame["family"] = frame.method.map(FAMILY_OF)
    frame["run"] = [f"vqa__{m}__{i}" for i, m in enumerate(frame.method)]
    return frame


def test_a_clear_effect_measured_with_three_seeds_can_be_reproduced():
    # All eight PEFT methods rise 8.3, 10 and 11.7 points per tenfold on both axes in the three seeds: t = 10.2
    # with 2 degrees of freedom, one-sided p = 0.0047 per check. A unit's p is the larger of its two checks' and
    # Holm runs over the 8 units (8 x 0.0047 = 0.038). Holm over all 15 checks, or two-sided p-values, would not
    # let it pass.
    one = Interval.of([8.3, 10.0, 11.7]).p
    assert one == pytest.approx(0.00475, abs=5e-5)
    vqa = build_findings(slopes_table(list(PEFT_METHODS), (8.3, 10.0, 11.7), (8.3, 10.0, 11.7)))[0]
    assert vqa.verdict == REPRODUCED
    rows = {line.split(" | ")[0].strip("| "): line for line in vqa.table[2:]}
    assert f"| p={one:.2g}, Holm p={8 * one:.2g} | reproduced |" in rows["loha"]
    assert "8 of 8 units reproduced" in vqa.summary and "Holm family: the 8 judged units of 8" in vqa.summary


def test_a_unit_s_checks_need_no_correction_among_themselves():
    # Prompt tuning alone: its data slope is 1.4, 2 and 2.6 per tenfold in the three seeds (one-sided p = 0.014),
    # its parameter slope -1, 0 and 1 (p = 0.5). The data slope holds on its own: the parameter slope does not
    # dilute it, it only keeps the unit from reproducing.
    assert Interval.of([1.4, 2.0, 2.6]).p == pytest.approx(0.0287 / 2, abs=3e-4)
    vqa = build_findings(slopes_table(["prompt"], (1.4, 2.0, 2.6), (-1.0, 0.0, 1.0)))[0]
    row = next(line for line in vqa.table if line.startswith("| prompt |"))
    assert row.endswith("| p=0.5, Holm p=0.5 | partly | partly |")
    assert "Does not rise with data: none; with parameters: prompt." in vqa.summary


def test_a_unit_s_p_value_is_the_largest_of_its_checks_and_holm_runs_over_the_units():
    from training.study.report.units import judge_units

    def check(p):
        return Interval(1.0, 0.5, 1.5, 3, p)

    units = [
        Unit("a", {"data": Part([check(0.001)]), "params": Part([check(0.02)])}),
        Unit("b", {"data": Part([check(0.004)]), "params": Part([check(0.30)])}),
        Unit("c", {"flat": Part([check(0.01), check(0.002)])}),  # one part of two checks
    ]
    judge_units(units)
    assert [u.p for u in units] == [0.02, 0.30, 0.01]
    assert [u.holm_p for u in units] == pytest.approx([0.04, 0.30, 0.03])  # 0.01 x 3, 0.02 x 2, 0.30 x 1
    assert [u.state for u in units] == [REPRODUCED, PARTLY, REPRODUCED]
    # b's data slope stands in for b in the family: 0.004 ranks first, 0.012 after Holm.
    assert (units[1].holds("data"), units[1].holds("params")) == (True, False)


def test_a_unit_is_undetermined_when_a_part_is_not_judged_and_a_best_at_an_edge_has_p_one():
    from training.study.report.units import judge_units

    sure = Interval(1.0, 0.5, 1.5, 3, 0.001)
    fixed_count = Unit("ia3", {"data": Part([sure])})  # no parameter axis: its data part decides it
    at_edge = Unit("lora", {"data": Part([sure]), "optimum": Part([sure], possible=False)})
    missing = Unit("dora", {"data": Part([sure]), "params": Part([None])}, "seed 2 lacks 1% data")
    judge_units([fixed_count, at_edge, missing])
    assert at_edge.p == 1.0 and at_edge.holds("optimum") is False
    assert [u.state for u in (fixed_count, at_edge, missing)] == [REPRODUCED, PARTLY, UNDETERMINED]
    assert missing.holds("data") is None and math.isnan(missing.holm_p)  # not in the family


def test_no_pooled_interior_optimum_when_every_best_budget_is_at_an_edge():
    # Prompt and prefix tuning fall with parameters (best: the smallest budget), the layer methods rise (best: the
    # largest). Each method lifts one of best - largest and best - smallest, so pooling them separately would find
    # an "optimum" nowhere present; min(best - largest, best - smallest) is zero for every method and seed.
    shapes = {("caption", m, "params"): rising(-6 if m in ("prompt", "prefix") else 6) for m in PEFT}
    frame = synthetic(rising(8), rising(6), flat, peak, layer_bonus=4, shapes=shapes)
    units, tests = caption_tests(frame)
    assert not any(u["params"].best["interior"] for u in units.values())
    assert tests["best - better edge"].mean == 0 and tests["optimum"] is False
    assert all(u["unit"].holds("optimum") is False and u["unit"].p == 1 for u in units.values())
    assert all(u["unit"].state == PARTLY for u in units.values())  # flat, no optimum


def test_a_method_or_pair_absent_from_the_table_is_listed_as_not_agreeing(tmp_path):
    frame = papers_picture()
    # LoRA's budgets match no embedding method's: no matched cells, though both have runs.
    frame.loc[frame.method == "lora", "budget"] = frame.loc[frame.method == "lora", "budget"] + "-lora"
    grid = list(METHOD_NAMES)  # every method of the catalog: ia3, dora and loha have no run in this table
    vqa, caption, families = build_findings(frame, grid=grid)
    rows = {line.split(" | ")[0].strip("| "): line for line in vqa.table[2:]}
    assert rows["loha"].endswith("| - (no vqa runs) | undetermined | undetermined |")
    assert "5 of 8 units reproduced (62%; the rule needs 67%)" in vqa.summary and vqa.verdict == PARTLY
    assert "not judged (undetermined): ia3 (no caption runs), dora (no caption runs)" in caption.summary
    assert "loha vs prefix (vqa, towers text: undetermined, no vqa runs of loha)" in families.summary
    assert "lora vs prompt (caption, towers text: undetermined, no matched cells)" in families.summary
    assert "8 of 24 pairs x task x towers hold" in families.summary
    # Read from the sweep's grid in sweep.json, which the report names as the source of its units.
    frame.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "paper", "spec": {"methods": grid}}))
    report = build_report(tmp_path / "runs.csv", figures=False, prior=Prior(30.0, {}, np.full(40, 30.0), "x"))
    text = report.read_text()
    assert "| loha | - | - | - (no vqa runs) | undetermined | undetermined |" in text
    assert "the units are the PEFT methods of the sweep's grid (`sweep.json`)" in text


def test_a_seed_missing_one_fraction_makes_its_unit_incomplete():
    frame = papers_picture()
    gone = (frame.method == "lora") & (frame.seed == 2) & (frame.data_fraction == 0.05)
    vqa, _, families = build_findings(frame[~gone])
    row = next(line for line in vqa.table if line.startswith("| lora |"))
    assert "| - (seed 2 lacks 5% data) | undetermined |" in row
    assert "not judged (undetermined): lora (seed 2 lacks 5% data)" in vqa.summary
    assert "lora vs prompt (vqa, towers text: undetermined, seed 2 lacks 1 of 9 matched cells)" in families.summary


def test_holm_adjusts_by_rank_and_keeps_the_order():
    from training.study.report.stats import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2]) == [0.2]  # a family of one: unchanged


def test_the_best_budget_is_chosen_on_validation_even_where_test_would_pick_another():
    frame = papers_picture(noise=0.0)
    frame["val_metric"] = frame["accuracy"].fillna(frame["CIDEr-D"])
    # On validation LoRA's 100k looks best on captioning; on test 32k is (the peak).
    frame.loc[(frame.task == "caption") & (frame.method == "lora") & (frame.budget == "100k"), "val_metric"] += 20
    best = caption_units(frame)["lora"]["params"].best
    assert (best["best_params"], best["chosen_on"]) == (100_000, "validation")
    # best - largest and best - smallest are the test scores of the validation's choice: 100k against 320k and 10k.
    assert best["best_minus_largest"].mean == pytest.approx(12 * (1 - math.log10(100 / 32) ** 2))
    assert best["best_minus_smallest"].mean == pytest.approx(
        12 * (math.log10(10 / 32) ** 2 - math.log10(100 / 32) ** 2)
    )
    assert caption_units(papers_picture(noise=0.0))["lora"]["params"].best["chosen_on"].startswith("test (")


def test_the_overall_verdict_reads_the_pooled_tests_and_the_share_of_units_that_agree():
    from training.study.report.rules import overall

    assert overall([REPRODUCED, REPRODUCED, NOT], [True]) == REPRODUCED  # 2 of 3 agree, the pooled effect holds
    assert overall([REPRODUCED, NOT, NOT], [True]) == PARTLY
    assert overall([REPRODUCED, REPRODUCED, REPRODUCED], [True, False]) == PARTLY  # a pooled test fails
    assert overall([NOT, PARTLY, NOT], [False, False]) == NOT
    assert overall([REPRODUCED, NOT, NOT], [False]) == PARTLY  # a third agree: not "none"
    assert overall([UNDETERMINED], [None]) == UNDETERMINED


def test_runs_stopped_by_a_cap_while_improving_are_counted_from_the_column_or_computed():
    from training.study.report.tables import stopped_improving

    frame = pd.DataFrame(
        {
            "method": ["lora"] * 4,
            "stop_reason": ["epoch cap", "epoch cap", "patience", "min steps"],
            "best_step": [300.0, 200.0, 300.0, 150.0],
            "steps_run": [300.0, 300.0, 300.0, 150.0],
        }
    )
    flags, how = stopped_improving(frame)
    assert flags.tolist() == [True, False, False, True] and how.startswith("computed")
    flags, how = stopped_improving(frame.assign(stopped_improving=[False, True, False, False]))
    assert flags.tolist() == [False, True, False, False] and "column" in how


def test_plain_verdicts_say_each_finding_in_the_task_s_units(tmp_path):
    from training.study.report import plain_verdicts

    papers_picture(noise=0.0).to_csv(tmp_path / "runs.csv", index=False)
    plain = plain_verdicts(tmp_path / "runs.csv", prior=Prior(30.0, {}, np.full(40, 30.0), "x"))
    assert sorted(plain) == [1, 2, 3] and {p.verdict for p in plain.values()} == {REPRODUCED}
    # Every method rises 8 points per tenfold data: 16 points from 1 % to 100 %.
    assert "going from 1% to 100% of the training data adds 16 points of accuracy" in plain[1].sentence
    assert "fine-tuning on all the data adds between 55 (Prompt tuning) and 59 (LoRA) CIDEr-D" in plain[2].sentence
    assert "score on average 4 CIDEr-D on captioning and 4 points of VQA accuracy above" in plain[3].sentence
    assert plain[1].details.startswith("**Answer: reproduced**") and "*Statistic.*" in plain[1].details
    report = build_report(tmp_path / "runs.csv", figures=False, prior=Prior(30.0, {}, np.full(40, 30.0), "x"))
    assert f"1. {plain[1].sentence}" in report.read_text()  # the report says the same words
    assert plain_verdicts(tmp_path / "absent.csv") == {}
