"""Runs: every job with its state, settings, scores and duration; details, download, delete."""

from __future__ import annotations

import json
import time
from collections import Counter

import gradio as gr
import pandas as pd

from app import format as fmt
from app.boundary import shows_user_errors, submitter
from app.people import person, reason
from app.services import RunRecord, Services
from app.tabs.common import Loader
from app.tabs.manager import Manager
from app.tabs.train import SCROLL_LOG_TO_END, send_to_train_form, train_form_targets
from training.catalog import NO_BUDGET_METHODS
from training.errors import UserError
from training.jobs.store import FINAL_STATES

# Few enough to read whole at 800 px; the id, seed and exact parameter count are in the run's details.
COLUMNS = ["run", "dataset", "state", "test score", "time", "by", "submitted"]


ENDED_BADLY = ("failed", "interrupted")  # the details show their log: it says why
LOG_LINES = 20
ALL_STATES = "all"
STATE_FILTERS = {
    ALL_STATES: (),
    "live": ("queued", "running"),
    "finished": ("finished",),
    "cancelled": ("cancelled",),
    "failed": ("failed",),
    "interrupted": ("interrupted",),
}


def run_name(config: dict) -> str:
    """A run in words for a table, from its settings: 'LoRA 18k, 10 % of the data, seed 0 (captions)'; zero-shot
    has neither budget nor share."""
    method = fmt.METHOD_LABELS.get(config.get("method"), config.get("method"))
    task = "captions" if config.get("task") == "caption" else "questions"
    if config.get("method") == "zero-shot":
        return f"{method} ({task})"
    budget = "" if config.get("method") in NO_BUDGET_METHODS else f" {config.get('budget')}"
    share = fmt.fraction(config.get("data_fraction"))
    return f"{method}{budget}, {share} of the data, seed {config.get('seed', 0)} ({task})"


def runs_table(records: list[RunRecord], viewer: str | None = None) -> pd.DataFrame:
    rows = [
        [
            run_name(r.config),
            r.dataset_name,
            r.state,
            fmt.main_score(r.task, r.metrics),
            fmt.duration(r.duration_s),
            person(r.submitter, viewer),
            time.strftime("%d %b %H:%M", time.localtime(r.created_at)),
        ]
        for r in records
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


STOP_REASONS = {
    "patience": "the validation score stopped improving",
    "epoch cap": "it reached its epoch cap",
    "max steps": "it reached its step limit",
    "min steps": "it reached its floor of steps (the epochs would have ended it sooner)",
    "hard limit": "it was still improving at its cap and went on to its hard limit",
}


def validation_line(summary: dict, planned: int | None, has_weights: bool = True) -> str:
    """What validation chose: the kept checkpoint, its score, and why training stopped."""
    if not summary or summary.get("best") is None:
        if not has_weights:
            return "**Validation:** none recorded, and no weights were saved: it stopped before it kept any."
        return "**Validation:** none (a fixed schedule, or not reached yet): the weights are those of the last step."
    why = STOP_REASONS.get(summary.get("stop_reason"), summary.get("stop_reason") or "")
    return (
        f"**Validation:** the kept checkpoint is step {fmt.count(summary.get('best_step'))}, "
        f"{fmt.metric(summary.get('metric'), summary['best'])} on the validation split; training ran "
        f"{fmt.count(summary.get('steps_run'))} of at most {fmt.count(planned)} steps "
        f"({summary.get('epochs_run')} epochs) and stopped because {why}."
    )


def details(record: RunRecord, viewer: str | None = None) -> str:
    if record.state == "running" and record.started_at:  # its reason names the worker process: no news to a person
        why = "running since " + time.strftime("%H:%M", time.localtime(record.started_at))
    else:
        why = reason(record.reason, record.submitter, viewer)
    lines = [f"### {record.label}: {record.state}", f"*{why}* · run id `{record.id}`", ""]
    if record.metrics:
        shown = fmt.test_scores(record.metrics)
        scored = record.metrics.get("num_examples")
        lines.append(
            "**Test scores:** "
            + " · ".join(fmt.metric(k, v) for k, v in shown.items())
            + (f" (on {fmt.count(scored)} test examples)" if scored else "")
            + (f". *{fmt.score_scale(record.task)}.*" if fmt.score_scale(record.task) else "")
        )
    info = record.info
    if info:
        planned, done = info.get("total_steps"), record.validation.get("steps_run") or record.steps_done
        steps = (
            f"{fmt.count(planned)} steps"
            if record.state == "finished" or done is None or done >= (planned or 0)
            else f"{fmt.count(done)} of {fmt.count(planned)} planned steps"
        )
        lines.append(
            f"**Trained:** {fmt.count(info.get('trainable_params'))} of {fmt.count(info.get('total_params'))} "
            f"parameters ({fmt.percent(info.get('trainable_percent'))}), {info.get('knob') or 'no knob'} "
            f"{info.get('knob_value') if info.get('knob_value') is not None else ''}, "
            f"{fmt.count(info.get('train_examples'))} training examples, {steps}{learning_rate(info)}."
        )
        lines.append(validation_line(record.validation, planned, record.has_weights))
        lines.append(f"**Command:** `{info.get('command')}`")
    lines.append(f"**Duration:** {fmt.duration(record.duration_s)} · **folder:** `{record.run_dir}`")
    return "\n\n".join(lines)


def learning_rate(info: dict) -> str:
    """', learning rate 0.0019 (tuned: results/lr.csv)' for the Trained line; empty for a run without one."""
    lr, source = info.get("lr"), info.get("lr_source")
    if not isinstance(lr, int | float):
        return ""
    if source is None:  # a run from before the source was recorded
        return f", learning rate {lr:g}"
    said = {"given": "given", "method default": "the method's default"}.get(source, f"tuned: {source}")
    return f", learning rate {lr:g} ({said})"


def shown_runs(services: Services, shown: str = ALL_STATES) -> list[RunRecord]:
    """The runs in one state (or live: queued, running; or all), newest first."""
    return [r for r in services.runs() if shown == ALL_STATES or r.state in STATE_FILTERS.get(shown, (shown,))]


def refresh(services: Services, selected: str | None, viewer: str | None = None, shown: str = ALL_STATES) -> dict:
    """By name: the table, the picker, the selected run's panel (SHOWN), and the bulk delete button; `shown` keeps
    the runs in one state (or live: queued, running)."""
    records = shown_runs(services, shown)
    ids = [r.id for r in records]
    selected = selected if selected in ids else None
    choices = [(f"{r.label} · {r.state}", r.id) for r in records]
    deletable = len(bulk_deletable(records, viewer if services.settings.demo else None))
    return {
        "table": runs_table(records, viewer),
        "picker": gr.update(choices=choices, value=selected),
        **show(services, selected, viewer),
        "bulk": gr.update(
            value=f"Delete the {deletable} ended run{'' if deletable == 1 else 's'} shown", interactive=deletable > 0
        ),
    }


SHOWN = ("details", "config", "download", "delete", "again", "log")


def show(services: Services, run_id: str | None, viewer: str | None = None) -> dict:
    """SHOWN by name: details, config JSON, download button, delete button, run-again button, and the log of a run
    that failed or was interrupted (it says why)."""
    if not run_id:
        return {
            "details": "Pick a run to see its details.",
            "config": None,
            "download": gr.update(value=None, interactive=False),
            "delete": gr.update(interactive=False),
            "again": gr.update(interactive=False),
            "log": gr.update(value="", visible=False),
        }
    record = services.run(run_id)
    config = {"config": record.config, **{k: v for k, v in record.info.items() if k != "config"}}
    archive = services.zip_run(run_id) if record.has_weights else None
    log = gr.update(value="", visible=False)
    if record.state in ENDED_BADLY:
        status = services.status(run_id, log_lines=LOG_LINES)
        lines = status["log_tail"] + ([f"error: {status['error']}"] if status.get("error") else [])
        log = gr.update(value="\n".join(lines) or "(the log is empty)", visible=True)
    return {
        "details": details(record, viewer),
        "config": json.dumps(config, indent=2, default=str),
        "download": gr.update(value=str(archive) if archive else None, interactive=archive is not None),
        "delete": gr.update(interactive=record.state not in ("queued", "running")),
        "again": gr.update(interactive=True),
        "log": log,
    }


def bulk_deletable(records: list[RunRecord], only: str | None = None) -> list[RunRecord]:
    """The ended runs (finished, cancelled, failed, interrupted) among `records`; `only`: of that submitter."""
    return [r for r in records if r.state in FINAL_STATES and (only is None or r.submitter == only)]


def ask_delete(services: Services, run_id: str | None) -> tuple:
    """By name: the confirmation row, its question naming the run it deletes, and that run's id (what the confirm
    button acts on)."""
    if not run_id:
        raise UserError("Pick a run to delete first.")
    record = services.run(run_id)
    question = (
        f"**Delete the run {record.label}** ({fmt.task_name(record.task)}, {record.state}) "
        "**for good?** Its weights, "
        "scores and log are removed; this cannot be undone."
    )
    return {"ask": gr.update(visible=True), "question": question, "pending": run_id}


def ask_bulk_delete(services: Services, shown: str, viewer: str | None) -> tuple:
    """The confirmation row for every ended run the list shows, naming how many of each state, and their ids."""
    records = bulk_deletable(shown_runs(services, shown), viewer if services.settings.demo else None)
    if not records:
        raise UserError("No ended run is shown: there is nothing to delete in bulk.")
    states = Counter(r.state for r in records)
    which = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    runs_word = "run" if len(records) == 1 else "runs"
    question = (
        f"**Delete {len(records)} {runs_word}** ({which}) **for good?** Their weights, scores and logs are "
        "removed; this cannot be undone."
    )
    return {"ask": gr.update(visible=True), "question": question, "pending": " ".join(r.id for r in records)}


def delete_pending(services: Services, request: gr.Request | None, visitor: str, pending: str) -> None:
    """Delete the runs the confirmation named (one, or several in bulk)."""
    run_ids = pending.split()
    if not run_ids:
        raise UserError("Pick a run to delete first.")
    for run_id in run_ids:
        services.delete(run_id, submitter(request, visitor))
    gr.Info(f"Run {run_ids[0]} deleted." if len(run_ids) == 1 else f"{len(run_ids)} runs deleted.")


HIDDEN_CONFIRM = {"ask": gr.update(visible=False), "question": "", "pending": ""}  # the row, its question, its runs


def build(services: Services, ui: Manager, tab: gr.Tab) -> Loader:
    """'Run again with changes' fills the Train tab's form (`send_to_train_form`)."""
    gr.Markdown(
        "Every training job of this app. Pick one for its settings, scores and log folder, or delete it. "
        "Its zip holds the weights, config, log, scores and predictions, with a README on loading the "
        "adapter with this package or, for LoRA, with peft (`PeftModel.from_pretrained`). **Run again with "
        "changes** fills the Train form with a run's settings.\n\n**Test score**: for captions "
        f"{fmt.score_scale('caption')}; for questions {fmt.score_scale('vqa')}.",
        elem_id="runs-intro",
    )
    table = gr.Dataframe(
        runs_table([]),
        interactive=False,
        label="Runs (click a row)",
        elem_id="runs-table",
        wrap=True,  # seven columns whole at 800 px: long names wrap instead of pushing columns out of sight
        column_widths=["30%", "14%", "10%", "14%", "11%", "9%", "12%"],
    )
    with gr.Row():
        shown = gr.Radio(list(STATE_FILTERS), value=ALL_STATES, label="Show", scale=3, elem_id="runs-filter")
        picker = gr.Dropdown([], value=None, label="Run", scale=4, elem_id="run-picker")
        with gr.Column(scale=1, min_width=160):
            refresh_button = gr.Button("↻ Refresh", size="sm")
            bulk_button = gr.Button(
                "Delete the ended runs shown", variant="stop", size="sm", interactive=False, elem_id="runs-bulk-delete"
            )
    panel = gr.Markdown("Pick a run to see its details.", elem_id="run-details")
    log = gr.Textbox(
        "",
        label="Log (last lines): why it ended",
        interactive=False,
        lines=12,
        max_lines=12,
        autoscroll=True,
        visible=False,
        elem_id="run-log",
        elem_classes="vl-log",
    )
    with gr.Row():
        download = gr.DownloadButton("Download the run (zip)", interactive=False, elem_id="run-download")
        again_button = gr.Button("Run again with changes", interactive=False, elem_id="run-again")
        delete_button = gr.Button("Delete run", variant="stop", interactive=False, elem_id="run-delete")
    with gr.Group(visible=False, elem_id="run-delete-ask") as ask:
        question = gr.Markdown(elem_id="run-delete-question")
        with gr.Row():
            confirm = gr.Button("Yes, delete for good", variant="stop", elem_id="run-delete-confirm")
            keep = gr.Button("Keep", variant="secondary", elem_id="run-delete-keep")
    pending = gr.State("")  # the runs the confirmation names (ids separated by spaces): the only ones it deletes
    with gr.Accordion("Configuration (config.json)", open=False):
        config = gr.Code(None, language="json", interactive=False)
    ui.add(
        "runs",
        table=table,
        shown=shown,
        picker=picker,
        bulk=bulk_button,
        details=panel,
        log=log,
        download=download,
        again=again_button,
        delete=delete_button,
        ask=ask,
        question=question,
        pending=pending,
        config=config,
    )
    visitor = ui["app.visitor"]
    private = dict(api_visibility="private")
    confirmation = ui.of("runs", HIDDEN_CONFIRM)
    shown_parts = ui.of("runs", SHOWN)
    listing = [table, picker, *shown_parts, bulk_button]

    def viewer(values: dict, request: gr.Request | None) -> str:
        return submitter(request, values[visitor])

    def updates(*changes: dict) -> dict:
        """The changes by name, a pending confirmation hidden: any change of the selection means another run."""
        merged = {k: v for change in changes for k, v in change.items()}
        return ui.updates("runs", {**merged, **HIDDEN_CONFIRM})

    def on_refresh(values: dict, request: gr.Request) -> dict:
        return updates(refresh(services, values[picker], viewer(values, request), values[shown]))

    gr.on(
        [refresh_button.click, tab.select, shown.input],
        on_refresh,
        {visitor, picker, shown},
        [*listing, *confirmation],
        api_name="ui_runs_refresh",
        **private,
    )

    def on_pick(values: dict, request: gr.Request) -> dict:
        return updates(show(services, values[picker], viewer(values, request)))

    picker.input(
        shows_user_errors(on_pick), {visitor, picker}, [*shown_parts, *confirmation], api_name="ui_runs_show", **private
    )

    def on_row(values: dict, event: gr.SelectData, request: gr.Request) -> dict:
        listed = shown_runs(services, values[shown])  # the table's rows, in its order (it names runs in words)
        row = event.index[0] if event.index else None
        run_id = listed[row].id if row is not None and 0 <= row < len(listed) else None
        return updates({"picker": gr.update(value=run_id)}, show(services, run_id, viewer(values, request)))

    table.select(
        shows_user_errors(on_row),
        {visitor, shown},
        [picker, *shown_parts, *confirmation],
        api_name="ui_runs_row",
        **private,
    )
    # The last lines are what matter: keep the log box scrolled to its end when it fills.
    log.change(None, None, None, js=SCROLL_LOG_TO_END)
    delete_button.click(
        shows_user_errors(lambda values: ui.updates("runs", ask_delete(services, values[picker]))),
        {picker},
        confirmation,
        api_name="ui_runs_ask",
        **private,
    )

    def on_bulk(values: dict, request: gr.Request) -> dict:
        return ui.updates("runs", ask_bulk_delete(services, values[shown], viewer(values, request)))

    bulk_button.click(
        shows_user_errors(on_bulk), {visitor, shown}, confirmation, api_name="ui_runs_ask_bulk", **private
    )
    keep.click(lambda: ui.updates("runs", HIDDEN_CONFIRM), None, confirmation, api_name="ui_runs_keep", **private)

    def on_confirm(values: dict, request: gr.Request) -> dict:
        shows_user_errors(delete_pending)(services, request, values[visitor], values[pending])
        return updates(refresh(services, None, viewer(values, request), values[shown]))

    confirm.click(
        on_confirm, {visitor, pending, shown}, [*listing, *confirmation], api_name="ui_runs_delete", **private
    )

    def on_again(values: dict) -> dict:
        run_id = values[picker]
        config = services.run(run_id).config if run_id else None
        return send_to_train_form(services, ui, config, "Pick a run to run again first.")

    again_button.click(
        shows_user_errors(on_again), {picker}, train_form_targets(ui), api_name="ui_runs_again", **private
    )
    return Loader("ui_runs_load", on_refresh, {visitor, picker, shown}, [*listing, *confirmation])
