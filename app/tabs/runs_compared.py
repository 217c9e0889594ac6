"""Runs compared: two to four runs ticked in the Runs tab, their loss and validation curves overlaid, their settings
side by side with the differences marked, and their test scores in one table. Everything is read from the run
directories (metrics.jsonl, validation.jsonl, config.json, eval.json), through `Services`."""

from __future__ import annotations

import html

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app import format as fmt
from app.boundary import shows_user_errors
from app.services import RunRecord, Services
from app.tabs.common import Loader
from app.tabs.manager import Manager
from training.catalog import MAIN_METRIC

MIN_RUNS, MAX_RUNS = 2, 4
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")  # one colour per ticked run, in both panels
DIFFERS = "≠"
DIFFERS_STYLE = "background: #fff3c4; color: #000; font-weight: 600;"  # legible on the light and the dark theme
TICK = f"Tick {MIN_RUNS} to {MAX_RUNS} runs to compare them."
# (what a person reads, where it comes from): the run's form settings, then what its run directory recorded.
SETTINGS = (
    ("state", lambda r: r.state),
    ("task", lambda r: fmt.task_name(r.task)),
    ("method", lambda r: fmt.METHOD_LABELS.get(r.method, r.method)),
    ("budget", lambda r: r.config.get("budget")),
    ("trained parameters", lambda r: fmt.count(r.trainable_params) if r.trainable_params is not None else None),
    ("knob", lambda r: _knob(r.info)),
    ("share of data", lambda r: fmt.fraction(r.config.get("data_fraction"))),
    ("training examples", lambda r: r.info.get("train_examples")),
    ("seed", lambda r: r.config.get("seed")),
    ("learning rate", lambda r: r.info.get("lr") or r.config.get("lr")),
    ("batch size", lambda r: r.config.get("batch_size")),
    ("epochs (cap)", lambda r: r.config.get("epochs")),
    ("step limit", lambda r: r.config.get("max_steps")),
    ("towers", lambda r: r.config.get("towers")),
    ("base model", lambda r: r.info.get("base_model") or r.config.get("base_model")),
    ("dataset", lambda r: r.info.get("dataset_name") or r.config.get("dataset")),
    ("steps run", lambda r: r.validation.get("steps_run") or r.steps_done),
    ("kept step", lambda r: r.validation.get("best_step")),
    ("why it stopped", lambda r: r.validation.get("stop_reason")),
    ("duration", lambda r: fmt.duration(r.duration_s)),
)


def _knob(info: dict) -> str | None:
    return f"{info['knob']} {info.get('knob_value')}" if info.get("knob") else None


def run_choices(services: Services) -> list[tuple[str, str]]:
    """Every run that has started (a queued one has no curve yet), newest first."""
    return [(f"{r.label} · {fmt.task_name(r.task)} · {r.state}", r.id) for r in services.runs() if r.state != "queued"]


def curves_figure(services: Services, records: list[RunRecord]) -> go.Figure:
    """Training loss (left) and validation score (right) against the step, one colour per run."""
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("Training loss (lower is better)", "Validation score (higher is better)")
    )
    for colour, record in zip(PALETTE, records, strict=False):
        steps, validation = services.curves(record.id)
        label = record.label
        losses = [r for r in steps if isinstance(r.get("loss"), int | float)]
        figure.add_trace(
            go.Scatter(
                x=[r["step"] for r in losses],
                y=[r["loss"] for r in losses],
                mode="lines",
                name=label,
                legendgroup=record.id,
                line=dict(color=colour),
                meta="loss",
            ),
            row=1,
            col=1,
        )
        figure.add_trace(
            go.Scatter(
                x=[v["step"] for v in validation],
                y=[v["value"] for v in validation],
                mode="lines+markers",
                name=label,
                legendgroup=record.id,
                showlegend=False,
                line=dict(color=colour, dash="dot"),
                meta="validation",
            ),
            row=1,
            col=2,
        )
    figure.update_xaxes(title_text="step")
    figure.update_layout(
        template="plotly_white",
        height=380,
        margin=dict(l=50, r=20, t=50, b=40),
        legend=dict(orientation="h", yanchor="top", y=-0.2),
    )
    return figure


def settings_html(records: list[RunRecord]) -> str:
    """The settings side by side; a row whose values differ between the runs is marked (≠, highlighted)."""
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in records)
    rows, differing = [], 0
    for name, read in SETTINGS:
        values = [_shown(read(r)) for r in records]
        cells = "".join(f"<td>{html.escape(v)}</td>" for v in values)
        if len(set(values)) > 1:
            differing += 1
            opening = f'<tr class="vl-differs-row" style="{DIFFERS_STYLE}"><th>{DIFFERS} '
        else:
            opening = '<tr class="vl-same-row"><th>'
        rows.append(f"{opening}{html.escape(name)}</th>{cells}</tr>")
    caption = f"{differing} of {len(rows)} settings differ ({DIFFERS}, highlighted)"
    return (
        f'<table class="vl-compared"><caption>{caption}</caption><thead><tr><th>setting</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def scores_html(records: list[RunRecord]) -> str:
    """The test scores in one table, the main one first; the best of each row in bold."""
    names = []
    for record in records:
        main = MAIN_METRIC.get(record.task)
        found = list(fmt.test_scores(record.metrics))
        for name in sorted(found, key=lambda k: (k != main, k)):
            if name not in names:
                names.append(name)
    if not names:
        return "<p>None of these runs has test scores yet (they appear when a run is evaluated).</p>"
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in records)
    rows = []
    for name in names:
        values = [r.metrics.get(name) for r in records]
        known = [v for v in values if isinstance(v, int | float)]
        best = max(known) if known else None
        cells = "".join(
            f"<td><b>{fmt.score_value(name, v)}</b></td>"
            if v is not None and v == best and len(known) > 1
            else f"<td>{fmt.score_value(name, v)}</td>"
            for v in values
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return (
        '<table class="vl-compared"><caption>Test scores (best of each row in bold; higher is better)</caption>'
        f"<thead><tr><th>score</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _shown(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def compare_runs(services: Services, run_ids: list[str] | None) -> dict:
    """By name: the note, the curves, the settings and the scores of the ticked runs (nothing until two to four
    are)."""
    run_ids = list(run_ids or [])
    if not MIN_RUNS <= len(run_ids) <= MAX_RUNS:
        note = TICK if len(run_ids) < MIN_RUNS else f"{len(run_ids)} runs are ticked: untick some, at most {MAX_RUNS}."
        return {"note": note, "curves": None, "settings": "", "scores": ""}
    records = [services.run(run_id) for run_id in run_ids]
    tasks = {r.task for r in records}
    note = f"{len(records)} runs compared."
    if len(tasks) > 1:
        note += " They are of different tasks: their validation scores and test scores are not on one scale."
    return {
        "note": note,
        "curves": curves_figure(services, records),
        "settings": settings_html(records),
        "scores": scores_html(records),
    }


def build(services: Services, ui: Manager, tab: gr.Tab) -> Loader:
    with gr.Accordion("Compare runs", open=True, elem_id="runs-compared"):
        gr.Markdown(
            "Tick two to four runs: their loss and validation curves overlaid, their settings side by side (rows "
            f"that differ are marked {DIFFERS}), and their test scores in one table."
        )
        picks = gr.CheckboxGroup([], label="Runs to compare", elem_id="runs-compared-picks")
        note = gr.Markdown(TICK, elem_id="runs-compared-note")
        curves = gr.Plot(label="Curves", elem_id="runs-compared-curves")
        with gr.Row():
            settings = gr.HTML(elem_id="runs-compared-settings")
            scores = gr.HTML(elem_id="runs-compared-scores")
    ui.add("runs_compared", picks=picks, note=note, curves=curves, settings=settings, scores=scores)

    private = dict(api_visibility="private")
    picks.change(
        shows_user_errors(lambda values: ui.updates("runs_compared", compare_runs(services, values[picks]))),
        {picks},
        ui.of("runs_compared", ("note", "curves", "settings", "scores")),
        api_name="ui_runs_compared",
        **private,
    )

    def on_show(values: dict) -> dict:
        choices = run_choices(services)
        known = {value for _, value in choices}
        return {picks: gr.update(choices=choices, value=[r for r in values[picks] or [] if r in known])}

    tab.select(on_show, {picks}, picks, api_name="ui_runs_compared_choices", **private)
    return Loader("ui_runs_compared_load", on_show, {picks}, [picks])
