"""The verdicts in words a person without statistics reads: one sentence per finding, with the effects in the
task's units, and the statistics behind it as details (what the app's Explore tab shows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.study.report.finding import Finding
from training.study.report.inputs import Prior
from training.study.report.judge import judge


@dataclass(frozen=True)
class PlainVerdict:
    """One finding for a reader: the claim, its verdict, a plain sentence, and the statistics (markdown)."""

    number: int
    claim: str
    verdict: str
    sentence: str
    details: str


def plain_verdicts_of(findings: list[Finding]) -> dict[int, PlainVerdict]:
    """Finding number -> its plain verdict."""
    return {
        f.number: PlainVerdict(
            f.number,
            f.claim,
            f.verdict,
            f.plain,
            f"**Answer: {f.verdict}** (without the smallest data fraction: {f.robust}). {f.summary}\n\n"
            f"*Statistic.* {f.statistic}",
        )
        for f in findings
    }


def plain_verdicts(results: str | Path = "results/runs.csv", prior: Prior | None = None) -> dict[int, PlainVerdict]:
    """Finding number (1, 2, 3) -> its plain verdict, judged from the table at `results` by the same rules as
    report.md; an empty dict when there is no table yet. Takes seconds (the bootstrap): cache it per table."""
    judgement = judge(results, prior)
    return plain_verdicts_of(judgement.findings) if judgement else {}
