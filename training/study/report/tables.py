"""The report's descriptive tables: gains over zero-shot and the answer prior, VQA per question type, and how
far each method gets."""

from __future__ import annotations

import math

import numpy as np

from training.catalog import MAIN_METRIC, PEFT_METHODS
from training.study.report.curves import reference_budget, unbudgeted_label
from training.study.report.inputs import Prior, task_rows
from training.study.report.rules import CAP_REASONS, STOPPED_IMPROVING
from training.study.report.stats import Stats, per_seed_mean


def gains_table(frame, stats: Stats) -> list[str]:
    """Per task and method, at full data and the reference budget: the metric, minus zero-shot, minus the prior."""
    lines = ["| task | method | held | metric | minus zero-shot | minus answer prior |", "|---|---|---|---|---|---|"]
    for task in MAIN_METRIC:
        rows = task_rows(frame, task)
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
    rows = task_rows(frame, "vqa")
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


def stopped_improving(frame) -> tuple[np.ndarray, str]:
    """Per run, whether a cap stopped it while validation was still improving, and where that was read from: the
    table's own column, or (older tables) a cap among the stop reasons with the kept checkpoint at the last step."""
    if STOPPED_IMPROVING in frame and frame[STOPPED_IMPROVING].notna().any():
        flags = frame[STOPPED_IMPROVING].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes"))
        return flags.to_numpy(dtype=bool), f"the table's `{STOPPED_IMPROVING}` column"
    capped = frame.stop_reason.isin(CAP_REASONS).to_numpy()
    best, last = (frame[column].to_numpy(dtype=float) for column in ("best_step", "steps_run"))
    return capped & (best == last), "computed: a cap among the stop reasons and `best_step` = `steps_run`"


def stopped_improving_lines(frame) -> list[str]:
    """The count of runs a cap stopped while still improving (target 0), where it comes from, and the runs."""
    flags, how = stopped_improving(frame)
    trained = (frame.method != "zero-shot").to_numpy()
    capped = frame[flags & trained]
    lines = [
        f"**{len(capped)} of {int(trained.sum())} trained runs** were stopped by a cap while validation was still "
        f"improving (the protocol's target is 0; {how}).",
        "",
    ]
    if not capped.empty:
        counts = capped.groupby(["task", "method"]).size()
        lines += [
            "By task and method: " + ", ".join(f"{task} {method} {n}" for (task, method), n in counts.items()) + ".",
            "",
        ]
    return lines


def reach_table(frame, stats: Stats) -> list[str]:
    """Per task and method: its best cell of the grid (chosen on the mean validation score; on test only for a
    table without validation scores), its validation and test scores and share of test items scored 0 there, and
    how its runs stopped."""
    lines = [
        "| task | method | best cell (chosen on) | validation there | test there | test items scored 0 there | "
        "training loss there | median epochs | stop reasons | stopped by a cap while improving | "
        "learning rate from |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    flags, _ = stopped_improving(frame)
    for task in MAIN_METRIC:
        rows = task_rows(frame, task)
        for method in [*PEFT_METHODS, "full"]:
            mine = rows[rows.method == method]
            if mine.empty:
                continue
            on_validation = mine.val_metric.notna().any()
            score = "val_metric" if on_validation else MAIN_METRIC[task]
            means = mine.fillna({"budget": "-"}).groupby(["budget", "data_fraction"])[score].mean().dropna()
            if means.empty:
                continue
            budget, fraction = means.idxmax()
            cell = mine[(mine.budget.fillna("-") == budget) & (mine.data_fraction == fraction)]
            validation, test = cell.val_metric.mean(), cell[MAIN_METRIC[task]].mean()
            loss = cell.train_loss.mean()
            zeros = "-"
            if task in stats.weights:  # e.g. VQA answers that earn no credit, empty ones included
                zeros = f"{np.mean([np.mean(stats.items.scores[str(r)] == 0) for r in cell.run]):.0%}"
            epochs = mine.epochs_run.median()
            reasons = mine.stop_reason.dropna().value_counts()
            lr = ", ".join(sorted(mine.lr_source.dropna().astype(str).unique())) or "-"
            at = f"budget {budget}" if budget != "-" else unbudgeted_label(method, cell)
            lines.append(
                f"| {task} | {method} | {at}, {fraction:.0%} data ({'validation' if on_validation else 'test'}) | "
                f"{f'{validation:.3g}' if np.isfinite(validation) else '-'} | {test:.3g} | {zeros} | "
                f"{f'{loss:.3g}' if np.isfinite(loss) else '-'} | "
                f"{f'{epochs:.3g}' if np.isfinite(epochs) else '-'} | "
                f"{', '.join(f'{k} {v}' for k, v in reasons.items()) or '-'} | "
                f"{int(flags[(frame.task == task).to_numpy() & (frame.method == method).to_numpy()].sum())} | {lr} |"
            )
    return lines
