"""Finding 2: captioning (consistent with pre-training) is flat in data and has an interior parameter optimum;
the same test on VQA is the control."""

from __future__ import annotations

from training.catalog import MAIN_METRIC, NO_BUDGET_METHODS
from training.study.report.curves import data_curves, param_curves
from training.study.report.finding import (
    Finding,
    above,
    judged_methods,
    names,
    number,
    p_text,
    pooled,
    spread,
    too_few,
    without_smallest_fraction,
    yes,
    zero_shot,
)
from training.study.report.rules import (
    FLAT_SHARE,
    MIN_SEEDS,
    PARTLY,
    REPRODUCED,
    UNDETERMINED,
    agreement,
    judged_state,
    overall,
)
from training.study.report.stats import Interval, Stats, holm

OUTCOME = {True: "holds:", False: "fails:", None: "not judged:"}  # how a pooled test reads in the summary


def flat_check(gain: Interval | None, margin: Interval | None, slope: Interval | None) -> tuple[bool | None, str]:
    """Flat in data: fine-tuning is useful (gain over zero-shot holds), all the data adds less than FLAT_SHARE of
    that gain (margin = FLAT_SHARE x gain - rise holds), and the slope does not rise significantly. With why not."""
    if gain is None or margin is None or slope is None or not (gain.known and margin.known and slope.known):
        return None, "not judged"
    if not gain.holds:
        return False, "no gain over zero-shot to be flat against"
    if slope.above_zero:
        return False, "rises significantly with data"
    if not margin.holds:
        return False, f"rise not shown below {FLAT_SHARE:.0%} of the gain"
    return True, "flat"


def flatness_units(frame, task: str, stats: Stats, methods: list[str]) -> tuple[dict[str, dict], dict]:
    """Finding 2's test per PEFT method on one task (flat in data, interior optimum in parameters; the task's
    tests Holm-corrected as one family), and the pooled tests over the methods."""
    data = {c.method: c for c in data_curves(frame, task, stats)}
    params = {c.method: c for c in param_curves(frame, task, stats)}
    zero, zero_any = zero_shot(frame, task, stats)
    units, family = {}, []
    for method in methods:
        d, p = data.get(method), params.get(method)
        unit = {"data": d, "params": p, "gain": None, "rise": None, "share": None, "margin": None}
        if d and zero_any is not None:
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
            family += [unit["gain"], unit["margin"]]
        if p and method not in NO_BUDGET_METHODS:
            family += [p.best.get("best_minus_largest"), p.best.get("best_minus_smallest")]
        units[method] = unit
    holm(family)
    for method, unit in units.items():
        d, p = unit["data"], unit["params"]
        flat, unit["why"] = flat_check(unit["gain"], unit["margin"], d.slope if d else None)
        optimum = None
        if p and p.seeds >= MIN_SEEDS:
            ends = [p.best.get("best_minus_largest"), p.best.get("best_minus_smallest")]
            optimum = bool(p.best["interior"] and all(e is not None and e.holds for e in ends))
        unit["checks"] = [flat, optimum]
        unit["state"] = judged_state(method, [flat, optimum])
    return units, pooled_tests(units, stats)


def pooled_tests(units: dict, stats: Stats) -> dict:
    """The claim's statistics averaged over the methods, per seed: flatness of the mean rise against the mean gain,
    and the mean best - largest and best - smallest over the methods with a knob (one Holm family)."""
    with_data = [u for u in units.values() if "per_seed" in u]
    knobs = [u["params"] for m, u in units.items() if u["params"] and m not in NO_BUDGET_METHODS]
    tests = {
        "gain": pooled(stats, [u["per_seed"]["gain"] for u in with_data]),
        "margin": pooled(stats, [u["per_seed"]["margin"] for u in with_data]),
        "slope": pooled(stats, [u["data"].slopes for u in with_data]),
        "best - largest": pooled(stats, [p.best["per_seed"].get("best_minus_largest", {}) for p in knobs]),
        "best - smallest": pooled(stats, [p.best["per_seed"].get("best_minus_smallest", {}) for p in knobs]),
    }
    holm([tests[k] for k in ("gain", "margin", "best - largest", "best - smallest")])
    ends = [above(tests["best - largest"]), above(tests["best - smallest"])]
    tests["flat"] = flat_check(tests["gain"], tests["margin"], tests["slope"])[0]
    tests["optimum"] = None if None in ends else all(ends)
    return tests


def _separates(caption: dict, vqa: dict) -> tuple[bool, bool]:
    """Whether each part (flat, optimum) passes for more methods on captioning than on VQA."""
    return tuple(
        sum(u["checks"][i] is True for u in caption.values()) > sum(u["checks"][i] is True for u in vqa.values())
        for i in (0, 1)
    )


def _caption_verdict(caption: dict, tests: dict, vqa: dict) -> str:
    verdict = overall([u["state"] for u in caption.values()], [tests["flat"], tests["optimum"]])
    return PARTLY if verdict == REPRODUCED and not all(_separates(caption, vqa)) else verdict


def finding_caption(frame, stats: Stats) -> Finding:
    robust_frame = without_smallest_fraction(frame)
    methods = judged_methods(frame)
    views = {task: flatness_units(frame, task, stats, methods) for task in MAIN_METRIC}
    robust = {task: flatness_units(robust_frame, task, stats, methods) for task in MAIN_METRIC}
    (caption, tests), vqa = views["caption"], views["vqa"][0]
    verdict = _caption_verdict(caption, tests, vqa)
    robust_verdict = _caption_verdict(*robust["caption"], robust["vqa"][0])
    passing = {
        task: [sum(u["checks"][i] is True for u in views[task][0].values()) for i in (0, 1)] for task in MAIN_METRIC
    }
    separates = _separates(caption, vqa)
    states = [u["state"] for u in caption.values()]
    chosen_on = {u["params"].best["chosen_on"] for u in caption.values() if u["params"]}
    pooled_text = (
        f"Pooled over the methods (captioning): gain over zero-shot {p_text(tests['gain'])}, "
        f"{FLAT_SHARE:.0%} x gain - rise {p_text(tests['margin'])}, data slope {p_text(tests['slope'])}: "
        f"{OUTCOME[tests['flat']]} flat; best - largest "
        f"{p_text(tests['best - largest'])}, best - smallest {p_text(tests['best - smallest'])}: "
        f"{OUTCOME[tests['optimum']]} an interior optimum"
        f"; {agreement(states) if states else 'no units'}."
    )
    summary = (
        f"Captioning: flat in data for {names([m for m, u in caption.items() if u['checks'][0]])}, "
        f"not flat for {names([m + ' (' + u['why'] + ')' for m, u in caption.items() if u['checks'][0] is False])}; "
        f"interior optimum for {names([m for m, u in caption.items() if u['checks'][1]])}, no interior optimum "
        f"for {names([m for m, u in caption.items() if u['checks'][1] is False])} (best budgets chosen on "
        f"{names(sorted(chosen_on))}). {pooled_text} The same test on VQA: flat for "
        f"{passing['vqa'][0]} and an interior optimum for {passing['vqa'][1]} of {len(methods)} methods "
        f"(captioning: {passing['caption'][0]} and {passing['caption'][1]}), so the flatness part "
        f"{'separates' if separates[0] else 'does not separate'} the tasks and the optimum part "
        f"{'separates' if separates[1] else 'does not separate'} them. Without the smallest data fraction: "
        f"{robust_verdict}."
    )
    table = [
        "| method | task | gain over zero-shot at full data | rise from smallest to largest fraction | rise / gain | "
        "flat | best budget on validation (params) | best - largest | best - smallest | interior optimum | "
        "verdict | without smallest fraction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
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
                largest = (
                    p_text(p.best["best_minus_largest"]) if p.best["best_minus_largest"] else "best is the largest"
                )
                smallest = (
                    p_text(p.best["best_minus_smallest"]) if p.best["best_minus_smallest"] else "best is the smallest"
                )
            # A share of a gain that is not there reads as noise: shown only where fine-tuning is useful.
            share = unit["share"].text(2) if unit["share"] and above(unit["gain"]) else "-"
            flat = yes(unit["checks"][0]) + (f" ({unit['why']})" if unit["checks"][0] is False else "")
            table.append(
                f"| {method} | {task} | {p_text(unit['gain'])} | {p_text(unit['rise'])} | {share} | {flat} | "
                f"{where} | {largest} | {smallest} | {yes(unit['checks'][1])} | "
                f"{unit['state'] if task == 'caption' else 'control'} | "
                f"{robust[task][0][method]['state'] if task == 'caption' else '-'} |"
            )
    reasons = []
    if verdict == UNDETERMINED:
        reasons.append(too_few(frame, "caption"))
    if any(u["why"] == "no gain over zero-shot to be flat against" for u in caption.values()):
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
        "Per PEFT method: flat when fine-tuning at full data beats zero-shot, the rise from the smallest to the "
        f"largest fraction stays below {FLAT_SHARE:.0%} of that gain, and the data slope does not rise "
        "significantly; an interior optimum when the budget best on validation beats both the largest and the "
        "smallest on test (paired). Holm over the task's tests. Run on both tasks; VQA is the control. Overall: "
        "the pooled tests and the share of methods reproduced.",
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
    elif tests["gain"] is not None and not above(tests["gain"]):
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
