"""The verdict: does the sweep's table reproduce the paper's three findings? `python -m training report`.

Reads `results/runs.csv`, `sweep.json` and (when the sweep wrote it) `item_scores.jsonl` beside it, judges
each finding per method (or per pair of methods) by the rules in `decision_rules()`, draws the figures, and
writes `results/report.md`. Intervals come from a hierarchical paired bootstrap over seeds and test items
when every run of a task has its item scores, from a t-interval across seeds otherwise (`Stats`).

1. VQA (inconsistent with pre-training) improves with data and with trainable parameters: per PEFT method,
   the slope of accuracy against log10(data fraction) and against log10(trainable parameters).
2. Captioning (consistent with pre-training) is flat in data and has an interior optimum in parameters:
   per PEFT method, the data slope relative to the level within +-FLAT_TOLERANCE per decade, and a best
   budget that is neither edge and beats the largest. The same test runs on VQA as a control.
3. Layer composition beats embedding composition: per pair (layer method, embedding method), per task and
   tower setting, layer minus embedding at matched budget, data fraction, seed and towers.

Every verdict is computed again without the smallest data fraction (the robustness view). The answer prior
(VQA accuracy of answering each question type's most common training answer) is computed here from the VQA
dataset the table names, with `training.run.tasks.answer_prior`; the sweep does not write it as a row.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.catalog import EMBEDDING, FAMILY, LAYER, MAIN_METRIC, METHOD_COLOURS, NO_BUDGET_METHODS, PEFT_METHODS
from training.errors import UserError
from training.sweeps.table import PROTOCOL_COLUMNS  # older tables lack them and read as empty

FLAT_TOLERANCE = 0.05  # |change| per tenfold data, as a share of the metric at full data, that still counts as flat
FIGURES = ("data_size", "param_size", "families")
# Two-sided 95 % quantiles of Student's t by degrees of freedom (numpy has no t distribution).
T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}
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


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of t with df degrees of freedom (the nearest tabled df at or below)."""
    if df < 1:
        return math.nan
    return T975[max(k for k in T975 if k <= df)] if df <= 120 else 1.960


@dataclass
class Interval:
    """A mean over seeds with its 95 % interval; no interval below MIN_SEEDS seeds."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values) -> Interval | None:
        """The t-interval across independent values (seeds)."""
        values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
        if values.size == 0:
            return None
        mean = float(values.mean())
        if values.size < MIN_SEEDS:
            return cls(mean, math.nan, math.nan, int(values.size))
        half = t_quantile(values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)
        return cls(mean, mean - half, mean + half, int(values.size))

    @property
    def known(self) -> bool:
        return self.n >= MIN_SEEDS and np.isfinite(self.low) and np.isfinite(self.high)

    @property
    def above_zero(self) -> bool:
        return self.known and self.low > 0

    @property
    def below_zero(self) -> bool:
        return self.known and self.high < 0

    def scaled(self, factor: float) -> Interval:
        low, high = sorted((self.low * factor, self.high * factor))
        return Interval(self.mean * factor, low, high, self.n)

    def text(self, digits: int = 3) -> str:
        def number(x: float) -> str:
            return "0" if abs(x) < 1e-9 else f"{x:.{digits}g}"

        if not self.known:
            return f"{number(self.mean)} ({self.n} seed{'s' if self.n != 1 else ''}: no interval)"
        return f"{number(self.mean)} [{number(self.low)}, {number(self.high)}] (n={self.n})"


# -- item scores, the answer prior and the intervals -------------------------------------------------------------


@dataclass
class ItemScores:
    """`item_scores.jsonl`: per-test-item scores per run, and the VQA question type of each item."""

    scores: dict[str, np.ndarray]
    question_types: dict[str, list[str]]  # task -> one type per test item
    problems: list[str]


def load_item_scores(path: Path) -> ItemScores | None:
    """The item file, or None when there is none; malformed lines are skipped and named in `problems`."""
    if not path.is_file():
        return None
    scores, types, problems, lengths = {}, {}, [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            values = np.asarray(record["scores"], dtype=float)
            run, task = str(record["run"]), str(record["task"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            problems.append(f"line {number} is not a run's item scores (needs run, task and a list of scores)")
            continue
        if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
            problems.append(f"line {number} ({run}): scores must be a non-empty list of numbers")
            continue
        expected = lengths.setdefault(task, values.size)
        if values.size != expected:
            problems.append(f"{run}: {values.size} item scores where the first {task} run has {expected}")
            continue
        scores[run] = values
        if record.get("question_types") and task not in types:
            types[task] = [str(t) for t in record["question_types"]]
    return ItemScores(scores, types, problems)


@dataclass
class Prior:
    """The answer prior on VQA's test split: overall, per question type and per test item."""

    accuracy: float
    per_type: dict[str, float]
    items: np.ndarray
    source: str
    question_types: list[str] | None = None  # per test item, to check the item file lists the same items


def answer_prior_from_dataset(source: str) -> Prior:
    """Score the majority-training-answer-per-type baseline on the test split of the VQA dataset `source`."""
    from training.data.dataset import load_dataset
    from training.paths import REPO_ROOT

    path = source
    if source and not Path(source).exists() and (REPO_ROOT / source).exists():
        path = str(REPO_ROOT / source)  # the sweep records repository-relative sources
    dataset = load_dataset(path, "vqa")
    from training.metrics.vqa import vqa_scores
    from training.run.tasks import answer_prior  # imports torch: only once there is a dataset to score

    prior = answer_prior(dataset)
    test = dataset.split("test")
    # answer_prior keeps the means only; the paired intervals need the prior's score on each test item.
    items = vqa_scores([prior["answers"].get(e.question_type, "") for e in test], [e.answers for e in test])
    return Prior(
        float(prior["accuracy"]),
        dict(prior.get("per_type") or {}),
        np.asarray(items["per_sample"]),
        source,
        [str(e.question_type) for e in test],
    )


def find_prior(frame, meta: dict) -> tuple[Prior | None, str]:
    """The answer prior for the table's VQA dataset, or None and the reason it could not be computed."""
    vqa = frame[frame.task == "vqa"]
    if vqa.empty:
        return None, "the table has no VQA runs"
    sources = set(vqa["dataset_source"].dropna().astype(str)) if "dataset_source" in vqa else set()
    source = ((meta.get("datasets") or {}).get("vqa") or {}).get("source")
    if source is None and len(sources) > 1:
        return None, f"the VQA runs name {len(sources)} datasets ({', '.join(sorted(sources))})"
    source = source or (sources.pop() if sources else None)
    if source is None:
        return None, "neither `sweep.json` nor the table names the VQA dataset (column `dataset_source`)"
    try:
        return answer_prior_from_dataset(source), ""
    except (UserError, OSError) as exc:  # a dataset moved or not at hand: the rest of the report still stands
        return None, f"the VQA dataset `{source}` could not be read ({exc})"


class Stats:
    """Every interval of one report, from one set of draws: per task, a hierarchical paired bootstrap when every
    run of the task has item scores, a t-interval across seeds otherwise.

    A run's value is an array: its table metric, then (bootstrap) its mean over each resample of the test items,
    the same resamples for every run of the task. Statistics are built from these arrays per seed and handed to
    `interval`, which resamples the seeds."""

    def __init__(self, frame, items: ItemScores | None, prior: Prior | None = None, resamples: int = RESAMPLES):
        self.resamples = resamples
        self.items = items
        self.weights: dict[str, np.ndarray] = {}
        self.why_not: dict[str, str] = {}
        self._cache: dict[str, np.ndarray] = {}
        for index, task in enumerate(MAIN_METRIC):
            reason = self._eligible(frame, task)
            if reason:
                self.why_not[task] = reason
                continue
            n = len(items.scores[str(_task_rows(frame, task).run.iloc[0])])
            counts = np.random.default_rng([BOOTSTRAP_SEED, index]).multinomial(n, np.full(n, 1 / n), resamples)
            self.weights[task] = counts.T / n  # items x resamples: column b averages resample b
        self.prior = prior
        if prior is not None and "vqa" in self.weights:
            listed = items.question_types.get("vqa")
            if prior.items.size != self.weights["vqa"].shape[0]:
                self.why_not["prior"] = (
                    f"the prior has {prior.items.size} test items and the item scores "
                    f"{self.weights['vqa'].shape[0]}: the gain over it is paired by seed only"
                )
            elif listed and prior.question_types and listed != prior.question_types:
                self.why_not["prior"] = (
                    "the item file's question types are not the dataset's test split in order: "
                    "the gain over the prior is paired by seed only"
                )

    def _eligible(self, frame, task: str) -> str:
        rows = _task_rows(frame, task)
        if rows.empty:
            return "no runs"
        if self.items is None:
            return f"no `{ITEM_FILE}`"
        if "run" not in rows:
            return "the table has no `run` column to match item scores by"
        missing = [r for r in rows.run if str(r) not in self.items.scores]
        if missing:
            return f"{len(missing)} of {len(rows)} runs have no item scores (e.g. `{missing[0]}`)"
        return ""

    def values(self, rows, task: str) -> np.ndarray:
        """One row per run: the table metric, then its item-resampled means when the task is bootstrapped."""
        base = rows[MAIN_METRIC[task]].to_numpy(dtype=float)[:, None]
        if task not in self.weights:
            return base
        resampled = []
        for run in rows.run.astype(str):
            if run not in self._cache:
                self._cache[run] = self.items.scores[run] @ self.weights[task]
            resampled.append(self._cache[run])
        return np.hstack([base, np.stack(resampled)])

    def prior_values(self, task: str) -> np.ndarray | None:
        """The answer prior as a run's value array (item-resampled when paired by item is possible)."""
        if self.prior is None or task != "vqa":
            return None
        if task in self.weights and "prior" not in self.why_not:
            return np.concatenate([[self.prior.accuracy], self.prior.items @ self.weights[task]])
        return np.full(1 + (self.resamples if task in self.weights else 0), self.prior.accuracy)

    def interval(self, per_seed: dict, denominator: dict | None = None) -> Interval | None:
        """Mean over seeds of per-seed value arrays (divided by the mean of `denominator`'s), with its interval."""
        seeds = sorted(s for s in per_seed if denominator is None or s in denominator)
        if not seeds:
            return None
        values = np.stack([per_seed[s] for s in seeds])
        scale = np.stack([denominator[s] for s in seeds]) if denominator is not None else np.ones_like(values)
        k = len(seeds)
        point = float(values[:, 0].mean() / scale[:, 0].mean())
        if k < MIN_SEEDS or not np.isfinite(point):
            return Interval(point, math.nan, math.nan, k)
        t = Interval.of(values[:, 0]).scaled(1 / scale[:, 0].mean())
        if values.shape[1] == 1:
            return t
        draws = np.random.default_rng([BOOTSTRAP_SEED, k]).integers(0, k, size=(k, values.shape[1] - 1))
        columns = np.arange(values.shape[1] - 1)
        resampled = values[:, 1:][draws, columns].mean(0) / scale[:, 1:][draws, columns].mean(0)
        tail = 100 * (1 - LEVEL) / 2
        low, high = np.nanpercentile(resampled, [tail, 100 - tail])
        return Interval(point, min(float(low), t.low), max(float(high), t.high), k)


# -- curves along the two axes ---------------------------------------------------------------------------------


@dataclass
class Curve:
    """One method's metric along one axis: the means per x, and the slope per decade with its interval."""

    task: str
    method: str
    axis: str  # "data" or "params"
    held: str  # what was held fixed, e.g. "budget 32k" or "100% data"
    xs: list[float]
    means: list[float]
    sds: list[float]
    seeds: int
    slope: Interval | None
    relative: Interval | None  # slope / the metric at the largest x
    best: dict = field(default_factory=dict)  # params axis: best budget, interior, best - largest


def _seed_arrays(rows, values: np.ndarray, key: str) -> dict[int, dict]:
    """seed -> {key value -> mean value array of that seed's rows at it}."""
    out: dict[int, dict] = {}
    for seed, x, value in zip(rows.seed, rows[key], values, strict=True):
        out.setdefault(int(seed), {}).setdefault(x, []).append(value)
    return {s: {x: np.mean(v, axis=0) for x, v in by_x.items()} for s, by_x in out.items()}


def seed_slopes(rows, x: str, values: np.ndarray) -> tuple[dict, dict]:
    """Per seed: the OLS slope of the value arrays on log10(x), and the value at the largest x (seeds with two or
    more distinct positive x only)."""
    slopes, levels = {}, {}
    for seed, points in _seed_arrays(rows, values, x).items():
        xs = sorted(v for v in points if v > 0)
        if len(xs) >= 2:
            ys = np.stack([points[v] for v in xs])
            slopes[seed] = np.polyfit(np.log10(np.asarray(xs, dtype=float)), ys, 1)[0]
            levels[seed] = points[xs[-1]]
    return slopes, levels


def per_seed_mean(rows, values: np.ndarray) -> dict[int, np.ndarray]:
    """seed -> the mean value array of that seed's rows."""
    out: dict[int, list] = {}
    for seed, value in zip(rows.seed, values, strict=True):
        out.setdefault(int(seed), []).append(value)
    return {s: np.mean(v, axis=0) for s, v in out.items()}


def _task_rows(frame, task: str):
    metric = MAIN_METRIC[task]
    if metric not in frame:
        return frame.iloc[0:0]
    return frame[(frame.task == task) & frame[metric].notna()]


def reference_budget(rows):
    """The budget a method was run at with the most data fractions (ties: the smallest such budget)."""
    counts = rows[rows.budget.notna()].groupby("budget").data_fraction.nunique()
    if counts.empty:
        return None
    size = rows.groupby("budget").trainable_params.median()
    return min(counts[counts == counts.max()].index, key=lambda b: size[b])


def unbudgeted_label(method: str, rows) -> str:
    """What a run without a requested budget trains: every weight (full fine-tuning), or a method's one fixed
    count ((IA)³: no knob)."""
    if method == "full" or "trainable_params" not in rows or rows.trainable_params.dropna().empty:
        return "all weights"
    return f"its fixed {int(rows.trainable_params.median()):,} parameters"


def data_curves(frame, task: str, stats: Stats | None = None) -> list[Curve]:
    """Metric against data fraction, per method, at its reference budget (full fine-tuning: all weights)."""
    rows = _task_rows(frame, task)
    rows = rows[rows.data_fraction.notna()]
    curves = []
    for method in [*PEFT_METHODS, "full"]:
        mine = rows[rows.method == method]
        budget = reference_budget(mine) if method != "full" else None
        chosen = mine[mine.budget == budget] if budget is not None else mine
        if chosen.data_fraction.nunique() >= 2:
            curves.append(
                _curve(
                    chosen,
                    task,
                    method,
                    "data",
                    "data_fraction",
                    f"budget {budget}" if budget is not None else unbudgeted_label(method, chosen),
                    stats,
                )
            )
    return curves


def param_curves(frame, task: str, stats: Stats | None = None) -> list[Curve]:
    """Metric against trainable parameters, per PEFT method, at the largest data fraction it was run with."""
    rows = _task_rows(frame, task)
    rows = rows[rows.budget.notna()]
    curves = []
    for method in PEFT_METHODS:
        mine = rows[rows.method == method]
        if mine.empty:
            continue
        fraction = mine.data_fraction.max()
        chosen = mine[mine.data_fraction == fraction]
        if chosen.trainable_params.nunique() >= 2:
            curve = _curve(chosen, task, method, "params", "trainable_params", f"{fraction:.0%} data", stats)
            curve.best = best_budget(chosen, task, stats)
            curves.append(curve)
    return curves


def _curve(rows, task: str, method: str, axis: str, x: str, held: str, stats: Stats | None) -> Curve:
    metric = MAIN_METRIC[task]
    table = rows.groupby(x)[metric].agg(["mean", "std"]).sort_index()
    slope = relative = None
    if stats is not None:
        slopes, levels = seed_slopes(rows, x, stats.values(rows, task))
        slope, relative = stats.interval(slopes), stats.interval(slopes, levels)
    return Curve(
        task,
        method,
        axis,
        held,
        [float(v) for v in table.index],
        [float(v) for v in table["mean"]],
        [float(v) if np.isfinite(v) else 0.0 for v in table["std"]],
        int(rows.seed.nunique()),
        slope,
        relative,
    )


def best_budget(rows, task: str, stats: Stats | None) -> dict:
    """Where the best mean lies among the budgets, and best minus largest, paired by seed (and item)."""
    by_size = rows.groupby("trainable_params")[MAIN_METRIC[task]].mean().sort_index()
    order = list(by_size.index)
    best, largest = by_size.idxmax(), order[-1]
    index = order.index(best)
    diff = None
    if stats is not None and best != largest:
        points = _seed_arrays(rows, stats.values(rows, task), "trainable_params")
        diff = stats.interval({s: p[best] - p[largest] for s, p in points.items() if best in p and largest in p})
    return {
        "best_params": int(best),
        "best_index": index,
        "budgets": len(order),
        "interior": 0 < index < len(order) - 1,
        "best_minus_largest": diff,
    }


# -- verdicts --------------------------------------------------------------------------------------------------


@dataclass
class Finding:
    number: int
    claim: str
    statistic: str
    verdict: str
    robust: str  # the verdict without each task's smallest data fraction
    summary: str
    table: list[str]
    figure: str | None
    discussion: str


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


def without_smallest_fraction(frame):
    """The table without each task's smallest data fraction (a task run at one fraction keeps it)."""
    keep = np.ones(len(frame), dtype=bool)
    for task in frame.task.unique():
        fractions = frame.loc[frame.task == task, "data_fraction"].dropna().unique()
        if len(fractions) >= 2:
            keep &= ~((frame.task == task) & (frame.data_fraction == min(fractions))).to_numpy()
    return frame[keep]


def _above(interval: Interval | None) -> bool | None:
    return None if interval is None or not interval.known else bool(interval.above_zero)


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _methods_in(frame, task: str) -> list[str]:
    return [m for m in PEFT_METHODS if (_task_rows(frame, task).method == m).any()]


def judged_methods(frame) -> list[str]:
    """The PEFT methods the findings judge: those the table has runs of (a sweep need not run every method in
    the catalog, and one it left out is not a failure of the paper's claim)."""
    return [m for m in PEFT_METHODS if (frame.method == m).any()]


def judged_checks(method: str, checks: list[bool | None]) -> list[bool | None]:
    """The (data, parameters) checks a method is judged on: a method without a knob (a fixed count) has no
    parameter axis, so only its data check."""
    return checks[:1] if method in NO_BUDGET_METHODS else checks


def judged_state(method: str, checks: list[bool | None]) -> str:
    """A method's state from the checks it is judged on."""
    return unit_state(judged_checks(method, checks))


def vqa_units(frame, stats: Stats, methods: list[str]) -> dict[str, dict]:
    """Finding 1 per PEFT method: the data and parameter slopes and the method's state."""
    data = {c.method: c for c in data_curves(frame, "vqa", stats)}
    params = {c.method: c for c in param_curves(frame, "vqa", stats)}
    units = {}
    for method in methods:
        d, p = data.get(method), params.get(method)
        checks = [_above(d.slope if d else None), _above(p.slope if p else None)]
        units[method] = {"data": d, "params": p, "checks": checks, "state": judged_state(method, checks)}
    units["full"] = {"data": data.get("full")}
    return units


def finding_vqa(frame, stats: Stats) -> Finding:
    peft = judged_methods(frame)
    units, robust = vqa_units(frame, stats, peft), vqa_units(without_smallest_fraction(frame), stats, peft)
    verdict, robust_verdict = overall([units[m]["state"] for m in peft]), overall([robust[m]["state"] for m in peft])
    both = [m for m in peft if units[m]["state"] == REPRODUCED and m not in NO_BUDGET_METHODS]
    data_only = [m for m in peft if units[m]["state"] == REPRODUCED and m in NO_BUDGET_METHODS]
    flat_data = [m for m in peft if units[m]["checks"][0] is False]
    flat_params = [m for m in peft if units[m]["checks"][1] is False]
    unknown = [m for m in peft if None in judged_checks(m, units[m]["checks"])]
    robust_flat = [m for m in peft if robust[m]["checks"][0] is False]
    summary = (
        f"Accuracy rises with data and with parameters for {_names(both)}"
        + (f"; with data, a fixed count's only axis, for {_names(data_only)}" if data_only else "")
        + ". Does not rise with data: "
        f"{_names(flat_data)}; with parameters: {_names(flat_params)}"
        + (f"; not judged on an axis: {_names(unknown)}" if unknown else "")
        + f". Without the smallest data fraction: {robust_verdict} (does not rise with data: "
        f"{_names(robust_flat)})."
    )
    table = [
        "| method | data slope per decade | parameter slope per decade | verdict | without smallest fraction |",
        "|---|---|---|---|---|",
    ]
    for method in [*peft, "full"]:
        d, p = units[method]["data"], units[method].get("params")
        data_text = f"{d.held}: {d.slope.text()}" if d and d.slope else "-"
        param_text = f"{p.held}: {p.slope.text()}" if p and p.slope else "-"
        state = units[method].get("state", "reference, not counted")
        table.append(f"| {method} | {data_text} | {param_text} | {state} | {robust[method].get('state', '-')} |")
    reasons = []
    if verdict == UNDETERMINED:
        reasons.append(_too_few(frame, "vqa"))
    if flat_data or flat_params:
        reasons.append(
            "A method that does not move on an axis has either reached what this model can learn of "
            "the task at the smallest point (look at its level in the gains table), or not learnt it at "
            "any point (a level near the answer prior); the per-question-type table says which."
        )
    if verdict == REPRODUCED:
        reasons.append(
            "Every method gains from both axes, as in the paper. The evidence is a small BLIP on synthetic "
            "scenes, not mPLUG on VQAv2; the direction reproduces, the magnitudes are not comparable."
        )
    return Finding(
        1,
        "VQA (a task inconsistent with pre-training) improves with more data and more trainable parameters.",
        "Per PEFT method, the OLS slope of VQA accuracy on log10(data fraction) at its reference budget, "
        "and on log10(trainable parameters) at the largest fraction, fitted per seed and averaged; both "
        "intervals above zero: reproduced.",
        verdict,
        robust_verdict,
        summary,
        table,
        "figures/data_size.png",
        " ".join(reasons),
    )


def flatness_units(frame, task: str, stats: Stats, methods: list[str]) -> dict[str, dict]:
    """Finding 2's test per PEFT method on one task: flat in data, interior optimum in parameters."""
    data = {c.method: c for c in data_curves(frame, task, stats)}
    params = {c.method: c for c in param_curves(frame, task, stats)}
    units = {}
    for method in methods:
        d, p = data.get(method), params.get(method)
        flat = None
        if d and d.relative and d.relative.known:
            flat = bool(-FLAT_TOLERANCE <= d.relative.low and d.relative.high <= FLAT_TOLERANCE)
        optimum = None
        if p and p.seeds >= MIN_SEEDS:
            diff = p.best.get("best_minus_largest")
            optimum = bool(p.best["interior"] and diff is not None and diff.above_zero)
        units[method] = {
            "data": d,
            "params": p,
            "checks": [flat, optimum],
            "state": judged_state(method, [flat, optimum]),
        }
    return units


def _separates(caption: dict, vqa: dict) -> tuple[bool, bool]:
    """Whether each part (flat, optimum) passes for more methods on captioning than on VQA."""
    return tuple(
        sum(u["checks"][i] is True for u in caption.values()) > sum(u["checks"][i] is True for u in vqa.values())
        for i in (0, 1)
    )


def _caption_verdict(caption: dict, vqa: dict) -> str:
    verdict = overall([u["state"] for u in caption.values()])
    return PARTLY if verdict == REPRODUCED and not all(_separates(caption, vqa)) else verdict


def finding_caption(frame, stats: Stats) -> Finding:
    robust_frame = without_smallest_fraction(frame)
    methods = judged_methods(frame)
    views = {task: flatness_units(frame, task, stats, methods) for task in MAIN_METRIC}
    robust = {task: flatness_units(robust_frame, task, stats, methods) for task in MAIN_METRIC}
    verdict = _caption_verdict(views["caption"], views["vqa"])
    robust_verdict = _caption_verdict(robust["caption"], robust["vqa"])
    caption = views["caption"]
    passing = {
        task: [sum(u["checks"][i] is True for u in views[task].values()) for i in (0, 1)] for task in MAIN_METRIC
    }
    separates = _separates(caption, views["vqa"])
    summary = (
        f"Captioning: flat in data for {_names([m for m, u in caption.items() if u['checks'][0]])}, "
        f"not flat for {_names([m for m, u in caption.items() if u['checks'][0] is False])}; interior optimum "
        f"for {_names([m for m, u in caption.items() if u['checks'][1]])}, no interior optimum for "
        f"{_names([m for m, u in caption.items() if u['checks'][1] is False])}. The same test on VQA: flat for "
        f"{passing['vqa'][0]} and an interior optimum for {passing['vqa'][1]} of {len(methods)} methods "
        f"(captioning: {passing['caption'][0]} and {passing['caption'][1]}), so the flatness part "
        f"{'separates' if separates[0] else 'does not separate'} the tasks and the optimum part "
        f"{'separates' if separates[1] else 'does not separate'} them. Without the smallest data fraction: "
        f"{robust_verdict}."
    )
    table = [
        "| method | task | data slope / level per decade | flat | best budget (params) | best - largest | "
        "interior optimum | verdict | without smallest fraction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        for task in MAIN_METRIC:
            unit, d, p = views[task][method], views[task][method]["data"], views[task][method]["params"]
            relative = d.relative.text(2) if d and d.relative else "-"
            where, diff = "-", "-"
            if p and p.best:
                where = (
                    f"{p.best['best_params']:,} ({'interior' if p.best['interior'] else 'edge'}, "
                    f"{p.best['best_index'] + 1} of {p.best['budgets']})"
                )
                d_best = p.best.get("best_minus_largest")
                diff = d_best.text() if d_best else "best is the largest"
            flat, optimum = (_yes(c) for c in unit["checks"])
            table.append(
                f"| {method} | {task} | {relative} | {flat} | {where} | {diff} | {optimum} | "
                f"{unit['state'] if task == 'caption' else 'control'} | "
                f"{robust[task][method]['state'] if task == 'caption' else '-'} |"
            )
    reasons = []
    if verdict == UNDETERMINED:
        reasons.append(_too_few(frame, "caption"))
    if passing["caption"][0] < len(caption):
        reasons.append(
            "Captioning that still gains from data is a task the pre-training has not finished: the "
            "embedded model is small and briefly pre-trained, so some of the caption task's phrasing is "
            "learnt from the task data, which a large pre-trained model already knows."
        )
    if passing["caption"][1] < len(caption):
        reasons.append(
            "An interior optimum needs the largest budgets to over-fit or drift from the pre-trained "
            "behaviour; with early stopping on validation a larger adapter stops before it hurts. Picking "
            "the best of several noisy budgets also favours an interior winner by chance, which is why "
            "the best must beat the largest by a paired interval."
        )
    if not all(separates):
        reasons.append(
            "A part that passes as often on VQA as on captioning does not tell the tasks apart, so it "
            "cannot be evidence that consistency with pre-training is what makes captioning flat."
        )
    return Finding(
        2,
        "Captioning (consistent with pre-training) is flat in data size and has an optimal, interior parameter size.",
        "Per PEFT method, the data slope relative to the metric at the largest fraction must lie within "
        f"+-{FLAT_TOLERANCE:.0%} per decade (whole interval); at the largest fraction the best budget must "
        "be interior and beat the largest (paired interval above zero). Run on both tasks; VQA is the "
        "control.",
        verdict,
        robust_verdict,
        summary,
        table,
        "figures/param_size.png",
        " ".join(reasons),
    )


def _yes(check: bool | None) -> str:
    return {True: "yes", False: "no", None: "-"}[check]


CELL = ("budget", "data_fraction", "seed", "towers")


def _cells(rows, values: np.ndarray) -> dict[tuple, np.ndarray]:
    """(budget, fraction, seed, towers) -> the mean value array of the rows in that cell."""
    keys = rows[list(CELL)].astype(object).where(rows[list(CELL)].notna(), "-")
    grouped: dict[tuple, list] = {}
    for key, value in zip(keys.itertuples(index=False, name=None), values, strict=True):
        grouped.setdefault(key, []).append(value)
    return {k: np.mean(v, axis=0) for k, v in grouped.items()}


@dataclass
class Gap:
    """Layer minus embedding at matched cells, for one pair (or the pooled families) on one task and towers."""

    task: str
    towers: str
    layer: str
    embedding: str
    cells: int
    wins: int
    gap: Interval | None

    @property
    def state(self) -> str:
        return unit_state([_above(self.gap)])


def paired_gap(
    layer_cells: dict, embedding_cells: dict, task: str, towers: str, layer: str, embedding: str, stats: Stats
) -> Gap | None:
    matched = sorted(set(layer_cells) & set(embedding_cells), key=str)
    if towers != "all":
        matched = [k for k in matched if k[3] == towers]
    if not matched:
        return None
    per_seed: dict[int, list] = {}
    for key in matched:
        per_seed.setdefault(int(key[2]), []).append(layer_cells[key] - embedding_cells[key])
    wins = sum(float(layer_cells[k][0]) > float(embedding_cells[k][0]) for k in matched)
    return Gap(
        task,
        towers,
        layer,
        embedding,
        len(matched),
        wins,
        stats.interval({s: np.mean(v, axis=0) for s, v in per_seed.items()}),
    )


def family_gaps(frame, task: str, stats: Stats) -> tuple[list[Gap], list[Gap], Gap | None]:
    """(per pair and tower setting, per pair pooled over towers, the two families pooled)."""
    rows = _task_rows(frame, task)
    rows = fixed_counts_at_nearest_budget(rows[rows.method.isin(PEFT_METHODS)])
    if rows.empty:
        return [], [], None
    values = stats.values(rows, task)
    by_method = {m: _cells(rows[rows.method == m], values[(rows.method == m).to_numpy()]) for m in rows.method.unique()}
    layers = [m for m in PEFT_METHODS if FAMILY[m] == LAYER and m in by_method]
    embeddings = [m for m in PEFT_METHODS if FAMILY[m] == EMBEDDING and m in by_method]
    towers = sorted({k[3] for cells in by_method.values() for k in cells}, key=str)
    per_towers, pooled = [], []
    for layer in layers:
        for embedding in embeddings:
            for setting in towers:
                gap = paired_gap(by_method[layer], by_method[embedding], task, setting, layer, embedding, stats)
                per_towers += [gap] if gap else []
            gap = paired_gap(by_method[layer], by_method[embedding], task, "all", layer, embedding, stats)
            pooled += [gap] if gap else []
    families = None
    if layers and embeddings:
        families = paired_gap(
            _family_cells(by_method, layers), _family_cells(by_method, embeddings), task, "all", LAYER, EMBEDDING, stats
        )
    return per_towers, pooled, families


def fixed_counts_at_nearest_budget(rows):
    """A method without a knob ((IA)^3) trains one fixed count and its runs have no requested budget, so no cell
    would match them. For the pairing, each such run takes the budget, among the other methods' runs on the same
    towers, whose median trainable count is nearest its own on a log scale (5.7k for (IA)^3's 5,120 on the
    embedded default's text decoder): it meets the others where they train about as much as it does."""
    fixed = rows.method.isin(NO_BUDGET_METHODS) & rows.budget.isna()
    if not fixed.any():
        return rows
    budgeted = rows[~fixed & rows.budget.notna()]
    sizes = budgeted.groupby(["towers", "budget"]).trainable_params.median()
    rows = rows.copy()
    for index in rows.index[fixed]:
        towers, count = rows.at[index, "towers"], rows.at[index, "trainable_params"]
        if towers not in sizes.index.get_level_values(0) or not count > 0:
            continue
        options = sizes.loc[towers]
        rows.at[index, "budget"] = (np.log(options.astype(float)) - np.log(float(count))).abs().idxmin()
    return rows


def _family_cells(by_method: dict, methods: list[str]) -> dict:
    """Per cell, the mean over the family's methods run there."""
    keys = set().union(*(by_method[m] for m in methods))
    return {k: np.mean([by_method[m][k] for m in methods if k in by_method[m]], axis=0) for k in keys}


def finding_families(frame, stats: Stats) -> Finding:
    views = {task: family_gaps(frame, task, stats) for task in MAIN_METRIC}
    robust = {task: family_gaps(without_smallest_fraction(frame), task, stats) for task in MAIN_METRIC}
    units = [g for task in MAIN_METRIC for g in views[task][0]]
    robust_units = {(g.task, g.towers, g.layer, g.embedding): g for t in MAIN_METRIC for g in robust[t][0]}
    # A task with no matched pair is one undetermined unit: the paper's claim covers both tasks.
    absent = [task for task in MAIN_METRIC if not views[task][0]]
    verdict = overall([g.state for g in units] + [UNDETERMINED] * len(absent))
    robust_verdict = overall(
        [g.state for g in robust_units.values()] + [UNDETERMINED] * sum(not robust[t][0] for t in MAIN_METRIC)
    )
    failing = [
        f"{g.layer} vs {g.embedding} ({g.task}, towers {g.towers}: {g.state})" for g in units if g.state != REPRODUCED
    ] + [f"{task} (no matched cells)" for task in absent]
    summary = (
        f"{sum(g.state == REPRODUCED for g in units)} of {len(units)} pairs x task x towers hold. "
        f"Not holding: {_names(failing)}. Without the smallest data fraction: {robust_verdict}."
    )
    table = [
        "| task | towers | layer - embedding | matched cells | layer ahead | difference | verdict | without "
        "smallest fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in MAIN_METRIC:
        per_towers, pooled, families = views[task]
        for gap in per_towers:
            twin = robust_units.get((gap.task, gap.towers, gap.layer, gap.embedding))
            table.append(_gap_row(gap, gap.state, twin.state if twin else "-"))
        if len({g.towers for g in per_towers}) > 1:
            table += [_gap_row(gap, "(pooled)", "-") for gap in pooled]
        if families:
            table.append(_gap_row(families, "(families pooled)", "-"))
    reasons = []
    if verdict == UNDETERMINED:
        reasons.append(
            "Too few seeds or no budget at which both families were run: each pair needs at least "
            f"{MIN_SEEDS} seeds and budgets inside both methods' ranges."
        )
    elif verdict != REPRODUCED:
        reasons.append(
            "A pair where the embedding method keeps up says that, on this model and at these budgets, "
            "the family alone does not decide quality; the pooled rows show whether pooling would have "
            "hidden it."
        )
    return Finding(
        3,
        "Layer composition (LoRA, adapters) beats embedding composition (prompt, prefix tuning).",
        "At each matched cell (equal requested budget, data fraction, seed and towers; a method without a knob at "
        "the budget nearest its count), layer method minus embedding method, averaged per seed; per pair, task "
        "and tower setting. Interval above zero: reproduced.",
        verdict,
        robust_verdict,
        summary,
        table,
        "figures/families.png",
        " ".join(reasons),
    )


def _gap_row(gap: Gap, state: str, robust: str) -> str:
    return (
        f"| {gap.task} | {gap.towers} | {gap.layer} - {gap.embedding} | {gap.cells} | {gap.wins} | "
        f"{gap.gap.text() if gap.gap else '-'} | {state} | {robust} |"
    )


def _too_few(frame, task: str) -> str:
    rows = _task_rows(frame, task)
    if rows.empty:
        return f"The table has no {task} runs: nothing to judge."
    seeds = rows.groupby(["method", "budget", "data_fraction"], dropna=False).seed.nunique().max()
    return (
        f"Too few seeds to judge ({seeds} per point; an interval needs at least {MIN_SEEDS}, the protocol uses "
        f"{PROTOCOL_SEEDS}) or too few points along the axes."
    )


# -- gains, question types, how far each method gets ---------------------------------------------------------


def gains_table(frame, stats: Stats) -> list[str]:
    """Per task and method, at full data and the reference budget: the metric, minus zero-shot, minus the prior."""
    lines = ["| task | method | held | metric | minus zero-shot | minus answer prior |", "|---|---|---|---|---|---|"]
    for task in MAIN_METRIC:
        rows = _task_rows(frame, task)
        if rows.empty:
            continue
        zero = rows[rows.method == "zero-shot"]
        zero_seeds = per_seed_mean(zero, stats.values(zero, task)) if not zero.empty else {}
        # Zero-shot does not depend on the seed; a seed it was not run with is paired with its mean.
        zero_any = np.mean(list(zero_seeds.values()), axis=0) if zero_seeds else None
        prior = stats.prior_values(task)
        for method, budget, mine, held in reference_cells(rows):
            seeds = per_seed_mean(held, stats.values(held, task))
            level = stats.interval(seeds)
            over_zero = (
                stats.interval({s: v - zero_seeds.get(s, zero_any) for s, v in seeds.items()})
                if zero_any is not None
                else None
            )
            over_prior = stats.interval({s: v - prior for s, v in seeds.items()}) if prior is not None else None
            label = f"{mine.data_fraction.max():.0%} data" + (f", budget {budget}" if budget is not None else "")
            lines.append(
                f"| {task} | {method} | {label} | {level.text() if level else '-'} | "
                f"{over_zero.text() if over_zero else '-'} | {over_prior.text() if over_prior else '-'} |"
            )
    return lines


def reference_cells(rows):
    """Per PEFT method and full fine-tuning: (method, its reference budget, its rows, its rows at the largest
    data fraction and that budget), the cell the gains and per-type tables read. A method whose reference budget
    has no run at that fraction yet (a part-done grid) has no such cell and is left out."""
    for method in [*PEFT_METHODS, "full"]:
        mine = rows[(rows.method == method) & rows.data_fraction.notna()]
        if mine.empty:
            continue
        budget = reference_budget(mine) if method != "full" else None
        held = mine[
            (mine.data_fraction == mine.data_fraction.max()) & ((mine.budget == budget) if budget is not None else True)
        ]
        if not held.empty:
            yield method, budget, mine, held


def question_type_table(frame, prior: Prior | None) -> list[str]:
    """VQA accuracy per question type per method at full data and its reference budget, beside the prior's."""
    rows = _task_rows(frame, "vqa")
    types = sorted(c.removeprefix("accuracy_") for c in frame.columns if c.startswith("accuracy_"))
    if rows.empty or not types:
        return []
    lines = ["| method | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    if prior is not None:
        lines.append("| answer prior | " + " | ".join(f"{prior.per_type.get(t, math.nan):.1f}" for t in types) + " |")
    zero = rows[rows.method == "zero-shot"]
    if not zero.empty:
        lines.append("| zero-shot | " + " | ".join(f"{zero[f'accuracy_{t}'].mean():.1f}" for t in types) + " |")
    for method, budget, _, held in reference_cells(rows):
        label = method + (f" ({budget})" if budget is not None else "")
        lines.append(f"| {label} | " + " | ".join(f"{held[f'accuracy_{t}'].mean():.1f}" for t in types) + " |")
    return lines


def reach_table(frame, stats: Stats) -> list[str]:
    """Per task and method: its best mean over the grid's cells, its validation score and share of test items
    scored 0 there, and how its runs stopped."""
    lines = [
        "| task | method | best mean (at) | validation there | test items scored 0 there | training loss there | "
        "median epochs | stop reasons | learning rate from |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in MAIN_METRIC:
        rows = _task_rows(frame, task)
        for method in [*PEFT_METHODS, "full"]:
            mine = rows[rows.method == method]
            if mine.empty:
                continue
            means = mine.fillna({"budget": "-"}).groupby(["budget", "data_fraction"])[MAIN_METRIC[task]].mean()
            if means.empty:
                continue
            (budget, fraction), best = means.idxmax(), means.max()
            cell = mine[(mine.budget.fillna("-") == budget) & (mine.data_fraction == fraction)]
            validation = cell.val_metric.mean()
            loss = cell.train_loss.mean()
            zeros = "-"
            if task in stats.weights:  # e.g. VQA answers that earn no credit, empty ones included
                zeros = f"{np.mean([np.mean(stats.items.scores[str(r)] == 0) for r in cell.run]):.0%}"
            epochs = mine.epochs_run.median()
            reasons = mine.stop_reason.dropna().value_counts()
            lr = ", ".join(sorted(mine.lr_source.dropna().astype(str).unique())) or "-"
            at = f"budget {budget}" if budget != "-" else unbudgeted_label(method, cell)
            lines.append(
                f"| {task} | {method} | {best:.3g} ({at}, {fraction:.0%} data) | "
                f"{f'{validation:.3g}' if np.isfinite(validation) else '-'} | {zeros} | "
                f"{f'{loss:.3g}' if np.isfinite(loss) else '-'} | "
                f"{f'{epochs:.3g}' if np.isfinite(epochs) else '-'} | "
                f"{', '.join(f'{k} {v}' for k, v in reasons.items()) or '-'} | {lr} |"
            )
    return lines


# -- figures -----------------------------------------------------------------------------------------------------

COLORS = METHOD_COLOURS


def build_figures(frame) -> dict:
    """name -> plotly figure, for the three findings."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figures = {}
    tasks = [t for t in MAIN_METRIC if (frame.task == t).any()] or list(MAIN_METRIC)
    for name, curves_of, x_title in (
        ("data_size", data_curves, "data fraction (log)"),
        ("param_size", param_curves, "trainable parameters (log)"),
    ):
        fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[f"{t}: {MAIN_METRIC[t]}" for t in tasks])
        for col, task in enumerate(tasks, 1):
            for curve in curves_of(frame, task):
                fig.add_trace(
                    go.Scatter(
                        x=curve.xs,
                        y=curve.means,
                        error_y={"type": "data", "array": curve.sds},
                        mode="lines+markers",
                        name=curve.method,
                        legendgroup=curve.method,
                        showlegend=col == 1,
                        line={"color": COLORS.get(curve.method)},
                    ),
                    1,
                    col,
                )
            _baselines(fig, frame, task, col, include_full=name == "param_size")
            fig.update_xaxes(type="log", title_text=x_title, row=1, col=col)
        fig.update_layout(width=1100, height=430, template="plotly_white", margin={"t": 50, "b": 40})
        figures[name] = fig
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[f"{t}: {MAIN_METRIC[t]}" for t in tasks])
    stats = Stats(frame, None)
    for col, task in enumerate(tasks, 1):
        _, pooled, _ = family_gaps(frame, task, stats)
        shown = [g for g in pooled if g.gap]
        fig.add_trace(
            go.Bar(
                x=[f"{g.layer} - {g.embedding}" for g in shown],
                y=[g.gap.mean for g in shown],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [g.gap.high - g.gap.mean if g.gap.known else 0 for g in shown],
                    "arrayminus": [g.gap.mean - g.gap.low if g.gap.known else 0 for g in shown],
                },
                showlegend=False,
            ),
            1,
            col,
        )
        fig.update_xaxes(type="category", row=1, col=col)
        fig.update_yaxes(title_text="layer - embedding" if col == 1 else None, row=1, col=col)
    fig.update_layout(
        width=1100,
        height=480,
        template="plotly_white",
        margin={"t": 80, "b": 40},
        title="each layer method minus each embedding method at matched cells (95 % t-interval across seeds)",
    )
    figures["families"] = fig
    return figures


def _baselines(fig, frame, task: str, col: int, include_full: bool) -> None:
    import plotly.graph_objects as go

    metric = MAIN_METRIC[task]
    if metric not in frame:
        return
    rows = frame[frame.task == task]
    zero = rows[rows.method == "zero-shot"][metric].mean()
    if np.isfinite(zero):
        fig.add_hline(
            y=float(zero),
            line_dash="dash",
            line_color="black",
            row=1,
            col=col,
            annotation_text="zero-shot",
            annotation_position="bottom right",
        )
    full = rows[(rows.method == "full") & (rows.data_fraction == rows.data_fraction.max())]
    if include_full and not full.empty:
        fig.add_trace(
            go.Scatter(
                x=[float(full.trainable_params.mean())],
                y=[float(full[metric].mean())],
                error_y={"type": "data", "array": [float(full[metric].std() or 0)]},
                mode="markers",
                marker={"symbol": "diamond", "size": 11, "color": COLORS["full"]},
                name="full",
                showlegend=col == 1,
            ),
            1,
            col,
        )


def render_figures(figures: dict, folder: Path) -> str | None:
    """Write the figures as PNG (plotly + kaleido, which drives a local Chrome/Chromium); None, or why not."""
    import os
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    if "BROWSER_PATH" not in os.environ:
        found = next(
            (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
        )
        if found:
            os.environ["BROWSER_PATH"] = found
    try:
        import plotly.io as pio

        figs = list(figures.values())
        pio.write_images(
            figs,
            [str(folder / f"{name}.png") for name in figures],
            width=[f.layout.width for f in figs],
            height=[f.layout.height for f in figs],
        )
    except Exception as exc:  # kaleido missing, or no browser it can start: the text report still stands
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return None


# -- the report --------------------------------------------------------------------------------------------------


def load_table(path: str | Path):
    import pandas as pd

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
        return None
    if frame.empty or not {"task", "method", "seed"} <= set(frame.columns):
        return None
    for column in ("budget", "family", "towers", *PROTOCOL_COLUMNS):
        if column not in frame:
            frame[column] = None
    for column in ("data_fraction", "trainable_params", "train_s"):
        if column not in frame:
            frame[column] = np.nan
    for column in ("val_metric", "epochs_run", "train_loss"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def build_findings(
    frame, items: ItemScores | None = None, prior: Prior | None = None, stats: Stats | None = None
) -> list[Finding]:
    stats = stats or Stats(frame, items, prior)
    return [finding_vqa(frame, stats), finding_caption(frame, stats), finding_families(frame, stats)]


def build_report(
    results: str | Path = "results/runs.csv",
    out: str | Path | None = None,
    figures: bool = True,
    prior: Prior | None = None,
    readme: str | Path | None = None,
) -> Path:
    """Write report.md (and figures/*.png) for the table at `results`; returns the report's path.

    `prior`: the VQA answer prior, when the caller has it; otherwise it is computed from the VQA dataset the
    table (or sweep.json) names. `readme`: a file whose marked block gets the verdict table (update_readme)."""
    results = Path(results)
    out = Path(out) if out else results.parent / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = load_table(results)
    meta = _read_meta(results.parent / "sweep.json")
    if frame is None:
        out.write_text(
            f"# Do the paper's findings reproduce?\n\nNo results yet: `{results}` is missing or empty. Run "
            "a sweep first, e.g. `python -m training sweep --config sweeps/paper.yaml`, then "
            "`python -m training report`.\n"
        )
        return out
    items = load_item_scores(results.parent / ITEM_FILE)
    prior_note = ""
    if prior is None:
        prior, prior_note = find_prior(frame, meta)
    stats = Stats(frame, items, prior)
    findings = build_findings(frame, stats=stats)
    figure_note = None
    if figures:
        figure_note = render_figures(build_figures(frame), out.parent / "figures")
    out.write_text(render_markdown(frame, findings, meta, results, figures, figure_note, stats, prior_note))
    if readme is not None:
        shown = Path(os.path.relpath(out.resolve(), Path(readme).resolve().parent))
        update_readme(readme, readme_block(frame, findings, meta, shown))
    return out


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _sources(frame, meta: dict, stats: Stats, prior_note: str) -> list[str]:
    lines = []
    if meta:
        machine = meta.get("machine") or {}
        lines += [
            f"- Sweep `{meta.get('name')}`: {meta.get('done')} of {meta.get('runs_planned')} runs finished "
            f"({meta.get('failed', 0)} failed, {meta.get('skipped', 0)} grid points skipped as outside a "
            f"method's budget range); total wall time {meta.get('wall_s', 0) / 3600:.2f} h over "
            f"{len(meta.get('sessions', []))} session(s), last updated {meta.get('updated_at')}.",
            f"- Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs ({machine.get('cpu')}), "
            f"{machine.get('threads_per_run')} threads per run, GPU: {machine.get('gpu') or 'none'}.",
            f"- Base model `{meta.get('base_model')}` (sha {meta.get('base_model_sha')}); datasets "
            + ", ".join(
                f"{t} `{d.get('source')}` (sha {d.get('sha')})" for t, d in (meta.get("datasets") or {}).items()
            )
            + ".",
            f"- Command: `{meta.get('command')}`.",
        ]
    else:
        lines.append("- No `sweep.json` beside the table: the sweep's command and machine are unknown.")
    settings = []
    for column, label in (
        ("towers", "PEFT on towers"),
        ("total_steps", "step cap"),
        ("batch_size", "batch"),
        ("stop_reason", "stopped by"),
        ("lr_source", "learning rates from"),
    ):
        if column in frame:
            values = sorted({str(v) for v in frame[frame.method != "zero-shot"][column].dropna().unique()})
            if values:
                settings.append(f"{label} {', '.join(values)}")
    if settings:
        lines.append(f"- Runs: {'; '.join(settings)}.")
    if predates_protocol(frame):
        lines.append(
            "- The table has no validation scores (`val_metric`): it predates the validation protocol, so no "
            "checkpoint or stopping point of its runs was chosen on validation data."
        )
    for task in MAIN_METRIC:
        if task in stats.weights:
            lines.append(
                f"- {task}: intervals combine the bootstrap over seeds and {stats.weights[task].shape[0]} "
                "test items with the t-interval across seeds."
            )
        elif stats.why_not.get(task) != "no runs":
            lines.append(
                f"- {task}: intervals are t-intervals across seeds only ({stats.why_not[task]}): they "
                "ignore the test items' sampling error."
            )
    if stats.items is not None and stats.items.problems:
        lines.append(
            f"- `{ITEM_FILE}`: {len(stats.items.problems)} line(s) skipped: "
            + "; ".join(stats.items.problems[:3])
            + "."
        )
    if stats.prior is not None:
        lines.append(
            f"- Answer prior (VQA, majority training answer per question type, from `{stats.prior.source}`): "
            f"{stats.prior.accuracy:.1f} %." + (f" Note: {stats.why_not['prior']}." if "prior" in stats.why_not else "")
        )
    elif prior_note and prior_note != "the table has no VQA runs":
        lines.append(f"- No answer prior: {prior_note}.")
    seeds = (
        frame[frame.method != "zero-shot"]
        .groupby(["task", "method", "budget", "data_fraction"], dropna=False)
        .seed.nunique()
    )
    if not seeds.empty and seeds.min() < PROTOCOL_SEEDS:
        lines.append(f"- Some grid points have fewer than {PROTOCOL_SEEDS} seeds (as few as {seeds.min()}).")
    return lines


def unfinished_grid(frame, meta: dict) -> list[str]:
    """A warning, said before the verdicts, when the sweep.json beside the table has runs still to go: a grid that
    runs over several sessions is committed part-done, and its verdicts rest on the runs finished so far."""
    remaining = meta.get("remaining") or 0
    if not remaining:
        return []
    done = frame[["task", "method"]].value_counts()
    counts = ", ".join(f"{task} {method} {n}" for (task, method), n in sorted(done.items()))
    return [
        f"> **The grid is not finished: {meta.get('done')} of {meta.get('runs_planned')} runs, {remaining} to go.** "
        "The verdicts below are drawn from the finished runs only and are provisional; a cell without runs is "
        f"left out of its test. Finished so far: {counts}. `python -m training sweep --config "
        "sweeps/paper.yaml` goes on where it stopped.",
        "",
    ]


def verdict_table(findings: list[Finding], seeds: list[int]) -> list[str]:
    """The findings' answers, as the report opens with them (and the README's copy of it)."""
    answer = {UNDETERMINED: f"{UNDETERMINED} (too few seeds)" if len(seeds) < MIN_SEEDS else UNDETERMINED}
    return [
        "| finding | answer | without the smallest data fraction |",
        "|---|---|---|",
        *(f"| {f.number}. {f.claim} | **{answer.get(f.verdict, f.verdict)}** | {f.robust} |" for f in findings),
    ]


README_START = "<!-- report:verdicts -->"
README_END = "<!-- /report:verdicts -->"


def readme_block(frame, findings: list[Finding], meta: dict, report: Path) -> list[str]:
    """What `report --readme` puts between the README's markers: where the verdicts come from, how far the grid
    has got, and the report's verdict table, so the README cannot drift from the report it quotes."""
    seeds = sorted(int(s) for s in frame.seed.dropna().unique())
    planned, remaining = meta.get("runs_planned"), meta.get("remaining") or 0
    wall_s = meta.get("wall_s")
    state = (
        f"**provisional: the grid is not finished ({len(frame)} of {planned} runs)**"
        if remaining
        else f"the finished grid ({len(frame)} runs"
        + (f", {wall_s / 3600:.1f} h of wall time" if isinstance(wall_s, (int, float)) else "")
        + ")"
    )
    return [
        f"Verdicts of `{report.as_posix()}` ({state}; seeds {seeds}), copied here by `python -m training report "
        "--readme README.md`; the report gives the statistic behind each and the units that do not hold.",
        "",
        *verdict_table(findings, seeds),
    ]


def update_readme(path: str | Path, block: list[str]) -> None:
    """Replace what lies between README_START and README_END in `path` with `block`; the rest is left alone."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path} to copy the verdicts into it ({exc.strerror}); check the path.") from exc
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start or text.count(README_START) != 1 or text.count(README_END) != 1:
        raise UserError(
            f"{path} needs exactly one {README_START} line followed by one {README_END} line where the verdict "
            "table goes; add them and run the report again (report.md is written already)."
        )
    head = text[: start + len(README_START)]
    path.write_text(head + "\n" + "\n".join(block) + "\n" + text[end:], encoding="utf-8")


def predates_protocol(frame) -> bool:
    """A table without validation scores: its runs chose nothing on validation data (load_table adds the column)."""
    return bool(frame["val_metric"].isna().all())


def render_markdown(
    frame,
    findings: list[Finding],
    meta: dict,
    results: Path,
    figures: bool,
    figure_note: str | None,
    stats: Stats | None = None,
    prior_note: str = "",
) -> str:
    stats = stats or Stats(frame, None)
    seeds = sorted(int(s) for s in frame.seed.dropna().unique())
    lines = [
        "# Do the paper's findings reproduce?",
        "",
        "Tian et al., *An Empirical Study of Parameter Efficient Fine-tuning on Vision-Language Pre-train "
        "Model* (ICME 2024), re-tested with this project's BLIP, methods and sweep. Built by "
        f"`python -m training report` from `{results.name}` ({len(frame)} runs, seeds {seeds}).",
        "",
    ]
    if predates_protocol(frame):
        # Said first, where a reader (and Explore, which shows this text) meets the verdicts.
        lines += [
            "> **Not the study's answer: these verdicts are withdrawn.** This table predates the study protocol: "
            "its runs chose no learning rate, stopping point or checkpoint on validation data (it has no "
            "`val_metric`), so it measures their training schedule more than the methods. The grid under the "
            "protocol (`python -m training tune`, then `python -m training sweep --config sweeps/paper.yaml`) "
            "replaces it; the README's *Sweeps and results* says how far it has got.",
            "",
        ]
    lines += unfinished_grid(frame, meta)
    lines += verdict_table(findings, seeds)
    lines += [
        "",
        *decision_rules(),
        "## Where the numbers come from",
        "",
        *_sources(frame, meta, stats, prior_note),
        "",
    ]
    if figures and figure_note:
        lines += [
            f"Figures could not be rendered ({figure_note}); install kaleido (`pip install -r "
            "requirements-report.txt`) and Chromium, or point BROWSER_PATH at a Chrome.",
            "",
        ]
    for f in findings:
        lines += [
            f"## Finding {f.number}: {f.claim}",
            "",
            f"**Answer: {f.verdict}** (without the smallest data fraction: {f.robust}). {f.summary}",
            "",
            f"*Statistic.* {f.statistic}",
            "",
            *f.table,
            "",
        ]
        if figures and not figure_note and f.figure:
            lines += [f"![finding {f.number}]({f.figure})", ""]
        if f.discussion:
            lines += [f.discussion, ""]
    lines += [
        "## Gains over zero-shot and the answer prior",
        "",
        "At the largest data fraction and each method's reference budget; differences paired by seed (and by "
        "test item where the intervals use them).",
        "",
        *gains_table(frame, stats),
        "",
    ]
    types = question_type_table(frame, stats.prior)
    if types:
        lines += [
            "## VQA per question type",
            "",
            "Accuracy (%) per question type at the largest data fraction and each method's reference budget "
            "(in brackets), mean over seeds, beside the answer prior and zero-shot.",
            "",
            *types,
            "",
        ]
    lines += [
        "## How far each method gets",
        "",
        "The best mean of each method over the grid's cells; there, its validation score, the share of "
        "test items that score 0 (with item scores) and its training loss (mean over the half epoch up to the "
        "kept checkpoint: high beside a low score, the method cannot fit the task; low, it over-fits); and how "
        "its runs ended (epochs, why they stopped, where the learning rate came from; empty for tables written "
        "before the validation protocol).",
        "",
        *reach_table(frame, stats),
        "",
    ]
    return "\n".join(lines)
