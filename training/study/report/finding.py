"""What the three findings share: the Finding record and the helpers their verdicts and summaries use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.catalog import PEFT_METHODS
from training.study.report.inputs import task_rows
from training.study.report.rules import MIN_SEEDS, PROTOCOL_SEEDS
from training.study.report.stats import Interval


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


def without_smallest_fraction(frame):
    """The table without each task's smallest data fraction (a task run at one fraction keeps it)."""
    keep = np.ones(len(frame), dtype=bool)
    for task in frame.task.unique():
        fractions = frame.loc[frame.task == task, "data_fraction"].dropna().unique()
        if len(fractions) >= 2:
            keep &= ~((frame.task == task) & (frame.data_fraction == min(fractions))).to_numpy()
    return frame[keep]


def above(interval: Interval | None) -> bool | None:
    return None if interval is None or not interval.known else bool(interval.above_zero)


def names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def judged_methods(frame) -> list[str]:
    """The PEFT methods the findings judge: those the table has runs of (a sweep need not run every method in
    the catalog, and one it left out is not a failure of the paper's claim)."""
    return [m for m in PEFT_METHODS if (frame.method == m).any()]


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
