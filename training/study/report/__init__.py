"""The verdict: does the sweep's table reproduce the paper's three findings? `python -m training report`.

Reads `results/runs.csv`, `sweep.json` and (when the sweep wrote it) `item_scores.jsonl` beside it, judges
each finding per method (or per pair of methods) by the rules in `decision_rules()`, draws the figures, and
writes `results/report.md`. Intervals come from a hierarchical paired bootstrap over seeds and test items
when every run of a task has its item scores, from a t-interval across seeds otherwise (`Stats`).

1. VQA (inconsistent with pre-training) improves with data and with trainable parameters: per PEFT method,
   the slope of accuracy against log10(data fraction) and against log10(trainable parameters).
2. Captioning (consistent with pre-training) is flat in data and has an interior optimum in parameters:
   per PEFT method, the data slope relative to the level within +-FLAT_TOLERANCE per decade, and a best
   budget that is neither edge and beats the largest. The same test runs on VQA as a control.
3. Layer composition beats embedding composition: per pair (layer method, embedding method), per task and
   tower setting, layer minus embedding at matched budget, data fraction, seed and towers.

Every verdict is computed again without the smallest data fraction (the robustness view). The answer prior
(VQA accuracy of answering each question type's most common training answer) is computed here from the VQA
dataset the table names, with `training.pretraining.embedded.answer_prior`; the sweep does not write it as a row.
"""

from __future__ import annotations

import os
from pathlib import Path

from training.catalog import MAIN_METRIC, PEFT_METHODS
from training.study.report.curves import Curve, data_curves, param_curves, unbudgeted_label
from training.study.report.figures import COLORS, build_figures, render_figures
from training.study.report.finding import Finding, judged_methods
from training.study.report.finding_caption import finding_caption
from training.study.report.finding_families import Gap, family_gaps, finding_families
from training.study.report.finding_vqa import finding_vqa
from training.study.report.inputs import ItemScores, Prior, find_prior, load_item_scores, load_table, read_meta
from training.study.report.render import readme_block, render_markdown, update_readme
from training.study.report.rules import (
    BOOTSTRAP_SEED,
    FLAT_TOLERANCE,
    ITEM_FILE,
    NOT,
    PARTLY,
    REPRODUCED,
    RESAMPLES,
    UNDETERMINED,
    decision_rules,
    judged_state,
)
from training.study.report.stats import Interval, Stats, seed_slopes

__all__ = [
    "BOOTSTRAP_SEED",
    "COLORS",
    "FLAT_TOLERANCE",
    "MAIN_METRIC",
    "NOT",
    "PARTLY",
    "PEFT_METHODS",
    "REPRODUCED",
    "RESAMPLES",
    "UNDETERMINED",
    "Curve",
    "Finding",
    "Gap",
    "Interval",
    "ItemScores",
    "Prior",
    "Stats",
    "build_figures",
    "build_findings",
    "build_report",
    "data_curves",
    "decision_rules",
    "family_gaps",
    "judged_methods",
    "judged_state",
    "load_item_scores",
    "load_table",
    "param_curves",
    "seed_slopes",
    "unbudgeted_label",
]


def build_findings(
    frame, items: ItemScores | None = None, prior: Prior | None = None, stats: Stats | None = None
) -> list[Finding]:
    stats = stats or Stats(frame, items, prior)
    return [finding_vqa(frame, stats), finding_caption(frame, stats), finding_families(frame, stats)]


def build_report(
    results: str | Path = "results/runs.csv",
    out: str | Path | None = None,
    figures: bool = True,
    prior: Prior | None = None,
    readme: str | Path | None = None,
) -> Path:
    """Write report.md (and figures/*.png) for the table at `results`; returns the report's path.

    `prior`: the VQA answer prior, when the caller has it; otherwise it is computed from the VQA dataset the
    table (or sweep.json) names. `readme`: a file whose marked block gets the verdict table (update_readme)."""
    results = Path(results)
    out = Path(out) if out else results.parent / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = load_table(results)
    meta = read_meta(results.parent / "sweep.json")
    if frame is None:
        out.write_text(
            f"# Do the paper's findings reproduce?\n\nNo results yet: `{results}` is missing or empty. Run "
            "a sweep first, e.g. `python -m training sweep --config sweeps/paper.yaml`, then "
            "`python -m training report`.\n"
        )
        return out
    items = load_item_scores(results.parent / ITEM_FILE)
    prior_note = ""
    if prior is None:
        prior, prior_note = find_prior(frame, meta)
    stats = Stats(frame, items, prior)
    findings = build_findings(frame, stats=stats)
    figure_note = None
    if figures:
        figure_note = render_figures(build_figures(frame), out.parent / "figures")
    out.write_text(render_markdown(frame, findings, meta, results, figures, figure_note, stats, prior_note))
    if readme is not None:
        shown = Path(os.path.relpath(out.resolve(), Path(readme).resolve().parent))
        update_readme(readme, readme_block(frame, findings, meta, shown))
    return out
