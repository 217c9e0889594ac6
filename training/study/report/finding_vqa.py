"""Finding 1: VQA (inconsistent with pre-training) improves with data and with trainable parameters."""

from __future__ import annotations

from training.catalog import NO_BUDGET_METHODS
from training.study.report.curves import data_curves, param_curves
from training.study.report.finding import Finding, above, judged_methods, names, too_few, without_smallest_fraction
from training.study.report.rules import REPRODUCED, UNDETERMINED, judged_checks, judged_state, overall
from training.study.report.stats import Stats


def vqa_units(frame, stats: Stats, methods: list[str]) -> dict[str, dict]:
    """Finding 1 per PEFT method: the data and parameter slopes and the method's state."""
    data = {c.method: c for c in data_curves(frame, "vqa", stats)}
    params = {c.method: c for c in param_curves(frame, "vqa", stats)}
    units = {}
    for method in methods:
        d, p = data.get(method), params.get(method)
        checks = [above(d.slope if d else None), above(p.slope if p else None)]
        units[method] = {"data": d, "params": p, "checks": checks, "state": judged_state(method, checks)}
    units["full"] = {"data": data.get("full")}
    return units


def finding_vqa(frame, stats: Stats) -> Finding:
    peft = judged_methods(frame)
    units, robust = vqa_units(frame, stats, peft), vqa_units(without_smallest_fraction(frame), stats, peft)
    verdict, robust_verdict = overall([units[m]["state"] for m in peft]), overall([robust[m]["state"] for m in peft])
    both = [m for m in peft if units[m]["state"] == REPRODUCED and m not in NO_BUDGET_METHODS]
    data_only = [m for m in peft if units[m]["state"] == REPRODUCED and m in NO_BUDGET_METHODS]
    flat_data = [m for m in peft if units[m]["checks"][0] is False]
    flat_params = [m for m in peft if units[m]["checks"][1] is False]
    unknown = [m for m in peft if None in judged_checks(m, units[m]["checks"])]
    robust_flat = [m for m in peft if robust[m]["checks"][0] is False]
    summary = (
        f"Accuracy rises with data and with parameters for {names(both)}"
        + (f"; with data, a fixed count's only axis, for {names(data_only)}" if data_only else "")
        + ". Does not rise with data: "
        f"{names(flat_data)}; with parameters: {names(flat_params)}"
        + (f"; not judged on an axis: {names(unknown)}" if unknown else "")
        + f". Without the smallest data fraction: {robust_verdict} (does not rise with data: "
        f"{names(robust_flat)})."
    )
    table = [
        "| method | data slope per decade | parameter slope per decade | verdict | without smallest fraction |",
        "|---|---|---|---|---|",
    ]
    for method in [*peft, "full"]:
        d, p = units[method]["data"], units[method].get("params")
        data_text = f"{d.held}: {d.slope.text()}" if d and d.slope else "-"
        param_text = f"{p.held}: {p.slope.text()}" if p and p.slope else "-"
        state = units[method].get("state", "reference, not counted")
        table.append(f"| {method} | {data_text} | {param_text} | {state} | {robust[method].get('state', '-')} |")
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
            "Every method gains from both axes, as in the paper. The evidence is a small BLIP on synthetic "
            "scenes, not mPLUG on VQAv2; the direction reproduces, the magnitudes are not comparable."
        )
    return Finding(
        1,
        "VQA (a task inconsistent with pre-training) improves with more data and more trainable parameters.",
        "Per PEFT method, the OLS slope of VQA accuracy on log10(data fraction) at its reference budget, "
        "and on log10(trainable parameters) at the largest fraction, fitted per seed and averaged; both "
        "intervals above zero: reproduced.",
        verdict,
        robust_verdict,
        summary,
        table,
        "figures/data_size.png",
        " ".join(reasons),
    )
