"""Which learning rate a run trains at: the one it is given, else its row in the tuned-rate table
(results/lr.csv, written by `python -m training tune` from validation runs), else the method's default.

A row is matched on task, method, towers, base model and budget (its own budget first, then the nearest one,
said in the source); the tuning that writes the table lives in training/study/tuning.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from training.budget import parse_budget
from training.catalog import NO_BUDGET_METHODS, trained_towers
from training.paths import REPO_ROOT, RESULTS_DIR
from training.run.config import RunConfig

# A tower setting as a person reads it: where a rate was tuned, said in a run's lr_source and the Train tab.
TOWER_WORDS = {"text": "the text decoder only", "vision": "the image encoder only", "both": "both towers"}

LR_TABLE = RESULTS_DIR / "lr.csv"  # inside the package when installed from a wheel
LR_TABLE_ENV = "VLPEFT_LR_TABLE"


def model_key(base_model: str | None) -> str:
    """How lr.csv names a base model: empty for the embedded default, a folder inside the checkout by its path from
    the checkout's root (a sweep file's folders arrive as absolute paths, and a frozen worktree has another root),
    anything else (a Hub id, a folder elsewhere) as it is."""
    if not base_model:
        return ""
    path = Path(base_model)
    if path.is_absolute() and path.is_relative_to(REPO_ROOT):
        return path.relative_to(REPO_ROOT).as_posix()
    return base_model


def options_key(options: dict | None) -> str:
    return json.dumps(options or {}, sort_keys=True)


def lr_towers(method: str, towers: str) -> str:
    """Full fine-tuning trains both towers whatever the setting says."""
    return trained_towers(method, towers) or towers


def budget_key(text: str, total_params: int | None = None) -> tuple[str, float]:
    """What a budget string stands for, to match a run with an lr.csv row: ("n", parameter count), or ("%", the
    percentage) when it is a percentage and the base model's size is not known."""
    budget = parse_budget(text)
    if budget.percent and total_params is None:
        return ("%", budget.value)
    return ("n", float(budget.resolve(total_params or 0)))


def budget_distance(a: str, b: str, total_params: int | None = None) -> float:
    """How far apart two budgets are in decades (0: the same budget; inf: not comparable)."""
    (kind_a, value_a), (kind_b, value_b) = budget_key(a, total_params), budget_key(b, total_params)
    if kind_a != kind_b or value_a <= 0 or value_b <= 0:
        return math.inf
    return abs(math.log10(value_a / value_b))


def same_budget(row_budget: str | None, budget: str, total_params: int | None = None) -> bool:
    return bool(row_budget) and budget_distance(row_budget, budget, total_params) == 0


@dataclass(frozen=True)
class TunedLR:
    lr: float
    options: dict
    source: str


def lr_table() -> Path:
    """The table runs take their learning rates from: results/lr.csv, or the file $VLPEFT_LR_TABLE names (the
    tests point it away from the shipped table, so that their tiny models never train at the embedded default's
    tuned rates)."""
    override = os.environ.get(LR_TABLE_ENV)
    return Path(override) if override else LR_TABLE


def use_sweep_table(results: Path) -> None:
    """Runs of a sweep take their rates from the lr.csv its tuning wrote into the sweep's results folder
    (sweeps/paper-v2.yaml: results/edition-2/lr.csv), unless $VLPEFT_LR_TABLE already names a table; the variable
    goes to every run the sweep launches."""
    os.environ.setdefault(LR_TABLE_ENV, str((Path(results) / LR_TABLE.name).resolve()))


@contextmanager
def sweep_table(results: Path) -> Iterator[None]:
    """`use_sweep_table` for the duration of a block (a library call that launches a sweep's runs), then the
    environment as it was."""
    before = os.environ.get(LR_TABLE_ENV)
    use_sweep_table(results)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LR_TABLE_ENV, None)
        else:
            os.environ[LR_TABLE_ENV] = before


def lookup_lr(config: RunConfig, table: Path | None = None, total_params: int | None = None) -> TunedLR | None:
    """The tuned learning rate of this run's task, method, towers and budget (and options, if it names any)."""
    table = table or lr_table()
    if not table.is_file():
        return None
    towers = lr_towers(config.method, config.towers)
    with open(table, encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if (r["task"], r["method"]) == (config.task, config.method)]
    rows = [r for r in rows if r.get("complete") != "False"]  # a target still being tuned
    # A rate found on one model says little about another (the embedded default's are no guide for BLIP-base).
    rows = [r for r in rows if (r.get("base_model") or "") == model_key(config.base_model)]
    if config.method_options:
        rows = [r for r in rows if options_key(json.loads(r["options"] or "{}")) == options_key(config.method_options)]
    if not rows:
        return None

    def distance(row: dict) -> float:
        if config.method in NO_BUDGET_METHODS or not row.get("budget"):
            return 0.0
        return budget_distance(row["budget"], config.budget, total_params)

    # Its own budget first, then the nearest one; the tower setting it was tuned on first, else another one's.
    row = min(rows, key=lambda r: (distance(r), r["towers"] != towers))
    name = str(table.relative_to(REPO_ROOT)) if table.is_relative_to(REPO_ROOT) else str(table)
    notes = [] if row["towers"] == towers else [f"tuned with the method on {TOWER_WORDS[row['towers']]}"]
    if distance(row) > 0:
        notes.append(f"tuned at budget {row['budget']}, none at {config.budget}")
    source = f"{name} ({'; '.join(notes)})" if notes else name
    return TunedLR(float(row["lr"]), json.loads(row["options"] or "{}"), source)


def resolve_lr(
    config: RunConfig, default_lr: float, table: Path | None = None, total_params: int | None = None
) -> tuple[float, dict, str]:
    """(learning rate, method options, where the learning rate came from) for a run; `total_params`, the base
    model's size, resolves a percentage budget to match lr.csv's rows."""
    if config.lr is not None:
        return config.lr, config.method_options, "given"
    tuned = lookup_lr(config, table, total_params)
    if tuned is not None:
        return tuned.lr, config.method_options or tuned.options, tuned.source
    return default_lr, config.method_options, "method default"
