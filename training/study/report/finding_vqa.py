"""Finding 1: VQA (inconsistent with pre-training) improves with data and with trainable parameters."""

from __future__ import annotations

from training.catalog import NO_BUDGET_METHODS
from training.study.report.curves import data_curves, param_curves
from training.study.report.finding import (
    Finding,
    family_text,
    judged_methods,
    missing_curve,
    names,
    p_text,
    pooled,
    spread,
    too_few,
    unit_p_text,
    units_source,
    without_smallest_fraction,
)
from training.study.report.rules import REPRODUCED, UNDETERMINED, agreement, overall
from training.study.report.stats import Stats
from training.study.report.units import Part, Unit, judge_units, pooled_holds


def vqa_units(frame, stats: Stats, methods: list[str]) -> tuple[dict[str, dict], dict]:
    """Finding 1 per PEFT method (a unit: its data slope and, with a knob, its parameter slope must both hold;
    Holm over the methods), and the pooled slopes over the methods."""
    data = {c.method: c for c in data_curves(frame, "vqa", stats)}
    params = {c.method: c for c in param_curves(frame, "vqa", stats)}
    units = {}
    for method in methods:
        d, p = data.get(method), params.get(method)
        parts = {"data": Part([d.slope if d else None])}
        why = missing_curve(frame, "vqa", method, d, "data")
        if method not in NO_BUDGET_METHODS:  # a fixed count has no parameter axis
            parts["params"] = Part([p.slope if p else None])
            why = why or missing_curve(frame, "vqa", method, p, "params")
        units[method] = {"data": d, "params": p, "unit": Unit(method, parts, why)}
    judge_units([u["unit"] for u in units.values()])
    units["full"] = {"data": data.get("full")}
    judged = [m for m in methods if units[m]["unit"].judged]
    knobs = [m for m in judged if m not in NO_BUDGET_METHODS]
    tests = {
        "data": pooled(stats, [data[m].slopes for m in judged]),
        "params": pooled(stats, [params[m].slopes for m in knobs]),
    }
    return units, tests


def finding_vqa(frame, stats: Stats, grid: list[str] | None = None) -> Finding:
    peft = judged_methods(frame, grid)
    (units, tests), (robust, robust_tests) = (
        vqa_units(frame, stats, peft),
        vqa_units(without_smallest_fraction(frame), stats, peft),
    )
    states = [units[m]["unit"].state for m in peft]
    verdict = overall(states, [pooled_holds([t]) for t in tests.values()])
    robust_states = [robust[m]["unit"].state for m in peft]
    robust_verdict = overall(robust_states, [pooled_holds([t]) for t in robust_tests.values()])
    both = [m for m in peft if units[m]["unit"].state == REPRODUCED and m not in NO_BUDGET_METHODS]
    data_only = [m for m in peft if units[m]["unit"].state == REPRODUCED and m in NO_BUDGET_METHODS]
    flat_data = [m for m in peft if units[m]["unit"].holds("data") is False]
    flat_params = [m for m in peft if units[m]["unit"].holds("params") is False]
    unknown = [f"{m} ({units[m]['unit'].why})" for m in peft if not units[m]["unit"].judged]
    robust_flat = [m for m in peft if robust[m]["unit"].holds("data") is False]
    pooled_text = (
        f"Pooled over the methods: data slope {p_text(tests['data'])}, parameter slope {p_text(tests['params'])} "
        f"points per tenfold; {agreement(states) if states else 'no units'}. "
        + family_text([units[m]["unit"] for m in peft], units_source(grid))
    )
    summary = (
        f"Accuracy rises with data and with parameters for {names(both)}"
        + (f"; with data, a fixed count's only axis, for {names(data_only)}" if data_only else "")
        + ". Does not rise with data: "
        f"{names(flat_data)}; with parameters: {names(flat_params)}"
        + (f"; not judged (undetermined): {names(unknown)}" if unknown else "")
        + f". {pooled_text} Without the smallest data fraction: {robust_verdict} (does not rise with data: "
        f"{names(robust_flat)})."
    )
    table = [
        "| method | data slope per decade | parameter slope per decade | unit's test | verdict | without smallest "
        "fraction |",
        "|---|---|---|---|---|---|",
    ]
    for method in [*peft, "full"]:
        d, p = units[method]["data"], units[method].get("params")
        slope = d.slope.text() if method == "full" and d and d.slope else p_text(d.slope if d else None)  # untested
        data_text = f"{d.held}: {slope}" if d and d.slope else "-"
        param_text = f"{p.held}: {p_text(p.slope)}" if p and p.slope else "-"
        unit = units[method].get("unit")
        test = unit_p_text(unit) if unit else "-"
        state = unit.state if unit else "reference, not counted"
        twin = robust[method].get("unit")
        table.append(f"| {method} | {data_text} | {param_text} | {test} | {state} | {twin.state if twin else '-'} |")
    for name, test in tests.items():
        table.append(
            f"| pooled ({name}) | {p_text(test) if name == 'data' else '-'} | "
            f"{p_text(test) if name == 'params' else '-'} | - | {verdict} | {robust_verdict} |"
        )
    reasons = []
    if verdict == UNDETERMINED:
        reasons.append(too_few(frame, "vqa"))
    if flat_data or flat_params:
        reasons.append(
            "A method that does not move on an axis has either reached what this model can learn of "
            "the task at the smallest point (look at its level in the gains table), or not learnt it at "
            "any point (a level near the answer prior); the per-question-type table says which."
        )
    if verdict == REPRODUCED:
        reasons.append(
            "The methods gain from both axes, as in the paper. The evidence is a small BLIP on synthetic "
            "scenes, not mPLUG on VQAv2; the direction reproduces, the magnitudes are not comparable."
        )
    return Finding(
        1,
        "VQA (a task inconsistent with pre-training) improves with more data and more trainable parameters.",
        "Per PEFT method, the OLS slope of VQA accuracy on log10(data fraction) at its reference budget, "
        "and on log10(trainable parameters) at the largest fraction, fitted per seed and averaged; both holding "
        "above zero (the method's p-value the larger of the two one-sided p-values, Holm over the methods): "
        "reproduced. Overall: the slopes pooled over the methods and the share of methods reproduced.",
        verdict,
        robust_verdict,
        summary,
        table,
        "figures/data_size.png",
        " ".join(reasons),
        plain_sentence(units, peft, tests),
        pooled_text,
    )


def plain_sentence(units: dict, methods: list[str], tests: dict) -> str:
    """Finding 1 for someone picking a method: how many points of accuracy data and parameters add."""
    curves = {m: units[m]["data"] for m in [*methods, "full"] if units[m].get("data")}
    if not curves:
        return "There are not enough VQA runs to say what more data or more parameters do."
    rise = {m: c.means[-1] - c.means[0] for m, c in curves.items()}
    any_curve = next(iter(curves.values()))
    span = f"{any_curve.xs[0]:.0%} to {any_curve.xs[-1]:.0%}"
    slopes = {m: units[m]["params"].slope for m in methods if units[m].get("params")}
    per_tenfold = {m: slope.mean for m, slope in slopes.items() if slope}
    data_pays, params_pay = pooled_holds([tests["data"]]), pooled_holds([tests["params"]])
    advice = (
        "so give such a task as much data as you can"
        if data_pays
        else "so more data is not reliably worth collecting here"
    ) + (
        ", and on average a larger budget pays too"
        if params_pay
        else ", while a larger trainable-parameter budget does not reliably pay"
        if per_tenfold
        else ""
    )
    return (
        f"On VQA, a task the model was not pre-trained for, going from {span} of the training data adds "
        f"{spread(rise, 'points of accuracy')}"
        + (
            f", and ten times more trainable parameters changes accuracy by {spread(per_tenfold, 'points')}"
            if per_tenfold
            else ""
        )
        + f" ({sum(units[m]['unit'].state == REPRODUCED for m in methods)} of {len(methods)} methods "
        f"gain from every axis they have beyond doubt), {advice}."
    )
