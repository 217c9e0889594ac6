"""Which method for a task, a data size and a parameter budget: the grid's runs (results/runs.csv), ranked there.

The grid varies one axis at a time: the data size at one budget (the data line, 18k parameters in the paper
grid), the parameter budget at all of the data (the budget line). So this answers what those lines support:

- On a grid point, a method's score is the mean of its seeds' runs there, with their 95 % t-interval.
- Between two grid values on one line, each seed's score is interpolated linearly in log(data size) or
  log(parameters) between the two neighbouring grid values, and the interval is taken over those seed values.
- Off both lines, or beyond their ends, a method that the grid did not run there is left out with the reason,
  not guessed. Methods without a knob (IA3, full fine-tuning) train one fixed count at every data size: they are
  ranked wherever that count fits the budget. Zero-shot needs neither data nor parameters and is always ranked.
- A method is tied with the best when the upper end of its interval reaches the best's mean.

Torch-free: the web process, the API and the tests read it without loading a model.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from training.budget import parse_budget
from training.catalog import CATALOG, MAIN_METRIC, METRIC_UNIT, NO_BUDGET_METHODS, TASK_LABELS, TASKS
from training.errors import UserError
from training.study.report import Interval

PARAMS_TOLERANCE = 0.15  # a count within 15 % of a grid budget is that budget (counts at 18k span 17,920-20,480)
DATA_TOLERANCE = 0.05  # a data size within 5 % of a grid size is that size
FULL_DATA = 1.0
NO_TRAINING = "zero-shot"
FASTER = 1.2  # a tied method that trains this many times faster than the pick is worth a mention

INTERPOLATION_RULE = (
    "Between two grid values on one line, each seed's score is interpolated linearly in log(data size) or "
    "log(parameters) between the two neighbouring grid values; the interval is taken over those seed values."
)
TIE_RULE = "A method is tied with the best when the upper end of its 95 % interval over seeds reaches the best's mean."
TOLERANCE_RULE = (
    f"A parameter count within {PARAMS_TOLERANCE:.0%} of a grid budget is read as that budget, a data size within "
    f"{DATA_TOLERANCE:.0%} of a grid size as that size."
)


@dataclass
class Estimate:
    """One method's expected score at the asked point, and what it rests on."""

    method: str
    label: str
    mean: float
    low: float
    high: float
    seeds: int
    how: str  # "measured at ...", "interpolated between ... and ...", "no training"
    interpolated: bool
    trainable_params: list[int]  # the counts of the grid points used (one, or the two neighbours)
    train_s: float  # mean training time of the runs used (weighted like the score)
    peak_mem_mb: float
    runs: list[str]  # the grid runs' ids (results/runs.csv's run column)
    settings: list[dict]  # each of those runs' task, method, budget, data_fraction, seed and dataset, in that order
    tied: bool = False
    best: bool = False


@dataclass
class Choice:
    """The answer: the ranking at (data, params), what was left out and why, the rules, one sentence."""

    task: str
    metric: str
    examples: int
    data_share: float
    params: int
    params_share: float
    status: str  # "on the grid", "interpolated" or "outside the grid"
    sentence: str
    ranking: list[Estimate]
    not_ranked: list[dict]  # {method, label, reason}
    support: str  # what the grid can answer
    rules: dict = field(default_factory=dict)
    train: dict | None = None  # the config to train the best trained method with (task, method, budget, fraction)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Line:
    """One method's runs along one axis: x (budget or fraction) -> seed -> row."""

    axis: str  # "data" or "params"
    held: str  # what is held fixed, for the text
    points: dict[float, pd.DataFrame]


def which_method(table: pd.DataFrame, task: str, data: str | float, params: str | float) -> Choice:
    """Rank the methods the grid ran at (`data`, `params`) for `task`.

    data: a number of training examples ('300'), or a share of the task's training set ('7%' or '0.07').
    params: a trainable-parameter count ('18k', '20000') or a share of the base model ('0.6%')."""
    if task not in TASKS:
        raise UserError(f"Task {task!r} is not one of {', '.join(TASKS)}: pick one of them.")
    metric = MAIN_METRIC[task]
    rows = _grid_rows(table, task, metric)
    full_examples = int(round(rows.loc[rows.data_fraction == FULL_DATA, "train_examples"].median()))
    total = int(rows["total_params"].dropna().iloc[0])
    examples, share = parse_data(data, full_examples)
    budget = parse_budget(params)
    count = budget.resolve(total)
    if count < 1:
        raise UserError(f"Parameters {params!r} come to fewer than one parameter of the {total:,}-parameter model.")

    ranking, left_out = [], []
    for method in dict.fromkeys(rows.method):
        estimate = _estimate(rows[rows.method == method], method, metric, share, count, full_examples)
        if isinstance(estimate, Estimate):
            ranking.append(estimate)
        else:
            left_out.append({"method": method, "label": _label(method), "reason": estimate})
    ranking.sort(key=lambda e: -e.mean)
    trained = [e for e in ranking if e.method != NO_TRAINING]
    if ranking:
        ranking[0].best = True
        for estimate in ranking[1:]:
            estimate.tied = bool(np.isfinite(estimate.high) and estimate.high >= ranking[0].mean)
    status = (
        "outside the grid" if not trained else "interpolated" if any(e.interpolated for e in trained) else "on the grid"
    )
    support = _support(rows, full_examples)
    choice = Choice(
        task=task,
        metric=metric,
        examples=examples,
        data_share=share,
        params=count,
        params_share=count / total,
        status=status,
        sentence="",
        ranking=ranking,
        not_ranked=left_out,
        support=support,
        rules={"interpolation": INTERPOLATION_RULE, "tie": TIE_RULE, "tolerance": TOLERANCE_RULE},
    )
    if trained:
        pick = trained[0]
        choice.train = {
            "task": task,
            "method": pick.method,
            "budget": str(params).strip(),  # a method without a knob ignores it; the form needs one
            "data_fraction": round(min(share, FULL_DATA), 4),
        }
    choice.sentence = _sentence(choice, _data_reach(rows, share, full_examples))
    return choice


def _data_reach(rows: pd.DataFrame, share: float, full_examples: int) -> str:
    """Why a data size is beyond every method's runs, or '' when it is within the grid's data sizes."""
    smallest = rows.data_fraction.min()
    if share > FULL_DATA * (1 + DATA_TOLERANCE):
        return f"the grid trained on at most the whole training set, {full_examples:,} examples"
    if share < smallest * (1 - DATA_TOLERANCE):
        return f"the grid's smallest data size is {_examples(smallest, full_examples)}"
    return ""


def parse_data(data: str | float, full_examples: int) -> tuple[int, float]:
    """(examples, share of the training set) from '300' (examples), '7%' or '0.07' (a share)."""
    text = str(data).strip().replace(",", "").replace("_", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?|\.\d+)\s*(%|examples?)?", text)
    if not match:
        raise UserError(
            f"Data {data!r} is not understood: give a number of training examples such as 300, or a share of "
            "the training set such as 7% (or 0.07)."
        )
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%" or (unit is None and number < 1 and "." in match.group(1)):
        share = number / 100 if unit == "%" else number
        if share <= 0:
            raise UserError(f"Data {data!r}: a share must be above 0.")
        return max(1, round(share * full_examples)), share
    if number < 1 or number != int(number):
        raise UserError(f"Data {data!r}: a number of examples must be a whole number of at least 1.")
    return int(number), number / full_examples


# --- one method at the point ----------------------------------------------------------------------------------


def _estimate(
    rows: pd.DataFrame, method: str, metric: str, share: float, count: int, full_examples: int
) -> Estimate | str:
    """The method's estimate at (share, count), or the sentence saying why the grid cannot give one."""
    if method == NO_TRAINING:
        return _combine(method, metric, [(rows, 1.0)], "no training: the same at every data size and budget", False)
    fixed = method in NO_BUDGET_METHODS
    if fixed:
        own = int(rows.trainable_params.median())
        if own > count * (1 + PARAMS_TOLERANCE):
            return f"it trains a fixed {_short(own)} parameters, more than {_short(count)}"
        line = _Line("data", f"with its fixed {_short(own)} parameters", _points(rows, "data_fraction"))
        return _along(line, method, metric, share, full_examples)
    data_budget = _data_line_budget(rows)
    on_data_line = data_budget is not None and _near(count, data_budget, PARAMS_TOLERANCE)
    if on_data_line:
        held = rows[rows.budget_params == data_budget]
        line = _Line("data", f"at {_short(data_budget)} parameters", _points(held, "data_fraction"))
        return _along(line, method, metric, share, full_examples)
    if _near(share, FULL_DATA, DATA_TOLERANCE):
        held = rows[rows.data_fraction == FULL_DATA]
        line = _Line("params", f"with all {full_examples:,} examples", _points(held, "budget_params"))
        return _along(line, method, metric, count, full_examples)
    where = f" at {_short(data_budget)} parameters" if data_budget is not None else ""
    return (
        f"the grid varies data only{where} and parameters only at 100 % of the data: no run with "
        f"{_short(count)} parameters on {_percent(share)} of the data"
    )


def _along(line: _Line, method: str, metric: str, x: float, full_examples: int) -> Estimate | str:
    """Read or interpolate the line at x (a data share or a parameter count)."""
    tolerance = DATA_TOLERANCE if line.axis == "data" else PARAMS_TOLERANCE
    xs = sorted(line.points)
    if not xs:
        return "the grid has no runs of it on this line"
    shown = (lambda v: _examples(v, full_examples)) if line.axis == "data" else (lambda v: f"{_short(v)} parameters")
    for grid_x in xs:
        if _near(x, grid_x, tolerance):
            how = f"measured at {shown(grid_x)}, {line.held}"
            return _combine(method, metric, [(line.points[grid_x], 1.0)], how, False)
    if x < xs[0]:
        return f"the grid's smallest {_axis_word(line.axis)} for it is {shown(xs[0])}, {line.held}"
    if x > xs[-1]:
        return f"the grid's largest {_axis_word(line.axis)} for it is {shown(xs[-1])}, {line.held}"
    high = next(v for v in xs if v > x)
    low = max(v for v in xs if v < x)
    weight = (math.log(x) - math.log(low)) / (math.log(high) - math.log(low))
    how = f"interpolated between {shown(low)} and {shown(high)}, {line.held}"
    return _combine(method, metric, [(line.points[low], 1 - weight), (line.points[high], weight)], how, True)


def _combine(
    method: str, metric: str, parts: list[tuple[pd.DataFrame, float]], how: str, interpolated: bool
) -> Estimate:
    """Each seed's weighted score over the parts (the seeds all of them have), and the interval over seeds."""
    seeds = sorted(set.intersection(*(set(rows.seed) for rows, _ in parts)))
    per_seed = [sum(w * rows.loc[rows.seed == s, metric].mean() for rows, w in parts) for s in seeds]
    interval = Interval.of(per_seed)
    return Estimate(
        method=method,
        label=_label(method),
        mean=interval.mean,
        low=interval.low,
        high=interval.high,
        seeds=interval.n,
        how=how,
        interpolated=interpolated,
        trainable_params=[int(rows.trainable_params.median()) for rows, _ in parts],
        train_s=float(sum(w * rows.train_s.mean() for rows, w in parts)),
        peak_mem_mb=float(sum(w * rows.peak_mem_mb.mean() for rows, w in parts)),
        runs=[str(run) for rows, _ in parts for run in rows.sort_values("seed")["run"]],
        settings=[_settings(row) for rows, _ in parts for _, row in rows.sort_values("seed").iterrows()],
    )


def _settings(row: pd.Series) -> dict:
    """A grid run's settings as a run config names them, in plain values (None where the table has none)."""
    values = {key: row.get(key) for key in ("task", "method", "budget", "data_fraction", "seed", "dataset")}
    return {key: None if pd.isna(v) else v.item() if isinstance(v, np.generic) else v for key, v in values.items()}


# --- the table ------------------------------------------------------------------------------------------------


def _grid_rows(table: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    """The task's scored runs on one base model and dataset (the most common pair, if the table mixes them)."""
    needed = {"task", "method", "budget_params", "data_fraction", "train_examples", "seed", "trainable_params"}
    missing = needed | {"total_params", "train_s", "peak_mem_mb", "run", metric}
    missing -= set(table.columns)
    if missing:
        raise UserError(f"The runs table lacks the columns {', '.join(sorted(missing))}: rebuild it with a sweep.")
    rows = table[(table.task == task) & table[metric].notna()].copy()
    if "dataset" in rows and "base_model" in rows and not rows.empty:
        pair = rows.groupby(["base_model", "dataset"], dropna=False).size().idxmax()
        rows = rows[(rows.base_model == pair[0]) & (rows.dataset == pair[1])]
    if rows.empty or not (rows.data_fraction == FULL_DATA).any():
        raise UserError(
            f"The runs table has no {TASK_LABELS[task].lower()} runs on all the data yet: run the sweep first."
        )
    return rows


def _points(rows: pd.DataFrame, column: str) -> dict[float, pd.DataFrame]:
    return {float(x): group for x, group in rows.dropna(subset=[column]).groupby(column)}


def _data_line_budget(rows: pd.DataFrame) -> float | None:
    """The budget a method was run at with the most data sizes (its data line), if it has more than one."""
    counts = rows.dropna(subset=["budget_params"]).groupby("budget_params").data_fraction.nunique()
    if counts.empty or counts.max() < 2:
        return None
    return float(counts[counts == counts.max()].index.min())


def _support(rows: pd.DataFrame, full_examples: int) -> str:
    """What the grid answers for this task, in one sentence."""
    budgeted = rows[~rows.method.isin(NO_BUDGET_METHODS)]
    fractions = sorted(budgeted.data_fraction.dropna().unique())
    lines = [_data_line_budget(budgeted[budgeted.method == m]) for m in dict.fromkeys(budgeted.method)]
    data_budgets = sorted({b for b in lines if b is not None})
    budgets = sorted(budgeted.loc[budgeted.data_fraction == FULL_DATA, "budget_params"].dropna().unique())
    if not fractions or not budgets:
        return "The grid has too few runs to answer between points."
    at = " or ".join(_short(b) for b in data_budgets) or "one budget"
    return (
        f"The grid varies the data size from {_examples(fractions[0], full_examples)} to "
        f"{_examples(fractions[-1], full_examples)} only at {at} parameters, and the parameters from "
        f"{_short(budgets[0])} to {_short(budgets[-1])} only with all {full_examples:,} examples; (IA)³ and full "
        "fine-tuning train a fixed count at every data size. Elsewhere it answers only for the methods it ran there."
    )


# --- words ----------------------------------------------------------------------------------------------------


def _sentence(choice: Choice, data_reach: str) -> str:
    """One plain sentence (two where the point is partly outside the grid) that sums the answer up."""
    unit = METRIC_UNIT[choice.task]
    where = (
        f"{choice.examples:,} {TASK_LABELS[choice.task].lower()} examples ({_percent(choice.data_share)} of the data) "
        f"and {_short(choice.params)} trainable parameters"
    )
    trained = [e for e in choice.ranking if e.method != NO_TRAINING]
    if not trained:
        why = f": {data_reach}" if data_reach else ""
        return f"Outside the grid: it ran no method at {where}{why}. {choice.support}"
    best, pick = choice.ranking[0], trained[0]
    if best.method == NO_TRAINING:
        verdict = "tied with it within the seeds' noise" if pick.tied else "below it beyond the seeds' noise"
        text = (
            f"For {where}, training does not pay: zero-shot scores {_number(best.mean)} {unit}, and the best "
            f"trained method, {pick.label}, {_score(pick, unit)}, is {verdict}"
        )
    else:
        text = f"For {where}, take {pick.label}: {_score(pick, unit)}"
        if pick.interpolated:
            text += f", {pick.how.split(',')[0]}"
        tied = [e for e in trained if e.tied]
        if tied:
            names = _join([e.label for e in tied])
            text += f"; {names} {'is' if len(tied) == 1 else 'are'} as good within the seeds' noise"
            fastest = min(tied, key=lambda e: e.train_s)
            if fastest.train_s * FASTER <= pick.train_s:
                text += f", and {fastest.label} trains {pick.train_s / fastest.train_s:.1f}× faster"
        else:
            text += "; no other method is within the seeds' noise of it"
    text += "."
    by_reason: dict[str, list[str]] = {}
    for left in choice.not_ranked:
        by_reason.setdefault(left["reason"], []).append(left["label"])
    if by_reason:
        text += " Not ranked: " + "; ".join(f"{_join(labels)} ({why})" for why, labels in by_reason.items()) + "."
    return text


def _score(estimate: Estimate, unit: str) -> str:
    if not np.isfinite(estimate.low):
        return f"{_number(estimate.mean)} {unit} (one seed: no interval)"
    return (
        f"{_number(estimate.mean)} {unit} (95 % interval {_number(estimate.low)} to {_number(estimate.high)} over "
        f"{estimate.seeds} seeds)"
    )


def _label(method: str) -> str:
    """The catalog's label without its parenthesis ('Zero-shot (baseline: no training)' -> 'Zero-shot')."""
    return CATALOG[method].label.split(" (")[0] if method in CATALOG else method


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _near(x: float, grid_x: float, tolerance: float) -> bool:
    return abs(x / grid_x - 1) <= tolerance


def _axis_word(axis: str) -> str:
    return "data size" if axis == "data" else "budget"


def _examples(share: float, full_examples: int) -> str:
    return f"{round(share * full_examples):,} examples ({_percent(share)})"


def _percent(share: float) -> str:
    """0.0718 -> '7.2 %', 1.0 -> '100 %'."""
    return f"{share * 100:.1f}".rstrip("0").rstrip(".") + " %"


def _short(count: float) -> str:
    """570, 1.8k, 18k, 570k, 2.98M: the grid's way of writing budgets."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return f"{count:.0f}"
