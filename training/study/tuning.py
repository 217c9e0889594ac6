"""Learning rates found on the validation split: `python -m training tune` and the table it writes.

A rate per method AND budget: a rate that suits LoRA at rank 4 does not suit rank 100+. For each task, method,
tower setting and every budget the sweep file's grid trains that method at (at 100 % data; methods without a
knob, full fine-tuning and (IA)3, once), `tune` trains over a log-spaced grid of learning rates with at least
two seeds, and widens the grid on a side while the best mean validation score sits at that edge. The first
grid is three half-decade points around the method's default (prompt tuning: 0.0316 to 1, as Lester et al.
train it at 0.3), or, once a neighbouring budget of the same method is tuned, three points around that budget's
rate. Every run goes to `results/lr-runs.csv` as it finishes (so the tuning resumes), and `results/lr.csv`
keeps, per task, method, towers and budget, the learning rate (and method options, e.g. prefix tuning's
reparametrisation) with the best mean validation score, whether it is bracketed (a worse grid point on both
sides), whether its tuning is complete (read off the runs: every point has all its seeds, and the best is
bracketed or at the lr ceiling) and the whole curve. lr.csv is rewritten whenever a `tune` process stops, so it
shows the tuning so far. Several `tune` processes may share one work folder and table, even on one target: each
run is claimed by one of them (`claim`).

A run without `--lr` takes its learning rate from `results/lr.csv` when that table has a complete row for its
task, method and towers (and the same method options, if it names any) at its own budget: a row serves a run
when both budgets resolve to the same parameter count (18k, 18000 and 18,000 are one budget; a percentage
resolves against the base model's size). A method without a knob has one row whatever the budget. Without a row
at its own budget a run takes the nearest tuned budget's rate (its source says which); the paper grid
(`require_tuned_lr`) refuses that and names the missing rows. No row at all: the method's default. The test
split is never read.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from training.budget import parse_budget
from training.catalog import CATALOG, NO_BUDGET_METHODS
from training.errors import UserError
from training.launch.executor import RunExecutor, RunSpec, run_one, sigterm_stops_runs
from training.launch.process import ProcessExecutor
from training.launch.resident import ResidentExecutor
from training.run import runs
from training.run.config import TASKS, RunConfig
from training.run.rates import (
    LR_TABLE,
    budget_distance,
    budget_key,
    lr_table,
    lr_towers,
    model_key,
    options_key,
    same_budget,
)
from training.sweeps.gpu_estimate import RunCost, gpu_hours_text
from training.sweeps.grid import budget_text, filter_feasible, load_spec

# The tuning runs' epoch caps, patience and tower setting come from the sweep file (sweeps/paper.yaml), so the
# learning rates are found under the schedule the grid runs.
RUNS_TABLE_NAME = "lr-runs.csv"
LR_COLUMNS = [
    "task",
    "method",
    "towers",
    "options",
    "lr",
    "val_metric",
    "val_sd",
    "seeds",
    "bracketed",
    "complete",
    "budget",
    "data_fraction",
    "base_model",  # empty: the embedded default; a rate is used only for runs on the model it was tuned on
    "curve",
]
RUN_COLUMNS = [
    "task",
    "method",
    "towers",
    "options",
    "lr",
    "seed",
    "budget",
    "data_fraction",
    "val_metric",
    "best_step",
    "steps_run",
    "epochs_run",
    "stop_reason",
    "train_s",
    "base_model",  # empty: the embedded default
    "run",
]
HALF_DECADE = math.sqrt(10)
CLAIMS = ".claims"  # in the work folder: one lock file per tuning run being trained (see claim)
CLAIM_POLL_S = 20.0  # how often a process whose remaining runs are all in flight elsewhere looks for their rows
MAX_WIDENINGS = 4
MAX_LR = 1.0  # RunConfig takes learning rates in (0, 1]
# The first grid (centre, points below, points above) where a method's literature trains far from its default:
# Lester et al. (2021) train prompt vectors at 0.3, so prompt tuning's grid spans 0.0316, 0.1, 0.316 and 1.
FIRST_GRID: dict[str, tuple[float, int, int]] = {"prompt": (0.1, 1, 2)}
# What the tuner tries besides the learning rate: a method that offers a reparametrised training form (prefix
# tuning's Li & Liang MLP, prompt tuning's residual MLP) is tuned with and without it; lr.csv keeps the better.
REPARAM = "reparam"


def budget_cell(text: str) -> str:
    """How lr.csv and lr-runs.csv write a budget: its parameter count (18k -> 18000) or percentage."""
    return str(parse_budget(text))


def gap_label(config: RunConfig) -> str:
    """'task method (towers)', and the budget for a method with a knob: 'vqa lora (text) at 57k'."""
    label = f"{config.task} {config.method} ({lr_towers(config.method, config.towers)})"
    return label if config.method in NO_BUDGET_METHODS else f"{label} at {budget_text(parse_budget(config.budget))}"


def tuning_gaps(configs: list[RunConfig], table: Path | None = None) -> tuple[list[str], list[str]]:
    """For the runs of a grid: (the task, method, towers and budget that lr.csv has no learning rate for, those
    whose tuning there is not complete: a seed to go, or a best not bracketed), as 'task method (towers) at
    budget'. A method with a knob needs a row at its own budget (a neighbouring budget's rate does not count);
    runs given an lr need none."""
    table = table or lr_table()
    rows = read_rows(table)
    missing, unfinished = [], []
    for config in configs:
        if config.lr is not None or config.method == "zero-shot":
            continue
        towers = lr_towers(config.method, config.towers)
        label = gap_label(config)
        if label in missing or label in unfinished:
            continue
        row = next(
            (
                r
                for r in rows
                if (r["task"], r["method"], r["towers"]) == (config.task, config.method, towers)
                and (r.get("base_model") or "") == model_key(config.base_model)
                and (config.method in NO_BUDGET_METHODS or same_budget(r.get("budget"), config.budget))
            ),
            None,
        )
        if row is None:
            missing.append(label)
        elif str(row.get("complete")) != "True":
            unfinished.append(label)
    return missing, unfinished


# -- the tuning sweep ------------------------------------------------------------------------------------


def lr_grid(center: float, below: int, above: int) -> list[float]:
    """Half-decade steps around `center`: `below` points under it and `above` over it."""
    return [float(f"{center * HALF_DECADE**k:.3g}") for k in range(-below, above + 1)]


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def append_run(path: Path, row: dict) -> list[dict]:
    """Add one finished tuning run to `path` and return every row in it.

    Several `tune` processes (say one per task, so that both CPU cores work) may share the table: the file is
    re-read under a lock and rewritten whole, so no process drops the rows another one added meanwhile.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in read_rows(path) if r.get("run") != row["run"]] + [row]
        write_rows(path, rows, RUN_COLUMNS)
    return rows


def curve(rows: list[dict]) -> dict[float, list[float]]:
    """Learning rate -> validation scores over seeds."""
    scores: dict[float, list[float]] = {}
    for row in rows:
        scores.setdefault(float(row["lr"]), []).append(float(row["val_metric"]))
    return dict(sorted(scores.items()))


def flat(scores: dict[float, list[float]]) -> bool:
    """Whether every rate of a curve of three or more scores the same mean: no rate beats another, typically because
    none beats the starting weights, the step-0 checkpoint every run may keep."""
    return len(scores) >= 3 and len({round(statistics.fmean(v), 9) for v in scores.values()}) == 1


def best_of(scores: dict[float, list[float]]) -> tuple[float, bool]:
    """(best learning rate by mean score, whether it is bracketed: a lower and a higher rate both score strictly
    below it). Of tied bests, the lowest rate, bracketed only when a higher rate scores below the tie. A flat curve
    gives its middle rate and counts as bracketed: widening it would only find the same score."""
    lrs = list(scores)
    means = [statistics.fmean(scores[lr]) for lr in lrs]
    if flat(scores):
        return lrs[len(lrs) // 2], True
    index = max(range(len(lrs)), key=lambda i: means[i])  # the first of tied maxima: every rate below is lower
    return lrs[index], index > 0 and any(mean < means[index] for mean in means[index + 1 :])


def finished_curve(scores: dict[float, list[float]], best: float, bracketed: bool) -> bool:
    """Whether `tune` is done with a curve, read off the curve alone: every learning rate has the same number of
    seeds (at least two), and the best is bracketed or at the learning-rate ceiling, where the grid cannot widen.
    A curve still being tuned (a seed to go, or a best at an edge that the next widening tests) is not."""
    counts = {len(values) for values in scores.values()}
    # The next grid point up would pass lr 1 (grid values are rounded to 3 digits: 0.316 stands for 10 ** -0.5).
    at_ceiling = best == max(scores) and best * HALF_DECADE > MAX_LR * 1.01
    return len(counts) == 1 and min(counts) >= 2 and (bracketed or at_ceiling)


@dataclass
class TuneTarget:
    task: str
    method: str
    towers: str
    options: dict
    budget: str | None = None  # None: the base config's budget (a method without a knob ignores it)

    def label(self) -> str:
        extra = f" {options_key(self.options)}" if self.options else ""
        at = f" at {self.budget}" if self.budget and self.method not in NO_BUDGET_METHODS else ""
        return f"{self.task} {self.method} ({self.towers}){extra}{at}"


def run_name(target: TuneTarget, lr: float, seed: int, base_model: str | None = None) -> str:
    opts = "".join(f"__{k}-{v}" for k, v in sorted(target.options.items()))
    # Another base model's runs get their own names (and rows): the embedded default's keep the plain ones.
    model = f"__m{hashlib.sha1(model_key(base_model).encode()).hexdigest()[:8]}" if base_model else ""
    budget = f"__b{budget_cell(target.budget)}" if target.budget and target.method not in NO_BUDGET_METHODS else ""
    return f"{target.task}__{target.method}__{target.towers}{opts}{model}{budget}__lr{lr:g}__s{seed}"


def target_budget(target: TuneTarget, base: RunConfig) -> str:
    return target.budget or base.budget


def tuning_grid(center: float, below: int, above: int) -> list[float]:
    """`lr_grid` without the points over the learning-rate ceiling (RunConfig takes at most lr 1): a neighbour's
    best at 1 gives 0.316 and 1, not 3.16."""
    return [lr for lr in lr_grid(center, below, above) if lr <= MAX_LR * 1.01]


def earlier_budgets(targets: list[TuneTarget], index: int) -> list[str]:
    """The budgets of the same task, method and options that come before `targets[index]`: the only ones its first
    grid may centre on, so a target's grid is the same in every session (a budget tuned later never moves it)."""

    def kind(t: TuneTarget) -> tuple:
        return (t.task, t.method, t.towers, options_key(t.options))

    return [t.budget for t in targets[:index] if t.budget and kind(t) == kind(targets[index])]


def first_grid(
    target: TuneTarget, base: RunConfig, done: list[dict], earlier: list[str] | None = None
) -> tuple[float, int, int, str]:
    """(centre, points below, points above, why) of a target's first grid: three points around the rate of the
    nearest budget among `earlier` (the budgets of the same method tuned before it; None: any) whose tuning is
    finished, else the method's own first grid."""
    budget = target_budget(target, base)
    if target.method not in NO_BUDGET_METHODS:
        allowed = None if earlier is None else {budget_cell(b) for b in earlier}
        # The same method and options at another budget: its finished curves, by budget.
        others: dict[str, list[dict]] = {}
        for row in done:
            if matches(row, replace(target, budget=row.get("budget") or budget), base) and row.get("budget"):
                if allowed is not None and budget_cell(row["budget"]) not in allowed:
                    continue
                if 0 < budget_distance(row["budget"], budget) < math.inf:
                    others.setdefault(budget_cell(row["budget"]), []).append(row)
        tuned = []
        for other, rows in others.items():
            scores = curve(rows)
            best, bracketed = best_of(scores)
            if finished_curve(scores, best, bracketed):
                tuned.append((budget_distance(other, budget), other, best))
        if tuned:
            _, other, best = min(tuned)
            return best, 1, 1, f"around the rate tuned at budget {other}"
    if target.method in FIRST_GRID:
        centre, below, above = FIRST_GRID[target.method]
        return centre, below, above, "the method's first grid"
    return CATALOG[target.method].default_lr, 1, 1, "around the method's default"


def matches(row: dict, target: TuneTarget, base: RunConfig) -> bool:
    """Whether a row of lr-runs.csv is a run of this target (its budget too, for a method with a knob)."""
    return (row["task"], row["method"], row["towers"], row["options"], row.get("base_model") or "") == (
        target.task,
        target.method,
        target.towers,
        options_key(target.options),
        model_key(base.base_model),
    ) and (target.method in NO_BUDGET_METHODS or same_budget(row.get("budget"), target_budget(target, base)))


TrainFn = Callable[[RunConfig, Path], dict]


def train_for_tuning(config: RunConfig, run_dir: Path) -> dict:
    """Train one run in a new process and return its validation summary."""
    return TuningRuns(ProcessExecutor())(config, run_dir)


def tuning_summary(run_dir: Path, code: int, log_tail: str) -> dict:
    """A finished tuning run's validation summary and training seconds; a failed one is a UserError."""
    evaluation = runs.read_json(run_dir / runs.EVAL) or {}
    summary = evaluation.get("validation")
    if code != 0 or not summary:
        raise UserError(f"tuning run {run_dir.name} failed (exit {code}):\n{log_tail}")
    return {**summary, "train_s": evaluation.get("train_s")}


class TuningRuns:
    """Tuning runs trained by an executor (training/launch/): by default one resident worker, which keeps the base
    model and the data loaded between them, else e.g. a new process each; a `TrainFn`. `close` ends its worker."""

    def __init__(self, executor: RunExecutor | None = None) -> None:
        # threads None: torch's default for this environment, as a fresh process would take
        self.executor = executor if executor is not None else ResidentExecutor(1, threads=None)

    def __call__(self, config: RunConfig, run_dir: Path) -> dict:
        # interrupted, run_one stops the run after its step, as a fresh process would
        result = run_one(self.executor, RunSpec(run_dir.name, str(run_dir), [*config.to_cli_args(), "--no-test"]))
        return tuning_summary(run_dir, result.returncode, result.error)

    def close(self) -> None:
        self.executor.close()


def tune(
    targets: list[TuneTarget],
    base: RunConfig,
    seeds: list[int],
    results: Path,
    work: Path,
    train_fn: TrainFn = train_for_tuning,
    echo: Callable[[str], None] = print,
    deadline: float | None = None,
) -> list[dict]:
    """Tune every target (in order: a target's first grid centres on an earlier, neighbouring budget's rate);
    returns the rows of lr.csv. Resumes from `results/lr-runs.csv`."""
    if len(seeds) < 2:
        raise UserError(
            "Tuning needs at least two seeds (--seeds 0 1), so that a learning rate is not picked on one seed's luck."
        )
    runs_path = results / RUNS_TABLE_NAME
    trainer = _PointTrainer(base, work, runs_path, train_fn, echo)
    done = read_rows(runs_path)
    for index, target in enumerate(targets):

        def mine(row: dict, target: TuneTarget = target) -> bool:
            return matches(row, target, base)

        def missing(rows: list[dict], lr: float, seed: int, mine=mine) -> bool:
            return not any(mine(r) and float(r["lr"]) == lr and int(r["seed"]) == seed for r in rows)

        center, below, above, _ = first_grid(target, base, done, earlier_budgets(targets, index))
        for _ in range(MAX_WIDENINGS + 1):
            grid = tuning_grid(center, below, above)
            while todo := [(lr, seed) for lr in grid for seed in seeds if missing(done, lr, seed)]:
                if deadline is not None and time.time() > deadline:
                    echo("tune: time is up; run the same command again to go on")
                    return write_summary(results, runs_path)
                trained = False
                for lr, seed in todo:
                    if deadline is not None and time.time() > deadline:
                        echo("tune: time is up; run the same command again to go on")
                        return write_summary(results, runs_path)
                    name = run_name(target, lr, seed, base.base_model)
                    with claim(work / CLAIMS / f"{name}.lock") as ours:
                        # Another tune process (on this folder) may be training it, or have just finished it.
                        done = read_rows(runs_path)
                        if not ours or not missing(done, lr, seed):
                            continue
                        done = trainer.train(target, lr, seed, name)
                        trained = True
                if not trained:  # what is left is in flight in another tune process: wait for its rows
                    time.sleep(CLAIM_POLL_S)
                    done = read_rows(runs_path)
            best, bracketed = best_of(curve([r for r in done if mine(r) and float(r["lr"]) in grid]))
            if bracketed:
                break
            # The best is at an edge of the grid: widen on that side (a learning rate stays at most 1, which
            # RunConfig requires; a best value at that ceiling is reported as not bracketed).
            if best == grid[0]:
                below += 1
            elif lr_grid(center, below, above + 1)[-1] <= MAX_LR * 1.01:
                above += 1
            else:
                break
        scores = curve([r for r in done if mine(r)])
        note = " (flat: every rate scores the same on validation)" if flat(scores) else ""
        echo(f"tune {target.label()}: best lr {best:g}" + ("" if bracketed else " (NOT bracketed)") + note)
    return write_summary(results, runs_path)


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Whether this process holds `path`'s lock for the block: a tuning run being trained. Several `tune`
    processes on one work folder (say two on the same target, so that both cores work on it) never train the
    same run twice, and a process that dies frees its claim with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@dataclass
class _PointTrainer:
    """What every tuning run of one `tune` call shares: the base settings, where runs and their rows go."""

    base: RunConfig
    work: Path
    runs_path: Path
    train_fn: TrainFn
    echo: Callable[[str], None]

    def train(self, target: TuneTarget, lr: float, seed: int, name: str) -> list[dict]:
        """Train one tuning run, add its row to lr-runs.csv and return every row there."""
        base = self.base
        config = RunConfig.from_dict(
            {
                **base.to_dict(),
                "task": target.task,
                "method": target.method,
                "towers": target.towers,
                "budget": target_budget(target, base),
                "lr": lr,
                "seed": seed,
                "method_options": target.options,
            }
        ).validate()
        started = time.perf_counter()
        summary = self.train_fn(config, self.work / name)
        row = {
            "task": target.task,
            "method": target.method,
            "towers": target.towers,
            "options": options_key(target.options),
            "lr": lr,
            "seed": seed,
            "budget": budget_cell(target_budget(target, base)),
            "data_fraction": base.data_fraction,
            "val_metric": summary["best"],
            "best_step": summary["best_step"],
            "steps_run": summary["steps_run"],
            "epochs_run": summary["epochs_run"],
            "stop_reason": summary["stop_reason"],
            "train_s": summary.get("train_s"),
            "base_model": model_key(base.base_model),
            "run": name,
        }
        done = append_run(self.runs_path, row)
        self.echo(
            f"tune {target.label()}: lr {lr:g} seed {seed}: validation {summary['best']:.4g} "
            f"(best step {summary['best_step']}, {summary['stop_reason']}, "
            f"{time.perf_counter() - started:.0f}s)"
        )
        return done


def write_summary(results: Path, runs_path: Path) -> list[dict]:
    """lr.csv from every tuning run so far, this process's and other tune processes' alike; a target still being
    tuned has `complete` False there, and no run or sweep takes its learning rate."""
    rows = summarise(read_rows(runs_path))
    write_rows(results / LR_TABLE.name, rows, LR_COLUMNS)
    return rows


def summarise(done: list[dict]) -> list[dict]:
    """lr.csv's rows from the tuning runs: per task, method, towers, budget and base model, the best learning rate
    and options."""
    groups: dict[tuple, list[dict]] = {}
    for row in done:
        budget = "" if row["method"] in NO_BUDGET_METHODS or not row.get("budget") else budget_cell(row["budget"])
        key = (row["task"], row["method"], row["towers"], row.get("base_model") or "", budget)
        groups.setdefault(key, []).append(row)
    table = []
    for (task, method, towers, base_model, _), rows in sorted(groups.items(), key=summary_order):
        candidates, complete = [], True
        for options in sorted({r["options"] for r in rows}):
            scores = curve([r for r in rows if r["options"] == options])
            lr, bracketed = best_of(scores)
            mean = statistics.fmean(scores[lr])
            candidates.append((mean, options, lr, bracketed, scores))
            complete = complete and finished_curve(scores, lr, bracketed)
        mean, options, lr, bracketed, scores = max(candidates, key=lambda c: c[0])
        values = scores[lr]
        table.append(
            {
                "task": task,
                "method": method,
                "towers": towers,
                "options": options,
                "lr": lr,
                "val_metric": round(mean, 6),
                "val_sd": round(statistics.stdev(values), 6) if len(values) > 1 else "",
                "seeds": len(values),
                "bracketed": bracketed,
                "complete": complete,
                "budget": budget_cell(rows[0]["budget"]) if rows[0].get("budget") else "",
                "data_fraction": rows[0]["data_fraction"],
                "base_model": base_model,
                "curve": json.dumps({f"{k:g}": round(statistics.fmean(v), 6) for k, v in scores.items()}),
            }
        )
    return table


def summary_order(item: tuple) -> tuple:
    """lr.csv's rows by task, method, towers, base model, then budget by size (not as text)."""
    (task, method, towers, base_model, budget), _ = item
    return (task, method, towers, base_model, budget_key(budget) if budget else ("", 0.0))


def option_choices(method: str) -> list[dict]:
    from training.methods import METHODS  # torch: `python -m training --help` imports this module

    return [{REPARAM: False}, {REPARAM: True}] if REPARAM in METHODS[method].options_accepted else [{}]


def targets_for(
    tasks: list[str], methods: list[str], towers: str, budgets: dict[str, list[str]] | None = None
) -> list[TuneTarget]:
    """The tuning targets: per task, method, its budgets (`budgets[method]`, in the order they are tuned; none
    given: the base config's) and option choices."""
    out = []
    for task in tasks:
        for method in methods:
            if method not in CATALOG or method == "zero-shot":
                raise UserError(
                    f"Cannot tune {method!r}: choose among methods that train "
                    f"({', '.join(m for m in CATALOG if m != 'zero-shot')})."
                )
            for budget in (budgets or {}).get(method) or [None]:
                for options in option_choices(method):
                    out.append(TuneTarget(task, method, lr_towers(method, towers), options, budget))
    return out


def grid_budgets(spec, task: str, methods: list[str], fraction: float) -> dict[str, list[str]]:
    """Every budget the sweep file's grid trains each method at on `fraction` of the data (those the method can
    reach; a method without a knob: none, it is tuned once), the data axis's budget first and the others by
    distance from it, so that each budget's first grid can centre on a tuned neighbour's rate."""
    points = [
        p
        for p in spec.points()
        if p.task == task and p.method in methods and p.fraction == fraction and p.seed == spec.seeds[0]
    ]
    kept, _ = filter_feasible(spec, points)
    reference = budget_text(spec.data_axis[0]) if spec.data_axis else None
    budgets: dict[str, list[str]] = {}
    for point in kept:
        if point.budget is not None:
            budgets.setdefault(point.method, []).append(budget_text(point.budget))
    for found in budgets.values():
        found.sort(key=lambda b: (budget_distance(b, reference) if reference else 0.0, budget_key(b)))
    return budgets


@dataclass
class PlanLine:
    target: TuneTarget
    text: str
    runs_to_go: int


def tuning_plan(targets: list[TuneTarget], base: RunConfig, seeds: list[int], done: list[dict]) -> list[PlanLine]:
    """What `tune` would do, a line a target: its first grid (and why), the runs it has and the runs its first
    grid still needs (widening may add more). A budget whose neighbour is still to be tuned waits for its rate."""
    plan: list[PlanLine] = []
    for index, target in enumerate(targets):
        earlier = earlier_budgets(targets, index)
        centre, below, above, why = first_grid(target, base, done, earlier)
        mine = [r for r in done if matches(r, target, base)]
        if earlier and not why.startswith("around the rate tuned") and target.method not in NO_BUDGET_METHODS:
            neighbour = min(earlier, key=lambda b: budget_distance(b, target_budget(target, base)))
            shown, to_go = "3 points", 3 * len(seeds) - len(mine)
            why = f"around the rate tuned at budget {neighbour}, once it is tuned"
        else:
            grid = tuning_grid(centre, below, above)
            have = {(float(r["lr"]), int(r["seed"])) for r in mine}
            shown = ", ".join(f"{lr:g}" for lr in grid)
            to_go = sum((lr, seed) not in have for lr in grid for seed in seeds)
        text = f"{target.label()}: first grid {shown} ({why}); {len(mine)} runs done, {max(0, to_go)} to go"
        plan.append(PlanLine(target, text, max(0, to_go)))
    return plan


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="find each method's learning rate on the validation split")
    parser.add_argument(
        "--config",
        default="sweeps/paper.yaml",
        help="the sweep file whose settings (towers, epoch caps, patience, batch size, base model, "
        "datasets) the tuning runs use, and whose grid's budgets (at --data-fraction) are tuned",
    )
    parser.add_argument("--tasks", nargs="+", default=None, choices=TASKS, help="default: the sweep file's tasks")
    parser.add_argument("--methods", nargs="+", default=None, help="default: the sweep file's methods that train")
    parser.add_argument("--data-fraction", type=float, default=1.0)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--work-dir", default="runs/tune", help="run directories (not kept in results)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no run after this long; run the same command again to go on (0: start none, only rewrite lr.csv "
        "from the runs so far)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the targets (task, method, budget), their first grids and runs"
    )
    parser.add_argument(
        "--fresh-process",
        action="store_true",
        help="start each tuning run in a process of its own, loading the model and data again (default: one "
        "resident worker keeps them loaded between runs)",
    )
    parser.set_defaults(func=cmd_tune)


def estimate_seconds(spec, task: str, method: str) -> float:
    """Seconds of one tuning run (on all the data) from the sweep file's `estimate_s`, for the dry run."""
    per_task = spec.estimate_s.get(task, 300.0)
    return float(per_task.get(method, 300.0) if isinstance(per_task, dict) else per_task)


@dataclass
class TuningClock:
    """Seconds of one tuning run of a task and method for the dry run, following the measured speed: the mean
    `train_s` of that pair's finished tuning runs; else the sweep file's `estimate_s` scaled by how the task's
    finished runs compared with their own `estimate_s` (the file's figures include test scoring, which a tuning run
    skips); else `estimate_s` itself."""

    spec: object
    seen: dict[tuple[str, str], list[float]]

    @classmethod
    def from_rows(cls, spec, rows: list[dict]) -> TuningClock:
        seen: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            try:
                seconds = float(row.get("train_s") or "nan")
            except ValueError:
                continue
            if math.isfinite(seconds) and seconds > 0:
                seen.setdefault((row["task"], row["method"]), []).append(seconds)
        return cls(spec, seen)

    def scale(self, task: str) -> float | None:
        ratios = [
            statistics.fmean(found) / estimate_seconds(self.spec, t, method)
            for (t, method), found in self.seen.items()
            if t == task
        ]
        return statistics.fmean(ratios) if ratios else None

    def seconds(self, task: str, method: str) -> float:
        own = self.seen.get((task, method))
        if own:
            return statistics.fmean(own)
        return (self.scale(task) or 1.0) * estimate_seconds(self.spec, task, method)

    def source(self) -> str:
        """Where the figures come from, in words, for the dry run's last line."""
        finished = sum(len(found) for found in self.seen.values())
        if not finished:
            return "at the sweep file's estimate_s"
        return (
            f"from {finished} finished tuning runs' own times (a method without any: the sweep file's estimate_s "
            "scaled as its task's finished runs compare with theirs)"
        )


def cmd_tune(args: argparse.Namespace) -> int:
    spec = load_spec(args.config)
    methods = [m for m in (args.methods or spec.methods) if m != "zero-shot"]
    reference = spec.data_axis[0] if spec.data_axis else None
    deadline = time.time() + args.max_minutes * 60 if args.max_minutes is not None else None
    towers = spec.settings.get("towers", "both")
    train_fn = TuningRuns(ProcessExecutor() if args.fresh_process or args.dry_run else None)
    try:
        with sigterm_stops_runs():
            return _tune_tasks(args, spec, methods, reference, deadline, towers, train_fn)
    except KeyboardInterrupt:
        print(
            "interrupted: the runs that finished are in lr-runs.csv; run the same command to go on where it stopped.",
            file=sys.stderr,
        )
        return 130
    finally:
        train_fn.close()


def _tune_tasks(args, spec, methods, reference, deadline, towers, train_fn) -> int:
    """cmd_tune's work: each task's plan (the dry run) or its tuning."""
    total_runs, total_s, total_flops = 0, 0.0, 0.0
    clock = TuningClock.from_rows(spec, [])
    cost = gpu_cost(spec) if args.dry_run else None
    for task in args.tasks or list(spec.tasks):
        values = {
            **spec.settings,
            **spec.tasks[task],
            "task": task,
            "data_fraction": args.data_fraction,
            "base_model": spec.base_model,
            "dataset": spec.datasets.get(task),
        }
        if reference is not None:
            values["budget"] = str(reference)
        base = RunConfig.from_dict(values).validate()
        targets = targets_for([task], methods, towers, grid_budgets(spec, task, methods, args.data_fraction))
        if args.dry_run:
            done = read_rows(spec.results / RUNS_TABLE_NAME)
            clock = TuningClock.from_rows(spec, done)
            for line in tuning_plan(targets, base, args.seeds, done):
                print(line.text)
                total_runs += line.runs_to_go
                total_s += line.runs_to_go * clock.seconds(task, line.target.method)
                if cost is not None:
                    total_flops += line.runs_to_go * cost(tuning_config(line.target, base)).total
            continue
        # flush: the progress lines must show as they happen when the output goes to a file or a pipe
        tune(
            targets,
            base,
            args.seeds,
            spec.results,
            Path(args.work_dir),
            train_fn=train_fn,
            echo=lambda line: print(line, flush=True),
            deadline=deadline,
        )
    if args.dry_run and cost is not None:
        print(
            f"at least {total_runs} tuning runs to go (first grids; a best at an edge widens its grid), at their epoch "
            f"caps on one GPU, from FLOPs (not measured; the sweep file's gpu_estimate): "
            f"{gpu_hours_text(total_flops, spec.gpu_estimate)}"
        )
    elif args.dry_run:
        print(
            f"at least {total_runs} tuning runs to go (first grids; a best at an edge widens its grid), about "
            f"{total_s / 3600:.1f} h of runs {clock.source()} ({total_s / 7200:.1f} h with two tune processes, one "
            "per core)"
        )
    return 0


def gpu_cost(spec):
    """The FLOPs of a tuning run on the sweep's base model, when the sweep file estimates GPU time (else None)."""
    if spec.gpu_estimate is None:
        return None
    from training.model.shape import model_shape  # transformers: `python -m training --help` imports this module

    return RunCost(model_shape(spec.base_model), spec.gpu_estimate)


def tuning_config(target: TuneTarget, base: RunConfig) -> RunConfig:
    """The RunConfig a tuning run of `target` trains with (its rate aside), as _PointTrainer.train builds it."""
    return RunConfig.from_dict(
        {
            **base.to_dict(),
            "task": target.task,
            "method": target.method,
            "towers": target.towers,
            "budget": target_budget(target, base),
            "method_options": target.options,
            "score_test": False,  # train_for_tuning's --no-test: tuning never scores the test split
        }
    ).validate()
