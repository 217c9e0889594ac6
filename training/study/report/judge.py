"""Judge a results table: read it with its item scores and answer prior, and draw the three findings from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.study.report.finding import Finding
from training.study.report.finding_caption import finding_caption
from training.study.report.finding_families import finding_families
from training.study.report.finding_vqa import finding_vqa
from training.study.report.inputs import (
    ItemScores,
    Prior,
    find_prior,
    grid_methods,
    load_item_scores,
    load_table,
    read_meta,
    with_protocol_columns,
)
from training.study.report.rules import ITEM_FILE
from training.study.report.stats import Stats


@dataclass
class Judgement:
    """A table and what the report reads from it."""

    frame: object  # the results table (pandas DataFrame)
    meta: dict  # sweep.json beside it
    stats: Stats
    findings: list[Finding]
    prior_note: str  # why there is no answer prior, when there is none


def build_findings(
    frame,
    items: ItemScores | None = None,
    prior: Prior | None = None,
    stats: Stats | None = None,
    grid: list[str] | None = None,
) -> list[Finding]:
    """The three findings of a table. `grid`: the methods the sweep's grid configures, whose PEFT methods are the
    units (one without runs counts as not agreeing); None: the PEFT methods the table has runs of."""
    frame = with_protocol_columns(frame)
    stats = stats or Stats(frame, items, prior)
    return [finding(frame, stats, grid) for finding in (finding_vqa, finding_caption, finding_families)]


def judge(results: str | Path, prior: Prior | None = None) -> Judgement | None:
    """The findings of the table at `results` (None when it is missing or empty). `prior`: the VQA answer prior
    when the caller has it; otherwise computed from the VQA dataset the table (or sweep.json) names."""
    results = Path(results)
    frame = load_table(results)
    if frame is None:
        return None
    meta = read_meta(results.parent / "sweep.json")
    prior_note = ""
    if prior is None:
        prior, prior_note = find_prior(frame, meta)
    stats = Stats(frame, load_item_scores(results.parent / ITEM_FILE), prior)
    return Judgement(frame, meta, stats, build_findings(frame, stats=stats, grid=grid_methods(meta)), prior_note)
