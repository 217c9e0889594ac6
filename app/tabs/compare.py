"""Compare: one image, the zero-shot base and any trained adapters of a task, side by side."""

from __future__ import annotations

import html
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from app import format as fmt
from app import results
from app.boundary import shows_user_errors
from app.services import EMBEDDED, MAIN_METRIC, Comparison, RunRecord, Services
from app.tabs import data
from app.tabs.common import Loader
from app.tabs.manager import Manager
from training.compare import Column, check_image
from training.errors import UserError
from training.run.config import TASKS

IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"]
PREVIEW_PX = 384
APP_IMAGES = "Test images of the app's dataset"
# After an output that generation cut at the max-new-tokens limit (it did not end by itself).
CUT = '<span class="vl-cut" title="cut at the token limit: the model had not finished">…</span>'
EMPTY = "<p>Pick a test image (or upload one), tick the adapters to compare, and press <b>Compare</b>.</p>"


# --- handlers --------------------------------------------------------------------------------------------


def run_choices(services: Services, task: str, selected: list[str] | None = None) -> dict:
    """The runs of the task that have trained weights, newest first, then the adapters shipped with the app,
    labelled; still-valid ticks are kept."""
    choices = []
    for record in services.runs(task) + services.shipped_runs(task):  # the shipped ones last
        if not record.comparable or record.method == "zero-shot":
            continue
        label = f"{record.label} · {fmt.main_score(task, record.metrics)}" + (
            f" · {partly_trained(record)}" if record.state != "finished" else ""
        )
        choices.append((label, record.id))
    ids = {run_id for _, run_id in choices}
    trained_here = len(choices) > len(services.shipped_runs(task))
    info = (
        "Runs of this task with trained weights, named by method, budget, share of data, dataset and time."
        if trained_here
        else "No adapter trained here yet: these were trained on the reference grid and ship with the app. Train "
        "your own in the Train tab, then press ↻ Refresh runs."
        if choices
        else f"No trained {fmt.task_name(task)} adapter yet: train one in the Train tab (or queue a Sweep), then "
        "press ↻ Refresh runs. Until then the zero-shot base is shown alone."
    )
    return gr.update(choices=choices, value=[run_id for run_id in selected or [] if run_id in ids], info=info)


def partly_trained(record: RunRecord) -> str:
    """'partly trained: cancelled at step 20 of 150' for an adapter whose training did not run to its end."""
    done, planned = record.steps_done, record.info.get("total_steps")
    where = f" at step {done:,} of {planned:,}" if done is not None and planned else ""
    return f"partly trained: {record.state}{where}"


def run_title(record: RunRecord) -> tuple[str, str]:
    """A card's title ('LoRA rank 4 · budget 0.5%') and its run in words ('50 % of scene-caption · seed 0 ·
    06 Dec 21:50')."""
    info, config = record.info, record.config
    knob = f" {info['knob']} {info.get('knob_value')}" if info.get("knob") else ""
    title = f"{fmt.METHOD_LABELS.get(record.method, record.method)}{knob} · budget {config.get('budget')}"
    if record.shipped:
        return title, f"shipped with the app · {fmt.fraction(config.get('data_fraction'))} of {record.dataset_name}"
    label = (
        f"{fmt.fraction(config.get('data_fraction'))} of {record.dataset_name} · seed {config.get('seed')} · "
        f"{time.strftime('%d %b %H:%M', time.localtime(record.created_at))}"
    )
    return title, label


def sweep_zero_shot(services: Services, task: str) -> dict:
    """The sweep's zero-shot test score of the task ({} unless the app runs the model and data the sweep used)."""
    settings = services.settings
    if settings.base_model is not None or settings.datasets.get(task) is not None:
        return {}
    sweep, _ = results.load_sweep(settings.results_dir)
    metric = MAIN_METRIC[task]
    if sweep.empty or metric not in sweep.columns:
        return {}
    scores = pd.to_numeric(sweep[(sweep["task"] == task) & (sweep["method"] == "zero-shot")][metric], errors="coerce")
    return {metric: float(scores.mean())} if scores.notna().any() else {}


def gallery(services: Services, task: str, source: str | None = None) -> list[tuple[str, str]]:
    try:
        return [(picture.thumbnail, f"#{picture.index}") for picture in services.test_images(task, source)]
    except UserError as exc:
        gr.Warning(f"The test images cannot be shown: {exc}")
        return []


def switch_task(services: Services, task: str) -> dict:
    """By name: the gallery, the run choices, the question box, the picked image and its index, the result."""
    return {
        "pictures": gallery(services, task),
        "run_ids": run_choices(services, task),
        "question": gr.update(visible=task == "vqa", value=None, choices=[]),
        "picked": None,
        "index": None,
        "result": EMPTY,
    }


def sources(services: Services, task: str, current: str | None = None) -> dict:
    """Where the test images come from: the app's dataset for the task, or one added from a zip (the current
    choice is kept while it is one of them)."""
    choices = data.dataset_choices(services, task, APP_IMAGES)
    return gr.update(choices=choices, value=current if current in {value for _, value in choices} else EMBEDDED)


def switch_source(services: Services, task: str, source: str | None) -> dict:
    """By name: the gallery, the picked image and its index, the question box, the result."""
    question = gr.update(visible=task == "vqa", value=None, choices=[])
    return {
        "pictures": gallery(services, task, source),
        "picked": None,
        "index": None,
        "question": question,
        "result": EMPTY,
    }


def pick_test_image(services: Services, task: str, index: int, source: str | None = None) -> dict:
    """By name: the picked image, its index, the question choices (VQA: this image's test questions)."""
    picture = services.test_images(task, source)[index]
    questions = picture.questions
    question = gr.update(choices=questions, value=questions[0] if questions else None)
    return {"picked": picture.thumbnail, "index": index, "question": question}


def take_upload(services: Services, path: str | None) -> dict:
    """By name: the picked image (a preview), its index (none: an upload), the upload path kept for Compare."""
    if path is None:
        return {"picked": None, "index": None, "upload_path": None}
    image = check_image(path)  # a clear sentence for a non-image, a corrupt or a huge file
    image.thumbnail((PREVIEW_PX, PREVIEW_PX))
    preview = services.scratch / "uploads" / f"{Path(path).parent.name}.png"
    preview.parent.mkdir(parents=True, exist_ok=True)
    image.save(preview)
    return {"picked": str(preview), "index": None, "upload_path": path}


def compare(
    services: Services,
    task: str,
    run_ids: list[str] | None,
    question: str | None,
    index: int | None,
    upload: str | None,
    source: str | None = None,
) -> str:
    if index is None and upload is None:
        raise UserError("Pick a test image from the gallery or upload one first.")
    comparison = services.compare(
        task, list(run_ids or []), question or "", index, None if index is not None else upload, source
    )
    base = comparison.columns[0]
    if not base.test_score and source in (None, "", EMBEDDED):  # the sweep scored the app's own test set
        base.test_score = sweep_zero_shot(services, task)
        comparison.base_score_source = " (the sweep's zero-shot run)" if base.test_score else ""
    return comparison_html(comparison)


def comparison_html(comparison: Comparison) -> str:
    """Side-by-side cards, each with what its model said in full and its score; whether it differs from the
    zero-shot base is a small tag (the base's words on hover)."""
    base = comparison.columns[0].output
    differing = sum(column.output != base for column in comparison.columns[1:])
    trained = len(comparison.columns) - 1
    if trained == 0:
        banner = "Only the zero-shot base is shown: tick trained adapters to put them beside it."
    elif trained == 1:
        verdict = "a different output from" if differing else "the same output as"
        banner = f"The adapter gives {verdict} the zero-shot base."
    elif differing == 0:
        banner = f"All {trained} adapters give the same output as the zero-shot base."
    else:
        banner = f"{differing} of {trained} adapters give a different output from the zero-shot base."
    parts = [f'<p class="vl-banner">{html.escape(banner)}</p>']
    if comparison.question:
        parts.append(f'<p class="vl-question"><b>Question:</b> {html.escape(comparison.question)}</p>')
    parts.append('<div class="vl-columns">')
    for position, column in enumerate(comparison.columns):
        parts.append(_card(column, base, comparison, is_base=position == 0))
    parts.append("</div>")
    if comparison.references:
        items = "".join(f"<li>{html.escape(text)}</li>" for text in comparison.references)
        parts.append(
            f'<div class="vl-references"><b>Human captions of this test image</b> ({comparison.image_id}):'
            f"<ul>{items}</ul></div>"
        )
    elif comparison.answers:
        answers = ", ".join(html.escape(a) for a in comparison.answers)
        parts.append(f'<div class="vl-references"><b>Human answers</b> ({comparison.image_id}): {answers}</div>')
    elif comparison.image_id and comparison.task == "vqa":
        parts.append(
            '<div class="vl-references">This question is not one of the test questions of this image, '
            "so there is no per-sample score.</div>"
        )
    note = fmt.METRIC_NOTES.get(MAIN_METRIC.get(comparison.task, ""))
    if note:
        parts.append(f'<p class="vl-legend">{html.escape(MAIN_METRIC[comparison.task])}: {html.escape(note)}.</p>')
    return "".join(parts)


def _card(column: Column, base: str, comparison: Comparison, is_base: bool) -> str:
    record = comparison.records.get(column.run_dir or "")
    title, run = ("Zero-shot base", "") if is_base else (fmt.METHOD_LABELS.get(column.method, column.method), "")
    if record is not None:
        title, run = run_title(record)
    if is_base:
        meta = "no training · the reference"
    else:
        meta = (
            f"budget {column.budget} · {fmt.count(column.trainable_params)} trained parameters · "
            f"data {fmt.fraction(column.data_fraction)}"
        )
    test = " · ".join(fmt.metric(name, value) for name, value in column.test_score.items())
    source = comparison.base_score_source if is_base else ""
    # A short answer already ends where the answer ends (training/run/tasks.py: its first ',' or '.').
    output = html.escape(column.output or "(empty)") + (CUT if column.truncated else "")
    sample = " · ".join(fmt.metric(name, value) for name, value in column.sample_score.items())
    differs = not is_base and column.output != base
    if not run and column.run_dir:
        run = Path(column.run_dir).name
    partial = record is not None and record.state != "finished"
    zero_shot = html.escape(base or "(empty)", quote=True)
    badge = (
        f'<span class="vl-tag" title="the zero-shot base said: {zero_shot}">differs from zero-shot</span>'
        if differs
        else ('<span class="vl-tag vl-same">same as zero-shot</span>' if not is_base else "")
    )
    return (
        f'<div class="vl-card{" vl-differs" if differs else ""}" data-method="{html.escape(column.method)}">'
        f'<div class="vl-card-title">{html.escape(title)}</div>'
        + (f'<div class="vl-run">{html.escape(run)}</div>' if run else "")
        + f'<div class="vl-output">{output}</div>'
        + (f'<div class="vl-sample">this image: {html.escape(sample)}</div>' if sample else "")
        + f'<div class="vl-meta">test set{html.escape(source)}: {html.escape(test) if test else "not scored"}</div>'
        + (f'<div class="vl-partial">⚠️ {html.escape(partly_trained(record))}</div>' if partial else "")
        + f'<div class="vl-meta">{html.escape(meta)}</div>'
        + (f"<div>{badge}</div>" if badge else "")
        + "</div>"
    )


# --- layout ----------------------------------------------------------------------------------------------


def build(services: Services, ui: Manager, tab: gr.Tab) -> Loader:
    gr.Markdown(
        "See what each trained adapter says about the same picture. The zero-shot base model (no training) "
        "is always the first column; on a test image every column also gets a score against the human "
        "captions or answers."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            task = gr.Radio(
                [(fmt.TASK_LABELS[t], t) for t in TASKS], value="caption", label="Task", elem_id="compare-task"
            )
            source = gr.Dropdown(
                data.dataset_choices(services, "caption", APP_IMAGES),
                value=EMBEDDED,
                label="Images from",
                elem_id="compare-source",
                info="The app's test images, or a dataset you uploaded (Train tab).",
            )
            # The gallery's own label would cover its first row of thumbnails: the heading goes above it.
            gr.Markdown("**Test images** (click one)", elem_classes="vl-note")
            pictures = gr.Gallery(
                label="Test images (click one)",
                show_label=False,
                columns=6,
                allow_preview=False,
                height=260,
                object_fit="contain",
                elem_id="test-gallery",
                elem_classes="vl-pixelated",
            )
            upload = gr.UploadButton(
                "…or upload your own picture", file_types=IMAGE_TYPES, type="filepath", elem_id="upload-image"
            )
            question = gr.Dropdown(
                [],
                value=None,
                label="Question",
                allow_custom_value=True,
                visible=False,
                info="Pick a test question or type your own.",
                elem_id="vqa-question",
            )
            run_ids = gr.CheckboxGroup(
                [],
                label="Trained adapters to compare",
                info="Runs of this task with trained weights (from the Train tab).",
                elem_id="compare-runs",
            )
            with gr.Row():
                refresh = gr.Button("↻ Refresh runs", size="sm")
                go = gr.Button("Compare", variant="primary", elem_id="compare-button")
        with gr.Column(scale=6):
            picked = gr.Image(
                label="Image",
                interactive=False,
                type="filepath",
                height=260,
                elem_classes="vl-pixelated",
                elem_id="picked-image",
            )
            result = gr.HTML(EMPTY, elem_id="compare-result")
    index = gr.State(None)
    upload_path = gr.State(None)
    ui.add(
        "compare",
        task=task,
        source=source,
        pictures=pictures,
        upload=upload,
        question=question,
        run_ids=run_ids,
        picked=picked,
        result=result,
        index=index,
        upload_path=upload_path,
    )
    private = dict(api_visibility="private")

    def updates(changes: dict) -> dict:
        return ui.updates("compare", changes)

    task.change(
        lambda values: updates({**switch_task(services, values[task]), "source": sources(services, values[task])}),
        {task},
        ui.of("compare", ("pictures", "run_ids", "question", "picked", "index", "result", "source")),
        api_name="ui_compare_task",
        **private,
    )
    tab.select(
        lambda values: {
            source: sources(services, values[task], values[source]),
            run_ids: run_choices(services, values[task], values[run_ids]),
        },
        {task, source, run_ids},
        [source, run_ids],
        api_name="ui_compare_tab",
        **private,
    )
    refresh.click(
        lambda values: {run_ids: run_choices(services, values[task], values[run_ids])},
        {task, run_ids},
        run_ids,
        api_name="ui_compare_runs",
        **private,
    )
    source.input(
        lambda values: updates(switch_source(services, values[task], values[source])),
        {task, source},
        ui.of("compare", ("pictures", "picked", "index", "question", "result")),
        api_name="ui_compare_source",
        **private,
    )

    def on_select(values: dict, event: gr.SelectData) -> dict:
        return updates(pick_test_image(services, values[task], event.index, values[source]))

    pictures.select(on_select, {task, source}, [picked, index, question], api_name="ui_pick_image", **private)
    upload.upload(
        shows_user_errors(lambda values: updates(take_upload(services, values[upload]))),
        {upload},
        [picked, index, upload_path],
        api_name="ui_upload",
        **private,
    )

    def on_compare(values: dict) -> dict:
        asked = ui.values("compare", values)
        result_html = compare(
            services,
            asked["task"],
            asked["run_ids"],
            asked["question"],
            asked["index"],
            asked["upload_path"],
            asked["source"],
        )
        return {result: result_html}

    go.click(
        shows_user_errors(on_compare),
        {task, run_ids, question, index, upload_path, source},
        result,
        api_name="ui_compare",
        **private,
    )
    return Loader(
        "ui_compare_load",
        lambda values: {
            pictures: gallery(services, values[task]),
            run_ids: run_choices(services, values[task]),
            source: sources(services, values[task]),
        },
        {task},
        [pictures, run_ids, source],
    )
