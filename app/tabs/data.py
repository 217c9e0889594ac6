"""Your own dataset: a zip in the folder format, checked, previewed and added to the datasets Train and Compare offer.

Built inside the Train tab, where a person picks the data to train on; the checks themselves are in
`training.data.archive`.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from app import format as fmt
from app.services import EMBEDDED, DatasetPreview, Services
from app.tabs.manager import Manager
from training.data.vocabulary import VocabularyCheck
from training.errors import UserError
from training.run.config import TASKS

FORMAT_HELP = """A zip of a dataset folder as docs/datasets.md describes it: `train/` and `test/` (and optionally
`validation/`), each with its images and a `metadata.jsonl`, one line per example:
`{"file_name": "0001.png", "captions": ["a red circle", "..."]}` for captioning,
`{"file_name": "0001.png", "question": "what color is it?", "answers": ["red", "..."]}` for question answering.
Images: PNG, JPEG, WebP, BMP or GIF."""


def dataset_choices(services: Services, task: str, default_label: str) -> list[tuple[str, str]]:
    """The app's dataset for the task first, then the datasets added from zips for it, by name."""
    return [(default_label, EMBEDDED)] + [(f"{d.name} (your upload)", d.name) for d in services.uploaded_datasets(task)]


def add_dataset(services: Services, archive: str | None, name: str, task: str, replace: bool) -> DatasetPreview:
    if not archive:
        raise UserError("Choose a zip file first.")
    return services.upload_dataset(archive, name, task, bool(replace))


def remove_dataset(services: Services, name: str | None, sure: bool) -> str:
    """Remove an uploaded dataset once the person has ticked that they are sure; the note to show."""
    if not name:
        raise UserError("Pick the uploaded dataset to remove.")
    if not sure:
        raise UserError(f"Tick 'Yes, remove it' to remove {name!r}: this cannot be undone.")
    removed = services.remove_dataset(name)
    return (
        f"**{removed.name}** is removed. Runs trained on it keep their scores, weights and downloads; Compare can "
        "no longer show its images."
    )


def uploaded_names(services: Services) -> list[str]:
    return [d.name for d in services.uploaded_datasets()]


def preview_text(preview: DatasetPreview) -> str:
    """'✅ **shapes** (image captioning) is added: train 24 images · validation 4 · test 6 ...' and for VQA the
    most common answers."""
    summary, task = preview.summary, preview.stored.task
    unit = "captioned images" if task == "caption" else "questions"
    sizes = " · ".join(
        f"{split} {fmt.count(summary.examples[split])}"
        + (f" on {fmt.count(summary.images[split])} images" if task == "vqa" else "")
        for split in summary.examples
        if summary.examples[split]
    )
    lines = [f"✅ **{preview.stored.name}** ({fmt.TASK_LABELS[task].lower()}) is added. Split sizes ({unit}): {sizes}."]
    if summary.held_out_validation:
        held = fmt.count(summary.images["validation"])
        lines.append(
            f"It has no validation split of its own: {held} of its training images (5 %, at least one) "
            "are held out as one, to choose the best checkpoint."
        )
    if summary.top_answers:
        rows = "\n".join(
            f"| {answer} | {fmt.count(n)} | {100 * n / summary.questions_counted:.0f} % |"
            for answer, n in summary.top_answers
        )
        lines.append(
            f"Most common answers in train (each question counted by its most common answer):\n\n"
            f"| answer | questions | share |\n|---|---|---|\n{rows}"
        )
    if preview.words is not None:
        lines.append(vocabulary_text(preview.words, task))
    lines.append(
        "It is now the **Dataset** of this form (under Advanced settings), and its test images are in "
        "**Compare** (Images from)."
    )
    return "\n\n".join(lines)


def vocabulary_text(check: VocabularyCheck, task: str) -> str:
    """What the model cannot say of this dataset's captions or answers, and what that means for its scores."""
    what = "captions" if task == "caption" else "answers"
    if not check.unknown:
        return f"✅ **Vocabulary:** the model can say every word of its {what}."
    listed = ", ".join(f"*{word}* ({fmt.count(n)})" for word, n in check.unknown)
    return (
        f"⚠️ **Words the model cannot say:** {fmt.percent(100 * check.share)} of the examples "
        f"({fmt.count(check.affected)} of {fmt.count(check.examples)}) use a word of their {what} that the base "
        f"model's tokenizer has no token for: {listed}. A model never outputs such a word, so "
        + ("those questions can never be answered right" if task == "vqa" else "those captions can never be matched")
        + " however long it trains. The embedded model knows only the words of its scene world; for an open "
        "vocabulary use a real checkpoint as the **Base model** (e.g. Salesforce/blip-image-captioning-base)."
    )


def build(services: Services, ui: Manager, form: str, default_label: Callable[[str], str]) -> None:
    """The upload box; a dataset it adds becomes the task and dataset of the form named `form` (its "task" and
    "dataset")."""
    task, dataset = ui[f"{form}.task"], ui[f"{form}.dataset"]
    with gr.Accordion("Your own dataset (upload a zip)", open=False, elem_id="dataset-upload") as box:
        limits = services.settings.archive_limits
        gr.Markdown(
            f"{FORMAT_HELP} At most {fmt.count(limits.max_files)} files and {limits.max_bytes / 1e6:,.0f} MB unpacked.",
            elem_classes="vl-note",
        )
        archive = gr.File(label="Dataset zip", file_types=[".zip"], type="filepath", elem_id="dataset-zip")
        with gr.Row():
            name = gr.Textbox(
                label="Name",
                max_lines=1,
                elem_id="dataset-name",
                placeholder="my-shapes",
                info="Lower-case letters, digits, - and _.",
            )
            upload_task = gr.Radio(
                [(fmt.TASK_LABELS[t], t) for t in TASKS], value="caption", label="Its task", elem_id="dataset-task"
            )
        replace = gr.Checkbox(False, label="Replace a dataset of the same name", elem_id="dataset-replace")
        add = gr.Button("Check and add", elem_id="dataset-add")
        note = gr.Markdown(elem_id="dataset-note")
        examples = gr.Gallery(
            label="Training examples",
            columns=4,
            height=300,
            object_fit="contain",
            allow_preview=True,
            visible=False,
            elem_id="dataset-preview",
            elem_classes="vl-pixelated",
        )
        with gr.Row():
            remove_pick = gr.Dropdown(
                uploaded_names(services), value=None, label="Remove an uploaded dataset", elem_id="dataset-remove-pick"
            )
            sure = gr.Checkbox(False, label="Yes, remove it", elem_id="dataset-remove-sure")
            remove = gr.Button("Remove", variant="stop", elem_id="dataset-remove")

    ui.add(
        "data",
        archive=archive,
        name=name,
        upload_task=upload_task,
        replace=replace,
        note=note,
        examples=examples,
        remove_pick=remove_pick,
        sure=sure,
    )

    def on_add(values: dict) -> dict:
        given = ui.values("data", values)
        task_name = given["upload_task"]
        try:
            preview = add_dataset(services, given["archive"], given["name"], task_name, given["replace"])
        except UserError as exc:
            gr.Warning(str(exc))
            return {note: f"⚠️ **Not added.** {exc}", examples: gr.update(visible=False, value=None)}
        choices = dataset_choices(services, task_name, default_label(task_name))
        return {
            note: preview_text(preview),
            examples: gr.update(visible=True, value=preview.examples),
            task: task_name,
            dataset: gr.update(choices=choices, value=preview.stored.name),
            remove_pick: gr.update(choices=uploaded_names(services), value=None),
        }

    def on_remove(values: dict) -> dict:
        try:
            text = remove_dataset(services, values[remove_pick], values[sure])
        except UserError as exc:
            gr.Warning(str(exc))
            return {note: f"⚠️ **Not removed.** {exc}"}
        choices = dataset_choices(services, values[task], default_label(values[task]))
        value = values[dataset] if values[dataset] in [v for _, v in choices] else choices[0][1]
        return {
            note: text,
            remove_pick: gr.update(choices=uploaded_names(services), value=None),
            sure: False,
            dataset: gr.update(choices=choices, value=value),
        }

    # The page was built before any dataset was added: the list is read afresh each time the box opens.
    box.expand(
        lambda: gr.update(choices=uploaded_names(services), value=None),
        None,
        remove_pick,
        api_name="ui_dataset_names",
        api_visibility="private",
    )
    remove.click(
        on_remove,
        {remove_pick, sure, task, dataset},
        [note, remove_pick, sure, dataset],
        api_name="ui_remove_dataset",
        api_visibility="private",
        concurrency_limit=1,
    )
    add.click(
        on_add,
        {archive, name, upload_task, replace},
        [note, examples, task, dataset, remove_pick],
        api_name="ui_add_dataset",
        api_visibility="private",
        concurrency_limit=1,
    )
