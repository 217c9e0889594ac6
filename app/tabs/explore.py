"""Explore: the paper's two axes, data size and parameter size, from the sweep's results and your own runs."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app import format as fmt
from app import results, sweeps
from app.figures import metric_figure
from app.services import EMBEDDED_DATASETS, Services
from app.tabs.common import Loader
from app.tabs.manager import Manager
from training.run.config import TASKS

FINDINGS = """**What the paper found** (Tian et al., 2024), and what to look for here:
1. For a task the model was *not* pre-trained on (question answering), more data and more trainable parameters help.
2. For a task it *was* pre-trained on (captioning), the share of data barely matters, and there is a best
   parameter size: more can hurt.
3. Layer composition (LoRA, adapters) beats embedding composition (prompt, prefix tuning)."""


# What `explore` fills, by name.
OUTPUTS = (
    "note",
    "metric",
    "held_budget",
    "held_fraction",
    "by_fraction",
    "by_params",
    "table",
    "download",
    "verdict",
    "dataset",
)


def explore(
    services: Services,
    task: str,
    metric: str | None,
    held_budget: str | None,
    held_fraction: str | None,
    include_mine: bool,
    dataset: str | None = None,
) -> dict:
    """By name: note, metric choices, budget (held_budget) and fraction (held_fraction) choices, data figure
    (by_fraction), parameter figure (by_params), table, csv file (download), the sweep report's verdict, and the
    dataset choices.

    Runs on another dataset than the reference grid's are drawn only among the runs on their own dataset (the
    `dataset` picked), never on the grid's axes."""
    sweep, note = results.load_sweep(services.settings.results_dir)
    records = services.runs(task) if include_mine else []
    in_sweeps = sweeps.sweep_of_job(services) if records else {}
    mine = results.user_frame([r for r in records if r.id not in in_sweeps])
    swept = results.user_frame([r for r in records if r.id in in_sweeps], results.SWEPT)
    frame = results.combined(sweep, pd.concat([mine, swept], ignore_index=True), task)
    reference = results.reference_datasets(sweep, task) or {EMBEDDED_DATASETS[task]}
    datasets = results.dataset_choices(frame, reference)
    names = [value for _, value in datasets]
    dataset = dataset if dataset in names else (names[0] if names else None)
    elsewhere = [name for name in names if name != dataset]
    if dataset is not None:
        frame, sweep, mine, swept = (results.on_dataset(f, dataset, reference) for f in (frame, sweep, mine, swept))
    if dataset is not None and dataset not in reference:
        note = f"Runs on **{dataset}**, set only beside each other: the reference grid ran on {', '.join(reference)}."
    metrics = results.metric_names(frame, task)
    metric = metric if metric in metrics else metrics[0]
    lines = frame[frame["source"].isin([results.SWEEP, results.SWEPT])] if not frame.empty else frame
    budgets, common_budget = results.held_values(lines, "budget")
    fractions, common_fraction = results.held_values(lines, "data_fraction")
    held_budget = held_budget if held_budget in budgets else common_budget
    held_fraction = held_fraction if held_fraction in fractions else common_fraction
    own = len(mine[mine["task"] == task]) if not mine.empty else 0
    if own:
        runs_word = "run" if own == 1 else "runs"
        note += f" Stars: {own} finished {fmt.TASK_LABELS[task].lower()} {runs_word} from the Train tab."
        note += not_comparable_note(pd.concat([mine, swept], ignore_index=True))
    elif include_mine and not sweep.empty:
        note += " Runs you finish in the Train tab appear here as stars."
    if elsewhere:
        note += f" Runs on other data ({', '.join(elsewhere)}) are drawn apart: pick their **Dataset** above."
    if not swept.empty:
        runs_word = "run" if len(swept) == 1 else "runs"
        note += f" Dotted curves: {len(swept)} finished {runs_word} of the sweeps you queued in the Sweep tab."
    table = results.table_view(frame, metrics)
    csv_path = services.scratch / f"vlpeft-results-{task}.csv"
    frame.to_csv(csv_path, index=False)
    return {
        "note": note,
        "metric": gr.update(
            choices=[(results.metric_label(name), name) for name in metrics],
            value=metric,
            info=f"{results.metric_label(metric)}: {fmt.METRIC_NOTES.get(metric.split('_')[0], 'higher is better')}.",
        ),
        "held_budget": gr.update(choices=budgets, value=held_budget, visible=len(budgets) > 1),
        "held_fraction": gr.update(choices=fractions, value=held_fraction, visible=len(fractions) > 1),
        "by_fraction": metric_figure(frame, "data_fraction", metric, ("budget", held_budget)),
        "by_params": metric_figure(frame, "trainable_params", metric, ("data_fraction", held_fraction)),
        "table": table if not table.empty else pd.DataFrame({"": ["No rows yet."]}),
        "download": str(csv_path),
        "verdict": plain_verdicts(services, task),
        "dataset": gr.update(choices=datasets, value=dataset, visible=len(datasets) > 1),
    }


def not_comparable_note(own: pd.DataFrame) -> str:
    """' Hollow stars: 2 runs not comparable with the reference curves: LoRA 18k · ... (towers both (study:
    text)).' ('' when every run follows the study's protocol)."""
    if own.empty or "not_comparable" not in own.columns:
        return ""
    off = own[own["not_comparable"].fillna("").astype(str) != ""]
    if off.empty:
        return ""
    listed = "; ".join(f"{row['label']} ({row['not_comparable']})" for _, row in off.head(5).iterrows())
    runs_word = "run is" if len(off) == 1 else "runs are"
    return (
        f" Hollow stars: {len(off)} {runs_word} **not comparable** with the reference curves, since "
        f"their settings leave the study's protocol: {listed}{' …' if len(off) > 5 else ''}."
    )


def plain_verdicts(services: Services, task: str) -> str:
    """The verdict shown under the figures: the report's plain sentence per finding (results/report.md, "In plain
    words", with its effects in the task's units), and its statistics in a fold."""
    return results.load_verdict(services.settings.results_dir)


def build(services: Services, ui: Manager, tab: gr.Tab) -> Loader:
    gr.Markdown(FINDINGS)
    note = gr.Markdown(elem_id="explore-note")
    with gr.Row():
        task = gr.Radio([(fmt.TASK_LABELS[t], t) for t in TASKS], value="caption", label="Task")
        metric = gr.Dropdown([], value=None, label="Score", info="Higher is better for every score here.")
        mine = gr.Checkbox(True, label="Show runs from the Train tab", info="As stars, on the same axes.")
        dataset = gr.Dropdown(
            [],
            value=None,
            label="Dataset",
            visible=False,
            elem_id="explore-dataset",
            info="Runs are set only beside runs on the same data.",
        )
    with gr.Row():
        held_budget, by_fraction = _figure_column(
            "Budget held fixed", "one parameter budget", "share of data", "plot-fraction"
        )
        held_fraction, by_params = _figure_column(
            "Share of data held fixed", "one data size", "trainable parameters", "plot-params"
        )
    with gr.Accordion("Table", open=False):
        table = gr.Dataframe(label="Runs behind the figures", interactive=False, wrap=True, elem_id="explore-table")
    download = gr.DownloadButton("Download CSV", elem_id="explore-csv")
    with gr.Accordion("Do the paper's findings reproduce? (the sweep's report)", open=False):
        verdict = gr.Markdown(elem_id="explore-verdict")

    ui.add(
        "explore",
        note=note,
        task=task,
        metric=metric,
        held_budget=held_budget,
        held_fraction=held_fraction,
        mine=mine,
        dataset=dataset,
        by_fraction=by_fraction,
        by_params=by_params,
        table=table,
        download=download,
        verdict=verdict,
    )
    inputs = {task, metric, held_budget, held_fraction, mine, dataset}
    outputs = ui.of("explore", OUTPUTS)

    def update(values: dict) -> dict:
        picked = ui.values("explore", values)
        return ui.updates("explore", explore(services, **{"include_mine": picked.pop("mine"), **picked}))

    gr.on(
        [task.change, metric.input, held_budget.input, held_fraction.input, mine.change, dataset.input, tab.select],
        update,
        inputs,
        outputs,
        api_name="ui_explore",
        api_visibility="private",
    )
    return Loader("ui_explore_load", update, inputs, outputs)


def _figure_column(held_label: str, held_what: str, axis: str, elem_id: str) -> tuple[gr.Dropdown, gr.Plot]:
    with gr.Column(min_width=520):  # narrower than two of these (800 px): the plots stack, their titles whole
        held = gr.Dropdown([], value=None, label=held_label, info=f"The plot compares methods at {held_what}.")
        return held, gr.Plot(label=f"Score vs {axis}", elem_id=elem_id)
