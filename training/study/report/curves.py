"""Curves along the two axes: a method's metric against data fraction and against trainable parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.catalog import MAIN_METRIC, PEFT_METHODS
from training.study.report.inputs import task_rows
from training.study.report.stats import Interval, Stats, seed_arrays, seed_slopes


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
    rows = task_rows(frame, task)
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
    rows = task_rows(frame, task)
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
        points = seed_arrays(rows, stats.values(rows, task), "trainable_params")
        diff = stats.interval({s: p[best] - p[largest] for s, p in points.items() if best in p and largest in p})
    return {
        "best_params": int(best),
        "best_index": index,
        "budgets": len(order),
        "interior": 0 < index < len(order) - 1,
        "best_minus_largest": diff,
    }
