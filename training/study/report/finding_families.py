"""Finding 3: layer composition beats embedding composition, per pair of methods at matched cells."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.catalog import EMBEDDING, FAMILY, LAYER, MAIN_METRIC, NO_BUDGET_METHODS, PEFT_METHODS
from training.study.report.finding import (
    Finding,
    family_text,
    judged_methods,
    label,
    names,
    number,
    p_text,
    unit_p_text,
    units_source,
    without_smallest_fraction,
)
from training.study.report.inputs import task_rows
from training.study.report.rules import MIN_SEEDS, REPRODUCED, UNDETERMINED, agreement, overall
from training.study.report.stats import Interval, Stats
from training.study.report.units import Part, Unit, judge_units, pooled_holds

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
    """Layer minus embedding at matched cells, for one pair (or the pooled families) on one task and towers. A pair
    on one task and tower setting is a unit of finding 3: `unit` holds its test, and why it is undetermined."""

    task: str
    towers: str
    layer: str
    embedding: str
    cells: int
    wins: int
    gap: Interval | None
    unit: Unit

    @property
    def state(self) -> str:
        return self.unit.state


def missing_cells(layer_cells: dict, embedding_cells: dict, towers: str, matched: list[tuple]) -> str:
    """The matched cells a seed lacks, in words ("seed 2 lacks 3 of 21 matched cells"), or "" when every seed the
    pair was run with has every cell (budget, data fraction) that another seed has: a seed short of one would be
    averaged over other cells."""
    seeds = {k[2] for cells in (layer_cells, embedding_cells) for k in cells if towers in ("all", k[3])}
    wanted = {(k[0], k[1], k[3]) for k in matched}
    gaps = []
    for seed in sorted(seeds, key=str):
        have = {(k[0], k[1], k[3]) for k in matched if k[2] == seed}
        if have != wanted:
            gaps.append(f"seed {seed} lacks {len(wanted - have)} of {len(wanted)} matched cells")
    return "; ".join(gaps)


def paired_gap(
    layer_cells: dict, embedding_cells: dict, task: str, towers: str, layer: str, embedding: str, stats: Stats
) -> Gap:
    matched = sorted(set(layer_cells) & set(embedding_cells), key=str)
    if towers != "all":
        matched = [k for k in matched if k[3] == towers]
    name = f"{layer} vs {embedding} ({task}, towers {towers})"
    why = missing_cells(layer_cells, embedding_cells, towers, matched) if matched else "no matched cells"
    absent = [m for m, cells in ((layer, layer_cells), (embedding, embedding_cells)) if not cells]
    if absent:
        why = f"no {task} runs of {names(absent)}"
    gap = None
    if matched and not why:
        per_seed: dict[int, list] = {}
        for key in matched:
            per_seed.setdefault(int(key[2]), []).append(layer_cells[key] - embedding_cells[key])
        gap = stats.interval({s: np.mean(v, axis=0) for s, v in per_seed.items()})
        if gap is None or not gap.known:
            why = f"fewer than {MIN_SEEDS} seeds"
    wins = sum(float(layer_cells[k][0]) > float(embedding_cells[k][0]) for k in matched)
    return Gap(task, towers, layer, embedding, len(matched), wins, gap, Unit(name, {"gap": Part([gap])}, why))


def family_gaps(
    frame, task: str, stats: Stats, methods: list[str] | None = None
) -> tuple[list[Gap], list[Gap], Gap | None]:
    """(per pair and tower setting, per pair pooled over towers, the two families pooled). `methods`: the PEFT
    methods whose pairs are units (default: those the table has); a pair without matched cells is one all the
    same, undetermined, and left out of the pooled views."""
    rows = task_rows(frame, task)
    rows = fixed_counts_at_nearest_budget(rows[rows.method.isin(PEFT_METHODS)])
    methods = [m for m in PEFT_METHODS if m in (methods if methods is not None else set(rows.method))]
    values = stats.values(rows, task) if not rows.empty else np.empty((0, 1))  # a task without runs has no metric
    by_method = {m: _cells(rows[rows.method == m], values[(rows.method == m).to_numpy()]) for m in methods}
    layers = [m for m in methods if FAMILY[m] == LAYER]
    embeddings = [m for m in methods if FAMILY[m] == EMBEDDING]
    towers = sorted({k[3] for cells in by_method.values() for k in cells}, key=str) or ["-"]
    per_towers, pooled = [], []
    for layer in layers:
        for embedding in embeddings:
            for setting in towers:
                per_towers.append(
                    paired_gap(by_method[layer], by_method[embedding], task, setting, layer, embedding, stats)
                )
            gap = paired_gap(by_method[layer], by_method[embedding], task, "all", layer, embedding, stats)
            pooled += [gap] if gap.gap else []
    families = None
    present = [m for m in layers if by_method[m]], [m for m in embeddings if by_method[m]]
    if all(present):
        families = paired_gap(
            _family_cells(by_method, present[0]),
            _family_cells(by_method, present[1]),
            task,
            "all",
            LAYER,
            EMBEDDING,
            stats,
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


def judged_gaps(frame, stats: Stats, methods: list[str] | None = None) -> tuple[dict, list[Gap], dict]:
    """Every pair x task x towers gap (the finding's units, Holm over them), and the two families pooled on each
    task (the pooled tests, which must all hold)."""
    views = {task: family_gaps(frame, task, stats, methods) for task in MAIN_METRIC}
    units = [g for task in MAIN_METRIC for g in views[task][0]]
    judge_units([g.unit for g in units])
    return views, units, {task: views[task][2] for task in MAIN_METRIC}


def _verdict(units: list[Gap], pooled: dict) -> str:
    return overall([g.state for g in units], [pooled_holds([g.gap]) if g else None for g in pooled.values()])


def finding_families(frame, stats: Stats, grid: list[str] | None = None) -> Finding:
    methods = judged_methods(frame, grid)
    views, units, pooled = judged_gaps(frame, stats, methods)
    _, robust_list, robust_pooled = judged_gaps(without_smallest_fraction(frame), stats, methods)
    robust_units = {(g.task, g.towers, g.layer, g.embedding): g for g in robust_list}
    verdict, robust_verdict = _verdict(units, pooled), _verdict(robust_list, robust_pooled)
    failing = [
        f"{g.layer} vs {g.embedding} ({g.task}, towers {g.towers}: {g.state}"
        + (f", {g.unit.why})" if g.unit.why else ")")
        for g in units
        if g.state != REPRODUCED
    ]
    states = [g.state for g in units]
    pooled_text = (
        "Pooled (layer family minus embedding family): "
        + "; ".join(
            f"{task} {p_text(g.gap) if g and g.gap else g.unit.why if g else 'no matched cells'}"
            for task, g in pooled.items()
        )
        + f"; {agreement(states) if states else 'no units'}. "
        + family_text(
            [g.unit for g in units],
            f"each layer method against each embedding method, per task and tower setting, among {units_source(grid)}",
        )
    )
    summary = (
        f"{sum(g.state == REPRODUCED for g in units)} of {len(units)} pairs x task x towers hold. "
        f"Not holding: {names(failing)}. {pooled_text} Without the smallest data fraction: {robust_verdict}."
    )
    table = [
        "| task | towers | layer - embedding | matched cells | layer ahead | difference | unit's test | verdict | "
        "without smallest fraction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in MAIN_METRIC:
        per_towers, by_pair, families = views[task]
        for gap in per_towers:
            twin = robust_units.get((gap.task, gap.towers, gap.layer, gap.embedding))
            table.append(_gap_row(gap, gap.state, twin.state if twin else "-", unit_p_text(gap.unit)))
        if len({g.towers for g in per_towers}) > 1:
            table += [_gap_row(gap, "(pooled)", "-") for gap in by_pair]
        if families:
            table.append(_gap_row(families, "(families pooled)", "-"))
    reasons = []
    if verdict == UNDETERMINED:
        reasons.append(
            "Too few seeds or no budget at which both families were run: each pair needs at least "
            f"{MIN_SEEDS} seeds, each with every matched cell, and budgets inside both methods' ranges."
        )
    if failing:
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
        "and tower setting. Holding above zero (one-sided p-value, Holm over every pair, task and tower setting): "
        "reproduced. "
        "Overall: the families pooled on each task and the share of pairs reproduced.",
        verdict,
        robust_verdict,
        summary,
        table,
        "figures/families.png",
        " ".join(reasons),
        plain_sentence(units, pooled),
        pooled_text,
    )


def plain_sentence(units: list[Gap], pooled: dict) -> str:
    """Finding 3 for someone picking a method: how far the layer methods are ahead, in each task's units."""
    leads = [
        f"{number(g.gap.mean)} {'points of VQA accuracy' if task == 'vqa' else 'CIDEr-D on captioning'}"
        for task, g in pooled.items()
        if g and g.gap
    ]
    if not leads:
        return "There are no runs where a layer method and an embedding method were trained alike to compare."
    holding = sum(g.state == REPRODUCED for g in units)
    ahead = all(pooled_holds([g.gap]) for g in pooled.values() if g)
    layers = names(sorted({label(g.layer) for g in units}))
    embeddings = names(sorted({label(g.embedding) for g in units}))
    return (
        f"At the same budget and amount of data, the layer methods ({layers}) score on average "
        f"{' and '.join(leads)} {'above' if ahead else 'against'} the embedding methods ({embeddings}), and "
        f"{holding} of {len(units)} pairings lead beyond doubt, "
        + (
            "so prefer a layer method"
            if ahead and holding == len(units)
            else "so prefer a layer method, but check the pairs that do not lead"
            if ahead
            else "so the family alone does not decide which method to pick"
        )
        + "."
    )


def _gap_row(gap: Gap, state: str, robust: str, test: str = "-") -> str:
    return (
        f"| {gap.task} | {gap.towers} | {gap.layer} - {gap.embedding} | {gap.cells} | {gap.wins} | "
        f"{p_text(gap.gap)} | {test} | {state} | {robust} |"
    )
