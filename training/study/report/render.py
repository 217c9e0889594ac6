"""The report as text: report.md (verdict table, rules, sources, findings, tables) and the README's verdict
block."""

from __future__ import annotations

from pathlib import Path

from training.catalog import MAIN_METRIC
from training.errors import UserError
from training.study.report.finding import Finding
from training.study.report.inputs import predates_protocol
from training.study.report.rules import ITEM_FILE, MIN_SEEDS, PROTOCOL_SEEDS, UNDETERMINED, decision_rules
from training.study.report.stats import Stats
from training.study.report.tables import gains_table, question_type_table, reach_table, stopped_improving_lines


def _sources(frame, meta: dict, stats: Stats, prior_note: str) -> list[str]:
    lines = []
    if meta:
        machine = meta.get("machine") or {}
        lines += [
            f"- Sweep `{meta.get('name')}`: {meta.get('done')} of {meta.get('runs_planned')} runs finished "
            f"({meta.get('failed', 0)} failed, {meta.get('skipped', 0)} grid points skipped as outside a "
            f"method's budget range); total wall time {meta.get('wall_s', 0) / 3600:.2f} h over "
            f"{len(meta.get('sessions', []))} session(s), last updated {meta.get('updated_at')}.",
            f"- Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs ({machine.get('cpu')}), "
            f"{machine.get('threads_per_run')} threads per run, GPU: {machine.get('gpu') or 'none'}.",
            f"- Base model `{meta.get('base_model')}` (sha {meta.get('base_model_sha')}); datasets "
            + ", ".join(
                f"{t} `{d.get('source')}` (sha {d.get('sha')})" for t, d in (meta.get("datasets") or {}).items()
            )
            + ".",
            f"- Command: `{meta.get('command')}`.",
        ]
    else:
        lines.append("- No `sweep.json` beside the table: the sweep's command and machine are unknown.")
    settings = []
    for column, label in (
        ("towers", "PEFT on towers"),
        ("total_steps", "step cap"),
        ("batch_size", "batch"),
        ("stop_reason", "stopped by"),
        ("lr_source", "learning rates from"),
    ):
        if column in frame:
            values = sorted({str(v) for v in frame[frame.method != "zero-shot"][column].dropna().unique()})
            if values:
                settings.append(f"{label} {', '.join(values)}")
    if settings:
        lines.append(f"- Runs: {'; '.join(settings)}.")
    if predates_protocol(frame):
        lines.append(
            "- The table has no validation scores (`val_metric`): it predates the validation protocol, so no "
            "checkpoint or stopping point of its runs was chosen on validation data."
        )
    for task in MAIN_METRIC:
        if task in stats.weights:
            lines.append(
                f"- {task}: intervals combine the bootstrap over seeds and {stats.weights[task].shape[0]} "
                "test items with the t-interval across seeds."
            )
        elif stats.why_not.get(task) != "no runs":
            lines.append(
                f"- {task}: intervals are t-intervals across seeds only ({stats.why_not[task]}): they "
                "ignore the test items' sampling error."
            )
    if stats.items is not None and stats.items.problems:
        lines.append(
            f"- `{ITEM_FILE}`: {len(stats.items.problems)} line(s) skipped: "
            + "; ".join(stats.items.problems[:3])
            + "."
        )
    if stats.prior is not None:
        lines.append(
            f"- Answer prior (VQA, majority training answer per question type, from `{stats.prior.source}`): "
            f"{stats.prior.accuracy:.1f} %." + (f" Note: {stats.why_not['prior']}." if "prior" in stats.why_not else "")
        )
    elif prior_note and prior_note != "the table has no VQA runs":
        lines.append(f"- No answer prior: {prior_note}.")
    seeds = (
        frame[frame.method != "zero-shot"]
        .groupby(["task", "method", "budget", "data_fraction"], dropna=False)
        .seed.nunique()
    )
    if not seeds.empty and seeds.min() < PROTOCOL_SEEDS:
        lines.append(f"- Some grid points have fewer than {PROTOCOL_SEEDS} seeds (as few as {seeds.min()}).")
    return lines


def unfinished_grid(frame, meta: dict) -> list[str]:
    """A warning, said before the verdicts, when the sweep.json beside the table has runs still to go: a grid that
    runs over several sessions is committed part-done, and its verdicts rest on the runs finished so far."""
    remaining = meta.get("remaining") or 0
    if not remaining:
        return []
    done = frame[["task", "method"]].value_counts()
    counts = ", ".join(f"{task} {method} {n}" for (task, method), n in sorted(done.items()))
    return [
        f"> **The grid is not finished: {meta.get('done')} of {meta.get('runs_planned')} runs, {remaining} to go.** "
        "The verdicts below are drawn from the finished runs only and are provisional; a cell without runs is "
        f"left out of its test. Finished so far: {counts}. `python -m training sweep --config "
        "sweeps/paper.yaml` goes on where it stopped.",
        "",
    ]


def verdict_table(findings: list[Finding], seeds: list[int]) -> list[str]:
    """The findings' answers, as the report opens with them (and the README's copy of it)."""
    answer = {UNDETERMINED: f"{UNDETERMINED} (too few seeds)" if len(seeds) < MIN_SEEDS else UNDETERMINED}
    return [
        "| finding | answer | without the smallest data fraction |",
        "|---|---|---|",
        *(f"| {f.number}. {f.claim} | **{answer.get(f.verdict, f.verdict)}** | {f.robust} |" for f in findings),
    ]


README_START = "<!-- report:verdicts -->"
README_END = "<!-- /report:verdicts -->"


def readme_block(frame, findings: list[Finding], meta: dict, report: Path) -> list[str]:
    """What `report --readme` puts between the README's markers: where the verdicts come from, how far the grid
    has got, and the report's verdict table, so the README cannot drift from the report it quotes."""
    seeds = sorted(int(s) for s in frame.seed.dropna().unique())
    planned, remaining = meta.get("runs_planned"), meta.get("remaining") or 0
    wall_s = meta.get("wall_s")
    state = (
        f"**provisional: the grid is not finished ({len(frame)} of {planned} runs)**"
        if remaining
        else f"the finished grid ({len(frame)} runs"
        + (f", {wall_s / 3600:.1f} h of wall time" if isinstance(wall_s, (int, float)) else "")
        + ")"
    )
    return [
        f"Verdicts of `{report.as_posix()}` ({state}; seeds {seeds}), copied here by `python -m training report "
        "--readme README.md`; the report gives the statistic behind each and the units that do not hold.",
        "",
        *verdict_table(findings, seeds),
    ]


def update_readme(path: str | Path, block: list[str]) -> None:
    """Replace what lies between README_START and README_END in `path` with `block`; the rest is left alone."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path} to copy the verdicts into it ({exc.strerror}); check the path.") from exc
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start or text.count(README_START) != 1 or text.count(README_END) != 1:
        raise UserError(
            f"{path} needs exactly one {README_START} line followed by one {README_END} line where the verdict "
            "table goes; add them and run the report again (report.md is written already)."
        )
    head = text[: start + len(README_START)]
    path.write_text(head + "\n" + "\n".join(block) + "\n" + text[end:], encoding="utf-8")


def render_markdown(
    frame,
    findings: list[Finding],
    meta: dict,
    results: Path,
    figures: bool,
    figure_note: str | None,
    stats: Stats | None = None,
    prior_note: str = "",
) -> str:
    stats = stats or Stats(frame, None)
    seeds = sorted(int(s) for s in frame.seed.dropna().unique())
    lines = [
        "# Do the paper's findings reproduce?",
        "",
        "Tian et al., *An Empirical Study of Parameter Efficient Fine-tuning on Vision-Language Pre-train "
        "Model* (ICME 2024), re-tested with this project's BLIP, methods and sweep. Built by "
        f"`python -m training report` from `{results.name}` ({len(frame)} runs, seeds {seeds}).",
        "",
    ]
    if predates_protocol(frame):
        # Said first, where a reader (and Explore, which shows this text) meets the verdicts.
        lines += [
            "> **Not the study's answer: these verdicts are withdrawn.** This table predates the study protocol: "
            "its runs chose no learning rate, stopping point or checkpoint on validation data (it has no "
            "`val_metric`), so it measures their training schedule more than the methods. The grid under the "
            "protocol (`python -m training tune`, then `python -m training sweep --config sweeps/paper.yaml`) "
            "replaces it; docs/study.md says how far it has got.",
            "",
        ]
    lines += unfinished_grid(frame, meta)
    lines += verdict_table(findings, seeds)
    lines += ["", "## In plain words", ""]
    lines += [f"{f.number}. {f.plain}" for f in findings if f.plain]
    lines += [
        "",
        *decision_rules(),
        "## Where the numbers come from",
        "",
        *_sources(frame, meta, stats, prior_note),
        "",
        "## Runs stopped by a cap while still improving",
        "",
        *stopped_improving_lines(frame),
    ]
    if figures and figure_note:
        lines += [
            f"Figures could not be rendered ({figure_note}); install kaleido (`pip install -r "
            "requirements-report.txt`) and Chromium, or point BROWSER_PATH at a Chrome.",
            "",
        ]
    for f in findings:
        lines += [
            f"## Finding {f.number}: {f.claim}",
            "",
            f"**Answer: {f.verdict}** (without the smallest data fraction: {f.robust}). {f.summary}",
            "",
            f"*Statistic.* {f.statistic}",
            "",
            *f.table,
            "",
        ]
        if figures and not figure_note and f.figure:
            lines += [f"![finding {f.number}]({f.figure})", ""]
        if f.discussion:
            lines += [f.discussion, ""]
    lines += [
        "## Gains over zero-shot and the answer prior",
        "",
        "At the largest data fraction and each method's reference budget; differences paired by seed (and by "
        "test item where the intervals use them).",
        "",
        *gains_table(frame, stats),
        "",
    ]
    types = question_type_table(frame, stats.prior)
    if types:
        lines += [
            "## VQA per question type",
            "",
            "Accuracy (%) per question type at the largest data fraction and each method's reference budget "
            "(in brackets), mean over seeds, beside the answer prior and zero-shot.",
            "",
            *types,
            "",
        ]
    lines += [
        "## How far each method gets",
        "",
        "The best cell of each method over the grid, chosen on its mean validation score (on test only for a "
        "table without validation scores, as the column says); there, its validation and test scores, the share "
        "of test items that score 0 (with item scores) and its training loss (mean over the half epoch up to the "
        "kept checkpoint: high beside a low score, the method cannot fit the task; low, it over-fits); and how "
        "its runs ended (epochs, why they stopped, where the learning rate came from; empty for tables written "
        "before the validation protocol).",
        "",
        *reach_table(frame, stats),
        "",
    ]
    return "\n".join(lines)
