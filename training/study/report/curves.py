"""Curves along the two axes: a method's metric against data fraction and against trainable parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.catalog import MAIN_METRIC, PEFT_METHODS
from training.study.report.inputs import task_rows
from training.study.report.stats import Interval, Stats, seed_arrays, seed_slopes


@dataclass
class Curve:
    """One method's metric along one axis: the means per x, the slope per decade with its interval, and per seed
    the slope and the value arrays at the smallest and the largest x (for paired tests built on them). A curve one
    of whose seeds lacks a point the axis has is `incomplete` (why, in words) and has no slope or per-seed values:
    that seed's slope would span a different range."""

    task: str
    method: str
    axis: str  # "data" or "params"
    held: str  # what was held fixed, e.g. "budget 32k" or "100% data"
    xs: list[float]
    means: list[float]
    sds: list[float]
    seeds: int
    slope: Interval | None
    slopes: dict = field(default_factory=dict)  # seed -> slope value array
    first: dict = field(default_factory=dict)  # seed -> value array at the smallest x
    last: dict = field(default_factory=dict)  # seed -> value array at the largest x
    best: dict = field(default_factory=dict)  # params axis: the best budget (on validation) against the edges
    incomplete: str = ""  # e.g. "seed 2 lacks 1% data"; "" when every seed has every point


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
    """Metric against data fraction, per method, at its reference budget (full fine-tuning: all weights). Every
    seed of a curve must have every data fraction the task was run at, or the curve is incomplete."""
    rows = task_rows(frame, task)
    rows = rows[rows.data_fraction.notna()]
    fractions = sorted(float(f) for f in rows.data_fraction.unique())
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
                    fractions,
                )
            )
    return curves


def param_curves(frame, task: str, stats: Stats | None = None) -> list[Curve]:
    """Metric against trainable parameters, per PEFT method, at the largest data fraction it was run with. Every
    seed of a curve must have every budget the method was run at there, or the curve is incomplete."""
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
            held = f"{fraction:.0%} data"
            counts = sorted(float(c) for c in chosen.trainable_params.unique())
            curve = _curve(chosen, task, method, "params", "trainable_params", held, stats, counts)
            curve.best = best_budget(chosen, task, stats if not curve.incomplete else None)
            curves.append(curve)
    return curves


def _curve(
    rows, task: str, method: str, axis: str, x: str, held: str, stats: Stats | None, expected: list[float]
) -> Curve:
    metric = MAIN_METRIC[task]
    table = rows.groupby(x)[metric].agg(["mean", "std"]).sort_index()
    curve = Curve(
        task,
        method,
        axis,
        held,
        [float(v) for v in table.index],
        [float(v) for v in table["mean"]],
        [float(v) if np.isfinite(v) else 0.0 for v in table["std"]],
        int(rows.seed.nunique()),
        None,
    )
    curve.incomplete = missing_points(rows, x, expected)
    if stats is not None and not curve.incomplete:
        values = stats.values(rows, task)
        curve.slopes, _ = seed_slopes(rows, x, values)
        curve.slope = stats.interval(curve.slopes)
        for seed, points in seed_arrays(rows, values, x).items():
            xs = sorted(v for v in points if v > 0)
            if len(xs) >= 2:
                curve.first[seed], curve.last[seed] = points[xs[0]], points[xs[-1]]
    return curve


def missing_points(rows, x: str, expected: list[float]) -> str:
    """The points of the axis a seed lacks, in words ("seed 2 lacks 1% data"), or "" when every seed has them all."""
    gaps = []
    for seed, mine in rows.groupby("seed"):
        lacking = sorted(set(expected) - {float(v) for v in mine[x]})
        if lacking:
            shown = [f"{v:.0%} data" if x == "data_fraction" else f"{v:,.0f} parameters" for v in lacking]
            gaps.append(f"seed {int(seed)} lacks {', '.join(shown)}")
    return "; ".join(gaps)


def best_budget(rows, task: str, stats: Stats | None) -> dict:
    """The best budget, chosen on the mean validation score (on test means only for a table without validation
    scores, and said so), and on test the best minus the largest and minus the smallest budget, paired by seed
    (and item)."""
    on_validation = "val_metric" in rows and rows.val_metric.notna().any()
    score = "val_metric" if on_validation else MAIN_METRIC[task]
    by_size = rows.groupby("trainable_params")[score].mean().sort_index()
    order = list(by_size.index)
    best = by_size.idxmax()
    index = order.index(best)
    edges = {"best_minus_largest": order[-1], "best_minus_smallest": order[0]}
    diffs, per_seed = dict.fromkeys(edges), {}
    if stats is not None:
        points = seed_arrays(rows, stats.values(rows, task), "trainable_params")
        for name, edge in edges.items():
            per_seed[name] = {s: p[best] - p[edge] for s, p in points.items() if best in p and edge in p}
            if edge != best:
                diffs[name] = stats.interval(per_seed[name])
    return {
        "best_params": int(best),
        "best_index": index,
        "budgets": len(order),
        "interior": 0 < index < len(order) - 1,
        "chosen_on": "validation" if on_validation else "test (the table has no validation scores)",
        "per_seed": per_seed,  # name -> seed -> best minus that edge (zeros when the best is the edge)
        **diffs,
    }
