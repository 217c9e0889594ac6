"""Finding 2: captioning (consistent with pre-training) is flat in data and has an interior parameter optimum;
the same test on VQA is the control."""

from __future__ import annotations

from training.catalog import MAIN_METRIC
from training.study.report.curves import data_curves, param_curves
from training.study.report.finding import Finding, judged_methods, names, too_few, without_smallest_fraction, yes
from training.study.report.rules import (
    FLAT_TOLERANCE,
    MIN_SEEDS,
    PARTLY,
    REPRODUCED,
    UNDETERMINED,
    judged_state,
    overall,
)
from training.study.report.stats import Stats


def flatness_units(frame, task: str, stats: Stats, methods: list[str]) -> dict[str, dict]:
    """Finding 2's test per PEFT method on one task: flat in data, interior optimum in parameters."""
    data = {c.method: c for c in data_curves(frame, task, stats)}
    params = {c.method: c for c in param_curves(frame, task, stats)}
    units = {}
    for method in methods:
        d, p = data.get(method), params.get(method)
        flat = None
        if d and d.relative and d.relative.known:
            flat = bool(-FLAT_TOLERANCE <= d.relative.low and d.relative.high <= FLAT_TOLERANCE)
        optimum = None
        if p and p.seeds >= MIN_SEEDS:
            diff = p.best.get("best_minus_largest")
            optimum = bool(p.best["interior"] and diff is not None and diff.above_zero)
        units[method] = {
            "data": d,
            "params": p,
            "checks": [flat, optimum],
            "state": judged_state(method, [flat, optimum]),
        }
    return units


def _separates(caption: dict, vqa: dict) -> tuple[bool, bool]:
    """Whether each part (flat, optimum) passes for more methods on captioning than on VQA."""
    return tuple(
        sum(u["checks"][i] is True for u in caption.values()) > sum(u["checks"][i] is True for u in vqa.values())
        for i in (0, 1)
    )


def _caption_verdict(caption: dict, vqa: dict) -> str:
    verdict = overall([u["state"] for u in caption.values()])
    return PARTLY if verdict == REPRODUCED and not all(_separates(caption, vqa)) else verdict


def finding_caption(frame, stats: Stats) -> Finding:
    robust_frame = without_smallest_fraction(frame)
    methods = judged_methods(frame)
    views = {task: flatness_units(frame, task, stats, methods) for task in MAIN_METRIC}
    robust = {task: flatness_units(robust_frame, task, stats, methods) for task in MAIN_METRIC}
    verdict = _caption_verdict(views["caption"], views["vqa"])
    robust_verdict = _caption_verdict(robust["caption"], robust["vqa"])
    caption = views["caption"]
    passing = {
        task: [sum(u["checks"][i] is True for u in views[task].values()) for i in (0, 1)] for task in MAIN_METRIC
    }
    separates = _separates(caption, views["vqa"])
    summary = (
        f"Captioning: flat in data for {names([m for m, u in caption.items() if u['checks'][0]])}, "
        f"not flat for {names([m for m, u in caption.items() if u['checks'][0] is False])}; interior optimum "
        f"for {names([m for m, u in caption.items() if u['checks'][1]])}, no interior optimum for "
        f"{names([m for m, u in caption.items() if u['checks'][1] is False])}. The same test on VQA: flat for "
        f"{passing['vqa'][0]} and an interior optimum for {passing['vqa'][1]} of {len(methods)} methods "
        f"(captioning: {passing['caption'][0]} and {passing['caption'][1]}), so the flatness part "
        f"{'separates' if separates[0] else 'does not separate'} the tasks and the optimum part "
        f"{'separates' if separates[1] else 'does not separate'} them. Without the smallest data fraction: "
        f"{robust_verdict}."
    )
    table = [
        "| method | task | data slope / level per decade | flat | best budget (params) | best - largest | "
        "interior optimum | verdict | without smallest fraction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        for task in MAIN_METRIC:
            unit, d, p = views[task][method], views[task][method]["data"], views[task][method]["params"]
            relative = d.relative.text(2) if d and d.relative else "-"
            where, diff = "-", "-"
            if p and p.best:
                where = (
                    f"{p.best['best_params']:,} ({'interior' if p.best['interior'] else 'edge'}, "
                    f"{p.best['best_index'] + 1} of {p.best['budgets']})"
                )
                d_best = p.best.get("best_minus_largest")
                diff = d_best.text() if d_best else "best is the largest"
            flat, optimum = (yes(c) for c in unit["checks"])
            table.append(
                f"| {method} | {task} | {relative} | {flat} | {where} | {diff} | {optimum} | "
                f"{unit['state'] if task == 'caption' else 'control'} | "
                f"{robust[task][method]['state'] if task == 'caption' else '-'} |"
            )
    reasons = []
    if verdict == UNDETERMINED:
        reasons.append(too_few(frame, "caption"))
    if passing["caption"][0] < len(caption):
        reasons.append(
            "Captioning that still gains from data is a task the pre-training has not finished: the "
            "embedded model is small and briefly pre-trained, so some of the caption task's phrasing is "
            "learnt from the task data, which a large pre-trained model already knows."
        )
    if passing["caption"][1] < len(caption):
        reasons.append(
            "An interior optimum needs the largest budgets to over-fit or drift from the pre-trained "
            "behaviour; with early stopping on validation a larger adapter stops before it hurts. Picking "
            "the best of several noisy budgets also favours an interior winner by chance, which is why "
            "the best must beat the largest by a paired interval."
        )
    if not all(separates):
        reasons.append(
            "A part that passes as often on VQA as on captioning does not tell the tasks apart, so it "
            "cannot be evidence that consistency with pre-training is what makes captioning flat."
        )
    return Finding(
        2,
        "Captioning (consistent with pre-training) is flat in data size and has an optimal, interior parameter size.",
        "Per PEFT method, the data slope relative to the metric at the largest fraction must lie within "
        f"+-{FLAT_TOLERANCE:.0%} per decade (whole interval); at the largest fraction the best budget must "
        "be interior and beat the largest (paired interval above zero). Run on both tasks; VQA is the "
        "control.",
        verdict,
        robust_verdict,
        summary,
        table,
        "figures/param_size.png",
        " ".join(reasons),
    )
