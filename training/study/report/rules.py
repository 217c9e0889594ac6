"""The decision rules: the constants every verdict is read from, the text the report prints, and how a
unit's checks and a finding's units combine into a verdict."""

from __future__ import annotations

from training.catalog import NO_BUDGET_METHODS

FLAT_TOLERANCE = 0.05  # |change| per tenfold data, as a share of the metric at full data, that still counts as flat
REPRODUCED, PARTLY, NOT, UNDETERMINED = "reproduced", "partly", "not reproduced", "undetermined"
# The statistics every verdict is read from, fixed before the grid runs (decision_rules() prints them in report.md).
RESAMPLES = 2000  # bootstrap resamples per statistic
BOOTSTRAP_SEED = 13  # the bootstrap's RNG seed, so a report is reproducible to the digit
LEVEL = 0.95  # two-sided coverage of every interval
MIN_SEEDS = 2  # an interval needs this many seeds; fewer leaves a unit undetermined
PROTOCOL_SEEDS = 3  # the study protocol's minimum; the report warns below it
ITEM_FILE = "item_scores.jsonl"  # per-test-item scores beside runs.csv, one line per run


def decision_rules() -> list[str]:
    """The rules every verdict follows, as markdown: written from the constants above, never from the results."""
    level, tol = f"{LEVEL:.0%}", f"{FLAT_TOLERANCE:.0%}"
    return [
        "## Decision rules",
        "",
        "These rules were committed before the fair-protocol grid ran (see the history of `training/study/report.py`); "
        "each verdict below is read off them, with no choice made after seeing the numbers. A table older than "
        "the protocol (no validation scores: see below) is judged by the same rules, but its runs were not "
        "trained under them.",
        "",
        f"- **Intervals.** {level} intervals that combine seeds and test items: a hierarchical paired bootstrap "
        f"({RESAMPLES} resamples, RNG seed {BOOTSTRAP_SEED}) draws seeds with replacement and test items with "
        "replacement, the same items for every run of a task, so runs compared are paired by seed and by item; "
        f"the reported interval spans both its percentile interval and the {level} t-interval across seeds (a "
        "bootstrap over a handful of seeds understates their spread, so neither may narrow the other). A resample "
        "averages the per-item scores (per-image CIDEr-D keeps the document frequencies of the whole test set). "
        "Without "
        f"`{ITEM_FILE}` (or when a run of the task has no item scores) the interval is the t-interval across seeds "
        f"alone, and the report says so. An interval needs at least {MIN_SEEDS} seeds (the protocol asks for "
        f"{PROTOCOL_SEEDS}); a unit without one is *undetermined*.",
        "- **Axes.** Slopes are ordinary least squares of the main metric (VQA accuracy, captioning CIDEr-D) on "
        "log10(data fraction) at the method's reference budget (the budget run at the most fractions; ties: the "
        "smallest), and on log10(trainable parameters) at the largest data fraction; fitted per seed, averaged over "
        "seeds.",
        "- **Finding 1, per PEFT method (VQA).** *reproduced* when the data slope and the parameter slope both have "
        "their interval above zero; *partly* when one does; *not reproduced* when neither does. Full fine-tuning is "
        "shown for reference and not counted. A method without a knob ((IA)³: one fixed count) has no parameter "
        "axis, here and in finding 2, and is judged on the data axis alone.",
        f"- **Finding 2, per PEFT method (captioning).** *Flat in data*: the whole interval of slope / level (level: "
        f"the mean metric at the largest fraction) lies within +-{tol} per tenfold data. *Interior optimum*: the "
        "budget with the best mean is neither the smallest nor the largest, and best minus largest (paired) has its "
        "interval above zero. Both: *reproduced*; one: *partly*; neither: *not reproduced*. The same test runs on "
        "VQA beside it as a control: a part *separates the tasks* when more methods pass it on captioning than on "
        "VQA.",
        "- **Finding 3, per pair (each layer method against each embedding method), per task and tower setting.** "
        "At matched cells (equal requested budget, data fraction, seed and towers), layer minus embedding, averaged "
        "per seed: *reproduced* when the interval lies above zero, *not reproduced* when it does not. A method "
        "without a knob ((IA)³: one fixed count, no requested budget) is matched at the grid budget whose runs "
        "train the count nearest its own (log scale). The pair pooled over tower settings and the two families "
        "pooled are shown beside it.",
        "- **Overall verdict per finding** (the paper says *every* method): *reproduced* only when every unit "
        "(PEFT method, or pair x task x towers) is reproduced; *not reproduced* when no unit is even partly; "
        "*undetermined* when no unit can be judged; *partly* otherwise, naming the units that are not reproduced. "
        "A method (findings 1 and 2) or task (finding 3) absent from the table is an undetermined unit. "
        "Finding 2 is at most *partly* when one of its parts does not separate the tasks.",
        "- **Robustness.** Every verdict is computed again without each task's smallest data fraction and shown "
        "beside the main one; the main verdict is the one with all fractions.",
        "- **Gains.** At full data and each method's reference budget: the metric minus zero-shot (paired by seed "
        "and item) and, on VQA, minus the answer prior (answering each question type's most common training answer; "
        "computed by the report from the VQA dataset the table names).",
        "",
    ]


def unit_state(checks: list[bool | None]) -> str:
    """One unit (a method, a pair) from its parts: True holds, False fails, None could not be judged."""
    if all(c is None for c in checks):
        return UNDETERMINED
    if all(c is True for c in checks):
        return REPRODUCED
    return PARTLY if any(c is True for c in checks) else NOT


def overall(states: list[str]) -> str:
    """A finding over its units, as the paper states it: every unit must hold."""
    if not states or all(s == UNDETERMINED for s in states):
        return UNDETERMINED
    if all(s == REPRODUCED for s in states):
        return REPRODUCED
    if all(s in (NOT, UNDETERMINED) for s in states):
        return NOT
    return PARTLY


def judged_checks(method: str, checks: list[bool | None]) -> list[bool | None]:
    """The (data, parameters) checks a method is judged on: a method without a knob (a fixed count) has no
    parameter axis, so only its data check."""
    return checks[:1] if method in NO_BUDGET_METHODS else checks


def judged_state(method: str, checks: list[bool | None]) -> str:
    """A method's state from the checks it is judged on."""
    return unit_state(judged_checks(method, checks))
