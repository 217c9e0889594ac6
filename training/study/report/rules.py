"""The decision rules, second edition: the constants every verdict is read from, the text the report prints (written
once, here), and how a finding's units and pooled tests combine into its verdict (a unit's own test: units.py)."""

from __future__ import annotations

EDITION = "second edition"
REPRODUCED, PARTLY, NOT, UNDETERMINED = "reproduced", "partly", "not reproduced", "undetermined"
# The statistics every verdict is read from, fixed before the grid runs (decision_rules() prints them in report.md).
RESAMPLES = 2000  # bootstrap resamples per statistic
BOOTSTRAP_SEED = 13  # the bootstrap's RNG seed, so a report is reproducible to the digit
LEVEL = 0.95  # two-sided coverage of every interval
ALPHA = 1 - LEVEL  # the family-wise error rate Holm's correction holds each finding's family of units to
MIN_SEEDS = 2  # an interval needs this many seeds; fewer leaves a unit undetermined
PROTOCOL_SEEDS = 3  # the study protocol's minimum; the report warns below it
ITEM_FILE = "item_scores.jsonl"  # per-test-item scores beside runs.csv, one line per run
# Flat in data: all of the data adds less than this share of what fine-tuning adds over zero-shot at full data.
FLAT_SHARE = 0.25
AGREE_SHARE = 2 / 3  # an overall "reproduced" needs at least this share of the finding's units reproduced
CAP_REASONS = ("epoch cap", "min steps", "max steps")  # stop reasons that are a cap, not early stopping
STOPPED_IMPROVING = "stopped_improving"  # the table's column for it, where the sweep writes one


def decision_rules() -> list[str]:
    """The rules every verdict follows, as markdown: written from the constants above, never from the results."""
    level, share, agree = f"{LEVEL:.0%}", f"{FLAT_SHARE:.0%}", f"{AGREE_SHARE:.0%}"
    return [
        f"## Decision rules ({EDITION})",
        "",
        "Written before the second-edition grid runs (`training/study/report/rules.py`); each verdict below is "
        "read off them, with no choice made after seeing the numbers. The first edition, its rules in "
        "`training/study/report.py` and its 408-run grid in `results/runs.csv` and `results/report.md`, stays in "
        "history at commit 3aa0b4f. A table older than the protocol (no validation scores) is judged by the same "
        "rules, but its runs were not trained under them. Amended after a review, still before the "
        "second-edition grid's first run: a unit's checks combine by an intersection-union test with one-sided "
        "p-values and Holm over the units, flatness is judged against the gain alone, and every unit of the grid "
        "is counted.",
        "",
        f"- **Intervals.** {level} intervals that combine seeds and test items: a hierarchical paired bootstrap "
        f"({RESAMPLES} resamples, RNG seed {BOOTSTRAP_SEED}) draws seeds with replacement and test items with "
        "replacement, the same items for every run of a task, so runs compared are paired by seed and by item; "
        f"the reported interval spans both its percentile interval and the {level} t-interval across seeds (a "
        "bootstrap over a handful of seeds understates their spread, so neither may narrow the other). A resample "
        "averages the per-item scores (per-image CIDEr-D keeps the document frequencies of the whole test set). "
        f"Without `{ITEM_FILE}` (or when a run of the task has no item scores) the interval is the t-interval "
        f"across seeds alone, and the report says so. An interval needs at least {MIN_SEEDS} seeds (the protocol "
        f"asks for {PROTOCOL_SEEDS}); a unit without one is *undetermined*.",
        '- **Every "best" is chosen on validation.** Learning rates (by `tune`), checkpoints and stopping points '
        "(by the trainer) and, in this report, a method's best budget (finding 2) and its best cell (*How far each "
        "method gets*) are chosen on the mean validation score (`val_metric`, the validation score of the kept "
        "checkpoint); the test split only scores the choice. A table without validation scores falls back to test "
        "means and the report says so beside every such choice.",
        "- **Units.** Each finding is judged per unit: a PEFT method in findings 1 and 2, a pair (a layer method "
        "against an embedding method) x task x tower setting in finding 3. Every PEFT method in the sweep file is "
        "a unit of each finding it can enter: the units are read from the grid `sweep.json` records (without one, "
        "from the methods the table has runs of, and the report says so), so a method added to a grid after these "
        "rules were written is judged by them (LoHa, in `sweeps/paper-v2.yaml`, is a layer-composition method "
        "like LoRA and DoRA). A unit the table lacks (no runs, no matched cells) or has incompletely (a seed "
        "without every data fraction the task was run at, without every budget of the method's parameter axis or "
        f"without every matched cell of a pair, or fewer than {MIN_SEEDS} seeds) is *undetermined*: it counts "
        "as not agreeing and is listed with the reason.",
        "- **A unit's test: all its checks must hold (intersection-union).** A unit reproduces a claim only when "
        "every one of its checks holds, so its checks need no correction among themselves: the unit's p-value is "
        "the largest of its checks' p-values. The claims are directional (a slope rises, a gain is positive, a "
        "best budget beats an edge, a layer method beats an embedding method), so every p-value is one-sided, "
        "of the effect being above zero: the larger of the t-test's and the bootstrap's (the share of resamples "
        "at or below zero). A check that cannot hold whatever the numbers (a best budget at an edge is no "
        "interior optimum) has p = 1.",
        f"- **Multiple comparisons: Holm over the units.** Each finding's judged units form one family (named in "
        f"the report), corrected by Holm's step-down method at a family-wise error of {ALPHA:.0%}; on finding 2 "
        "VQA, the control, is a family of its own. A part of a unit (finding 1: the data slope, the parameter "
        f"slope; finding 2: flat in data, the interior optimum) holds when each of its {level} intervals lies "
        "above zero and its p-value (the largest of its checks'), standing in for the unit's in the family, is "
        f"below {ALPHA:.0%} after Holm's correction. Holm's adjusted p-value never falls as a p-value rises, so "
        "a unit's parts all hold exactly when its own test holds: *reproduced* when every part holds, *partly* "
        "when some do, *not reproduced* when none does. The pooled tests of a finding's overall verdict must "
        f"all hold too, so each is judged alone (its interval above zero, its one-sided p-value below "
        f"{ALPHA:.0%}).",
        "- **Axes.** Slopes are ordinary least squares of the main metric (VQA accuracy, captioning CIDEr-D) on "
        "log10(data fraction) at the method's reference budget (the budget run at the most fractions; ties: the "
        "smallest), and on log10(trainable parameters) at the largest data fraction; fitted per seed, averaged over "
        "seeds. Every seed must have every point of the axis, so that each seed's slope spans the same range.",
        "- **Finding 1, per PEFT method (VQA).** Two parts: the data slope and the parameter slope hold above zero. "
        "Full fine-tuning is shown for reference and not counted.",
        f"- **Finding 2, per PEFT method (captioning).** *Flat in data* has two checks: fine-tuning is useful (the "
        "metric at the largest fraction minus zero-shot, paired, holds above zero: a method that adds nothing "
        "over zero-shot has nothing to be flat against, and is *not* flat), and the rise from the smallest to the "
        f"largest fraction is shown to be below {share} of that gain ({share} x gain - rise holds above zero). "
        f"The data slope is not tested against zero: a steady rise well below {share} of the gain is flat. "
        "*Interior optimum*: the budget with the best mean validation score at the largest fraction is interior, "
        "and on test it beats both the largest and the smallest budget (best - largest and best - smallest, "
        "paired, both hold above zero); a best at an edge fails it (p = 1). The same test runs on VQA beside it "
        "as a control: a part *separates the tasks* when more methods pass it on captioning than on VQA.",
        "- **Finding 3, per pair (each layer method against each embedding method), per task and tower setting.** "
        "At matched cells (equal requested budget, data fraction, seed and towers), layer minus embedding, averaged "
        "per seed: *reproduced* when it holds above zero, *not reproduced* otherwise. The pair pooled over tower "
        "settings and the two families pooled are shown beside it.",
        "- **A method without a knob ((IA)³, one fixed count).** It has no parameter axis: in findings 1 and 2 it "
        "is judged on its data part alone (finding 1: the data slope; finding 2: flat in data), and that part "
        "decides it (*reproduced* or *not reproduced*, never *partly*); it is left out of the parameter slopes, "
        "the optimum tests and their pooled tests. In finding 3 its runs (no requested budget) are matched at the "
        "grid budget whose runs train the count nearest its own (log scale).",
        f"- **Overall verdict per finding: the pooled effect and the share of units that agree.** The pooled "
        "effect is the claim's statistic averaged over the judged units, per seed (finding 1: the mean data slope "
        "over the methods and the mean parameter slope over the methods with a knob; finding 2: the mean gain and "
        f"the mean {share} x gain - rise (flat: both hold), and over the methods with a knob the mean of "
        "min(best - largest, best - smallest), at most zero for a method whose best is at an edge (an interior "
        "optimum: it holds); finding 3: the layer family minus the embedding family on each task). *reproduced* "
        f"when every pooled test holds and at least {agree} of the units (an undetermined unit counts as not "
        "agreeing) are reproduced; *not reproduced* when no pooled test holds and fewer than "
        f"{1 - AGREE_SHARE:.0%} of the units are reproduced; *undetermined* when nothing could be judged; "
        "*partly* otherwise. Every unit is listed with its state. Finding 2 is at most *partly* when one of its "
        "parts does not separate the tasks.",
        "- **Runs stopped by a cap while still improving.** A run whose stop reason is a cap ("
        + ", ".join(CAP_REASONS)
        + f") and whose kept checkpoint is its last validation (`best_step` = `steps_run`; the table's "
        f"`{STOPPED_IMPROVING}` column where the sweep writes one) might have gone on improving. The report counts "
        "and names them; the protocol's target is 0.",
        "- **Robustness.** Every verdict is computed again without each task's smallest data fraction and shown "
        "beside the main one; the main verdict is the one with all fractions.",
        "- **Gains.** At full data and each method's reference budget: the metric minus zero-shot (paired by seed "
        "and item) and, on VQA, minus the answer prior (answering each question type's most common training answer; "
        "computed by the report from the VQA dataset the table names).",
        "",
    ]


def overall(states: list[str], pooled: list[bool | None]) -> str:
    """A finding over its units and its pooled tests: every pooled test holds and enough units agree."""
    if not states or all(s == UNDETERMINED for s in states) or all(p is None for p in pooled):
        return UNDETERMINED
    agree = round(sum(s == REPRODUCED for s in states) / len(states), 9)  # 1/3 is a third, not just under it
    if all(p is True for p in pooled) and agree >= round(AGREE_SHARE, 9):
        return REPRODUCED
    if not any(p is True for p in pooled) and agree < round(1 - AGREE_SHARE, 9):
        return NOT
    return PARTLY


def agreement(states: list[str]) -> str:
    """How many units are reproduced, as the overall rule reads it."""
    agree = sum(s == REPRODUCED for s in states)
    return f"{agree} of {len(states)} units reproduced ({agree / len(states):.0%}; the rule needs {AGREE_SHARE:.0%})"
