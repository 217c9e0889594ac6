"""The verdict: does the sweep's table reproduce the paper's three findings? `python -m training report`.

Reads `results/runs.csv`, `sweep.json` and (when the sweep wrote it) `item_scores.jsonl` beside it, judges
each finding per method (or per pair of methods) by the rules in `rules.py` (second edition; `decision_rules()`
prints them in the report), draws the figures, and writes `results/report.md`. Intervals come from a hierarchical
paired bootstrap over seeds and test items when every run of a task has its item scores, from a t-interval across
seeds otherwise (`stats.py`). A unit (a method, or a pair x task x towers) reproduces a claim only when all its
checks hold, so its p-value is the largest of its checks' one-sided p-values, and Holm's correction runs over each
finding's units (`units.py`).

1. VQA (inconsistent with pre-training) improves with data and with trainable parameters (`finding_vqa.py`).
2. Captioning (consistent with pre-training) is flat in data, measured against the gain fine-tuning brings, and
   has an interior optimum in parameters, the best budget chosen on validation (`finding_caption.py`); VQA is the
   control.
3. Layer composition beats embedding composition, per pair at matched cells (`finding_families.py`).

Each finding's overall verdict reads a pooled effect and the share of units that agree. `plain_verdicts()` gives
each finding as one sentence a non-specialist reads, with the statistics as details (for the app's Explore tab).
The answer prior (VQA accuracy of answering each question type's most common training answer) is computed here
from the VQA dataset the table names, with `training.run.tasks.answer_prior`.
"""

from __future__ import annotations

import os
from pathlib import Path

from training.catalog import MAIN_METRIC, PEFT_METHODS
from training.study.report.curves import Curve, data_curves, param_curves, unbudgeted_label
from training.study.report.figures import COLORS, build_figures, render_figures
from training.study.report.finding import Finding, judged_methods
from training.study.report.finding_families import Gap, family_gaps
from training.study.report.inputs import ItemScores, Prior, load_item_scores, load_table
from training.study.report.judge import Judgement, build_findings, judge
from training.study.report.plain import PlainVerdict, plain_verdicts, plain_verdicts_of
from training.study.report.render import readme_block, render_markdown, update_readme
from training.study.report.rules import (
    BOOTSTRAP_SEED,
    FLAT_SHARE,
    NOT,
    PARTLY,
    REPRODUCED,
    RESAMPLES,
    UNDETERMINED,
    decision_rules,
)
from training.study.report.stats import Interval, Stats, seed_slopes
from training.study.report.units import Part, Unit

__all__ = [
    "BOOTSTRAP_SEED",
    "COLORS",
    "FLAT_SHARE",
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
    "Judgement",
    "Part",
    "PlainVerdict",
    "Prior",
    "Stats",
    "Unit",
    "build_figures",
    "build_findings",
    "build_report",
    "data_curves",
    "decision_rules",
    "family_gaps",
    "judged_methods",
    "judge",
    "load_item_scores",
    "load_table",
    "param_curves",
    "plain_verdicts",
    "plain_verdicts_of",
    "seed_slopes",
    "unbudgeted_label",
]


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
    judgement = judge(results, prior)
    if judgement is None:
        out.write_text(
            f"# Do the paper's findings reproduce?\n\nNo results yet: `{results}` is missing or empty. Run "
            "a sweep first, e.g. `python -m training sweep --config sweeps/paper.yaml`, then "
            "`python -m training report`.\n"
        )
        return out
    frame, meta, stats, findings = judgement.frame, judgement.meta, judgement.stats, judgement.findings
    figure_note = None
    if figures:
        figure_note = render_figures(build_figures(frame), out.parent / "figures")
    out.write_text(render_markdown(frame, findings, meta, results, figures, figure_note, stats, judgement.prior_note))
    if readme is not None:
        shown = Path(os.path.relpath(out.resolve(), Path(readme).resolve().parent))
        update_readme(readme, readme_block(frame, findings, meta, shown))
    return out
