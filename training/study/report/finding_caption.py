"""Finding 2: captioning (consistent with pre-training) is flat in data and has an interior parameter optimum;
the same test on VQA is the control."""

from __future__ import annotations

import numpy as np

from training.catalog import MAIN_METRIC, NO_BUDGET_METHODS
from training.study.report.curves import data_curves, param_curves
from training.study.report.finding import (
    Finding,
    family_text,
    judged_methods,
    missing_curve,
    names,
    number,
    p_text,
    pooled,
    spread,
    too_few,
    unit_p_text,
    units_source,
    without_smallest_fraction,
    yes,
    zero_shot,
)
from training.study.report.rules import FLAT_SHARE, PARTLY, REPRODUCED, UNDETERMINED, agreement, overall
from training.study.report.stats import Stats
from training.study.report.units import Part, Unit, judge_units, pooled_holds

OUTCOME = {True: "holds:", False: "fails:", None: "not judged:"}  # how a pooled test reads in the summary
NO_GAIN = "no gain over zero-shot to be flat against"


def why_not_flat(unit: dict) -> str:
    """Why a method's flatness part does not hold, in words."""
    if not unit["gain"].above_zero:
        return NO_GAIN
    if not unit["margin"].above_zero:
        return f"rise not shown below {FLAT_SHARE:.0%} of the gain"
    return "not significant after Holm over the methods"


def optimum_part(params) -> Part:
    """The interior-optimum part of a method: the budget best on validation beats both the largest and the
    smallest budget on test. A best at an edge cannot (p = 1); its difference to the other edge is still shown."""
    if params is None or not params.best:
        return Part([None])
    ends = [params.best.get("best_minus_largest"), params.best.get("best_minus_smallest")]
    if params.best["interior"]:
        return Part(ends)
    return Part([e for e in ends if e is not None] or [None], possible=False)


def flatness_units(frame, task: str, stats: Stats, methods: list[str]) -> tuple[dict[str, dict], dict]:
    """Finding 2's test per PEFT method on one task (a unit: flat in data and, with a knob, an interior optimum in
    parameters; Holm over the task's methods), and the pooled tests over the methods."""
    data = {c.method: c for c in data_curves(frame, task, stats)}
    params = {c.method: c for c in param_curves(frame, task, stats)}
    zero, zero_any = zero_shot(frame, task, stats)
    units = {}
    for method in methods:
        d, p = data.get(method), params.get(method)
        unit = {"data": d, "params": p, "gain": None, "rise": None, "share": None, "margin": None, "why": ""}
        why = missing_curve(frame, task, method, d, "data") or ("" if zero_any is not None else "no zero-shot runs")
        if not why:
            seeds = sorted(d.last)
            gain = {s: d.last[s] - zero.get(s, zero_any) for s in seeds}
            rise = {s: d.last[s] - d.first[s] for s in seeds}
            margin = {s: FLAT_SHARE * gain[s] - rise[s] for s in seeds}
            unit.update(
                per_seed={"gain": gain, "rise": rise, "margin": margin},
                gain=stats.interval(gain),
                rise=stats.interval(rise),
                share=stats.interval(rise, gain),
                margin=stats.interval(margin),
            )
        parts = {"flat": Part([unit["gain"], unit["margin"]])}
        if method not in NO_BUDGET_METHODS:  # a fixed count has no parameter axis
            parts["optimum"] = optimum_part(p)
            why = why or missing_curve(frame, task, method, p, "params")
        unit["unit"] = Unit(method, parts, why)
        units[method] = unit
    judge_units([u["unit"] for u in units.values()])
    for unit in units.values():
        if unit["unit"].parts["flat"].holds is False:
            unit["why"] = why_not_flat(unit)
    return units, pooled_tests(units, stats)


def checks(unit: dict) -> list[bool | None]:
    """Whether a method's flatness and interior-optimum parts hold (None: not judged, or no parameter axis)."""
    return [unit["unit"].holds("flat"), unit["unit"].holds("optimum")]


def pooled_tests(units: dict, stats: Stats) -> dict:
    """The claim's statistics averaged over the judged methods, per seed: the mean gain over zero-shot and the mean
    FLAT_SHARE x gain - rise (flat: both hold), and over the methods with a knob the mean of min(best - largest,
    best - smallest), which is at most zero for a best at an edge (an interior optimum: it holds)."""
    judged = [u for u in units.values() if u["unit"].judged]
    knobs = [u["params"].best["per_seed"] for u in judged if "optimum" in u["unit"].parts]
    tests = {
        "gain": pooled(stats, [u["per_seed"]["gain"] for u in judged]),
        "margin": pooled(stats, [u["per_seed"]["margin"] for u in judged]),
        "best - better edge": pooled(stats, [better_edge(best) for best in knobs]),
    }
    tests["flat"] = pooled_holds([tests["gain"], tests["margin"]])
    tests["optimum"] = pooled_holds([tests["best - better edge"]])
    return tests


def better_edge(per_seed: dict) -> dict:
    """Per seed, min(best - largest, best - smallest): above zero only where the best budget beats both edges (at
    an edge, one of the two is zero)."""
    largest, smallest = per_seed["best_minus_largest"], per_seed["best_minus_smallest"]
    return {s: np.minimum(largest[s], smallest[s]) for s in largest if s in smallest}


def _separates(caption: dict, vqa: dict) -> tuple[bool, bool]:
    """Whether each part (flat, optimum) passes for more methods on captioning than on VQA."""
    return tuple(
        sum(checks(u)[i] is True for u in caption.values()) > sum(checks(u)[i] is True for u in vqa.values())
        for i in (0, 1)
    )


def _caption_verdict(caption: dict, tests: dict, vqa: dict) -> str:
    verdict = overall([u["unit"].state for u in caption.values()], [tests["flat"], tests["optimum"]])
    return PARTLY if verdict == REPRODUCED and not all(_separates(caption, vqa)) else verdict


def finding_caption(frame, stats: Stats, grid: list[str] | None = None) -> Finding:
    robust_frame = without_smallest_fraction(frame)
    methods = judged_methods(frame, grid)
    views = {task: flatness_units(frame, task, stats, methods) for task in MAIN_METRIC}
    robust = {task: flatness_units(robust_frame, task, stats, methods) for task in MAIN_METRIC}
    (caption, tests), vqa = views["caption"], views["vqa"][0]
    verdict = _caption_verdict(caption, tests, vqa)
    robust_verdict = _caption_verdict(*robust["caption"], robust["vqa"][0])
    passing = {
        task: [sum(checks(u)[i] is True for u in views[task][0].values()) for i in (0, 1)] for task in MAIN_METRIC
    }
    separates = _separates(caption, vqa)
    states = [u["unit"].state for u in caption.values()]
    chosen_on = {u["params"].best["chosen_on"] for u in caption.values() if u["params"]}
    unknown = [f"{m} ({u['unit'].why})" for m, u in caption.items() if not u["unit"].judged]
    pooled_text = (
        f"Pooled over the methods (captioning): gain over zero-shot {p_text(tests['gain'])}, "
        f"{FLAT_SHARE:.0%} x gain - rise {p_text(tests['margin'])}: {OUTCOME[tests['flat']]} flat; "
        f"min(best - largest, best - smallest) {p_text(tests['best - better edge'])}: "
        f"{OUTCOME[tests['optimum']]} an interior optimum"
        f"; {agreement(states) if states else 'no units'}. "
        + family_text([u["unit"] for u in caption.values()], units_source(grid))
        + " VQA, the control, is a family of its own."
    )
    summary = (
        f"Captioning: flat in data for {names([m for m, u in caption.items() if checks(u)[0]])}, "
        f"not flat for {names([m + ' (' + u['why'] + ')' for m, u in caption.items() if checks(u)[0] is False])}; "
        f"interior optimum for {names([m for m, u in caption.items() if checks(u)[1]])}, no interior optimum "
        f"for {names([m for m, u in caption.items() if checks(u)[1] is False])} (best budgets chosen on "
        f"{names(sorted(chosen_on))})"
        + (f"; not judged (undetermined): {names(unknown)}" if unknown else "")
        + f". {pooled_text} The same test on VQA: flat for "
        f"{passing['vqa'][0]} and an interior optimum for {passing['vqa'][1]} of {len(methods)} methods "
        f"(captioning: {passing['caption'][0]} and {passing['caption'][1]}), so the flatness part "
        f"{'separates' if separates[0] else 'does not separate'} the tasks and the optimum part "
        f"{'separates' if separates[1] else 'does not separate'} them. Without the smallest data fraction: "
        f"{robust_verdict}."
    )
    table = [
        "| method | task | gain over zero-shot at full data | rise from smallest to largest fraction | rise / gain | "
        "flat | best budget on validation (params) | best - largest | best - smallest | interior optimum | "
        "unit's test | verdict | without smallest fraction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        for task in MAIN_METRIC:
            unit, p = views[task][0][method], views[task][0][method]["params"]
            where, largest, smallest = "-", "-", "-"
            if p and p.best:
                where = (
                    f"{p.best['best_params']:,} ({'interior' if p.best['interior'] else 'edge'}, "
                    f"{p.best['best_index'] + 1} of {p.best['budgets']})"
                )
                at_largest, at_smallest = p.best["best_index"] == p.best["budgets"] - 1, p.best["best_index"] == 0
                largest = "best is the largest" if at_largest else p_text(p.best["best_minus_largest"])
                smallest = "best is the smallest" if at_smallest else p_text(p.best["best_minus_smallest"])
            # A share of a gain that is not there reads as noise: shown only where fine-tuning is useful.
            share = unit["share"].text(2) if unit["share"] and unit["gain"].above_zero else "-"
            flat, optimum = checks(unit)
            flat_text = yes(flat) + (f" ({unit['why']})" if flat is False else "")
            table.append(
                f"| {method} | {task} | {p_text(unit['gain'])} | {unit['rise'].text() if unit['rise'] else '-'} | "
                f"{share} | {flat_text} | "
                f"{where} | {largest} | {smallest} | {yes(optimum)} | {unit_p_text(unit['unit'])} | "
                f"{unit['unit'].state if task == 'caption' else 'control'} | "
                f"{robust[task][0][method]['unit'].state if task == 'caption' else '-'} |"
            )
    reasons = []
    if verdict == UNDETERMINED:
        reasons.append(too_few(frame, "caption"))
    if any(u["why"] == NO_GAIN for u in caption.values()):
        reasons.append(
            "A method whose fine-tuning adds nothing over zero-shot is not flat in data, it is useless at every "
            "fraction: whether the data matters cannot be read from a task the model has no room to learn."
        )
    if passing["caption"][1] < len(caption):
        reasons.append(
            "An interior optimum needs the largest budgets to over-fit or drift from the pre-trained "
            "behaviour; with early stopping on validation a larger adapter stops before it hurts. The best "
            "budget is picked on validation and must beat both edges on test by paired intervals, so a noisy "
            "winner does not make an optimum."
        )
    if not all(separates):
        reasons.append(
            "A part that passes as often on VQA as on captioning does not tell the tasks apart, so it "
            "cannot be evidence that consistency with pre-training is what makes captioning flat."
        )
    return Finding(
        2,
        "Captioning (consistent with pre-training) is flat in data size and has an optimal, interior parameter size.",
        "Per PEFT method: flat when fine-tuning at full data beats zero-shot and the rise from the smallest to the "
        f"largest fraction stays below {FLAT_SHARE:.0%} of that gain; an interior optimum when the budget best on "
        "validation beats both the largest and the smallest on test (paired; a best at an edge cannot). Both "
        "holding, every check above zero (the method's p-value the largest of its checks' one-sided p-values, "
        "Holm over the task's methods): reproduced. Run on both tasks; VQA is the control. Overall: the pooled "
        "tests and the share of methods reproduced.",
        verdict,
        robust_verdict,
        summary,
        table,
        "figures/param_size.png",
        " ".join(reasons),
        plain_sentence(caption, tests),
        pooled_text,
    )


def plain_sentence(units: dict, tests: dict) -> str:
    """Finding 2 for someone picking a method: what fine-tuning, all the data and a bigger budget add on captions."""
    gains = {m: u["gain"].mean for m, u in units.items() if u["gain"]}
    rises = {m: u["rise"].mean for m, u in units.items() if u["rise"]}
    if not gains:
        return "There are not enough captioning runs (with a zero-shot baseline) to say what more data does."
    span = next(f"{u['data'].xs[0]:.0%} to {u['data'].xs[-1]:.0%}" for u in units.values() if u["data"])
    edge = {
        m: u["params"].best["best_minus_largest"].mean
        for m, u in units.items()
        if u["params"] and u["params"].best.get("best_minus_largest")
    }
    if tests["flat"]:
        meaning = "so on a task like its pre-training a small share of the data is nearly as good as all of it"
    elif tests["gain"] is not None and not pooled_holds([tests["gain"]]):
        meaning = "so fine-tuning adds too little here for the amount of data to matter either way"
    else:
        meaning = "so the amount of data still matters on this task"
    meaning += (
        ", and a mid-sized budget beats the largest" if tests["optimum"] else "; a bigger budget is not shown to hurt"
    )
    return (
        f"On captioning, the task the model was pre-trained for, fine-tuning on all the data adds "
        f"{spread(gains, 'CIDEr-D')} over the untrained model, going from {span} of the data adds "
        f"{spread(rises, 'CIDEr-D')}"
        + (
            f", and the budget validation picks beats the largest by at most {number(max(edge.values()))} CIDEr-D"
            if edge
            else ""
        )
        + f"; {meaning}."
    )
