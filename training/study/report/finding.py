"""What the three findings share: the Finding record and the helpers their verdicts and summaries use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.catalog import METHOD_LABELS, PEFT_METHODS
from training.study.report.curves import Curve
from training.study.report.inputs import task_rows
from training.study.report.rules import MIN_SEEDS, PROTOCOL_SEEDS
from training.study.report.stats import Interval, Stats, per_seed_mean
from training.study.report.units import Unit


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
    plain: str = ""  # one sentence a person without statistics reads, with the effects in the task's units
    pooled: str = ""  # the pooled tests and the share of units that agree, as the overall rule reads them


def without_smallest_fraction(frame):
    """The table without each task's smallest data fraction (a task run at one fraction keeps it)."""
    keep = np.ones(len(frame), dtype=bool)
    for task in frame.task.unique():
        fractions = frame.loc[frame.task == task, "data_fraction"].dropna().unique()
        if len(fractions) >= 2:
            keep &= ~((frame.task == task) & (frame.data_fraction == min(fractions))).to_numpy()
    return frame[keep]


def pooled(stats: Stats, per_method: list[dict]) -> Interval | None:
    """The mean over methods of per-seed value arrays, per seed (seeds every method has), with its interval."""
    per_method = [d for d in per_method if d]
    if not per_method:
        return None
    seeds = set.intersection(*(set(d) for d in per_method))
    return stats.interval({s: np.mean([d[s] for d in per_method], axis=0) for s in sorted(seeds)})


def zero_shot(frame, task: str, stats: Stats) -> tuple[dict, np.ndarray | None]:
    """Zero-shot's value arrays per seed, and their mean for a seed it was not run with (it has no randomness)."""
    rows = task_rows(frame, task)
    zero = rows[rows.method == "zero-shot"]
    seeds = per_seed_mean(zero, stats.values(zero, task)) if not zero.empty else {}
    return seeds, (np.mean(list(seeds.values()), axis=0) if seeds else None)


def label(method: str) -> str:
    """The method's name as a person reads it (the catalog's label)."""
    return METHOD_LABELS.get(method, method)


def number(value: float, digits: int = 2) -> str:
    """A number for a sentence: two significant digits, no trailing noise."""
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def spread(values: dict[str, float], unit: str) -> str:
    """'between A (method) and B (method) unit', or one value when the methods agree to the shown digits."""
    if not values:
        return "nothing measurable"
    low, high = min(values, key=values.get), max(values, key=values.get)
    if number(values[low]) == number(values[high]):
        return f"{number(values[low])} {unit}"
    return f"between {number(values[low])} ({label(low)}) and {number(values[high])} ({label(high)}) {unit}"


def p_text(interval: Interval | None) -> str:
    """An interval with its one-sided p-value of "above zero" where it has one."""
    if interval is None:
        return "-"
    return interval.text() + ("" if np.isnan(interval.p) or not interval.known else f", p={interval.p:.2g}")


def unit_p_text(unit: Unit) -> str:
    """A unit's test: its p-value (the largest of its checks') and that p-value after Holm over the finding's units."""
    if not unit.judged:
        return f"- ({unit.why})" if unit.why else "-"
    return f"p={unit.p:.2g}, Holm p={unit.holm_p:.2g}"


def family_text(units: list[Unit], source: str) -> str:
    """The finding's Holm family as the report names it: its judged units, and where the list of units comes from
    (an undetermined unit is named with its reason beside the verdicts)."""
    judged = [u.name for u in units if u.judged]
    return (
        f"Holm family: the {len(judged)} judged units of {len(units)} ({names(judged)}), one test each (a unit's "
        f"p-value is the largest of its checks' one-sided p-values); the units are {source}."
    )


def names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def judged_methods(frame, grid: list[str] | None = None) -> list[str]:
    """The PEFT methods the findings judge: every PEFT method of the sweep's grid when it is known (one without
    runs is a unit that does not agree), else those the table has runs of (a sweep need not run every method in
    the catalog, and one it left out is not a failure of the paper's claim)."""
    if grid is not None:
        return [m for m in PEFT_METHODS if m in grid]
    return [m for m in PEFT_METHODS if (frame.method == m).any()]


def units_source(grid: list[str] | None) -> str:
    """Where a finding's units come from, as the report says it."""
    if grid is not None:
        return "the PEFT methods of the sweep's grid (`sweep.json`)"
    return "the PEFT methods the table has runs of (no `sweep.json` names the sweep's grid)"


def missing_curve(frame, task: str, method: str, curve: Curve | None, axis: str) -> str:
    """Why a method's curve along an axis cannot be judged, in words; "" when it can."""
    if curve is None:
        if not (task_rows(frame, task).method == method).any():
            return f"no {task} runs"
        return "fewer than two data fractions at its reference budget" if axis == "data" else "fewer than two budgets"
    if curve.incomplete:
        return curve.incomplete
    if curve.slope is None or not curve.slope.known:
        return f"fewer than {MIN_SEEDS} seeds"
    return ""


def too_few(frame, task: str) -> str:
    rows = task_rows(frame, task)
    if rows.empty:
        return f"The table has no {task} runs: nothing to judge."
    seeds = rows.groupby(["method", "budget", "data_fraction"], dropna=False).seed.nunique().max()
    return (
        f"Too few seeds to judge ({seeds} per point; an interval needs at least {MIN_SEEDS}, the protocol uses "
        f"{PROTOCOL_SEEDS}) or too few points along the axes."
    )


def yes(check: bool | None) -> str:
    return {True: "yes", False: "no", None: "-"}[check]
