"""Train: pick a task, a method, a budget and a share of the data; start a job and watch it to the end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr

from app import format as fmt
from app.boundary import shows_user_errors, submitter
from app.figures import loss_curve
from app.services import EMBEDDED, Services
from app.tabs import data
from app.tabs.common import Loader, scroll_to_end_js
from app.tabs.manager import Manager
from training.catalog import BASELINE, CATALOG, EMBEDDING, LAYER, METHOD_NAMES
from training.errors import UserError
from training.jobs.store import ACTIVE_STATES
from training.methods import METHODS
from training.run.config import DEFAULT_EPOCHS, TASKS, RunConfig
from training.run.rates import resolve_lr
from training.sweeps.protocol import departures, study_settings

FAMILY_ORDER = (LAYER, EMBEDDING, BASELINE)

# The Train tab lists layer composition first (the paper's recommendation), then embedding composition, then the
# baselines.
METHOD_ORDER = tuple(sorted(CATALOG, key=lambda m: (FAMILY_ORDER.index(CATALOG[m].family), METHOD_NAMES.index(m))))
# The study's schedule per task (sweeps/paper.yaml): the form's defaults, so a run at a grid point lands on its curve.
STUDY = {task: study_settings(task) for task in TASKS}
DEFAULT_BUDGET = "18k"  # the reference grid's budget on its data axis (sweeps/paper.yaml), inside every method's range
IDLE = "No job yet: choose the settings and press **Start training**."
POLL_S = 1.0
SCROLL_LOG_TO_END = scroll_to_end_js("job-log")
# The form's fields, named as `Services.run_config` names them, and the job view: the tab's components by name.
FORM = (
    "task",
    "method",
    "budget",
    "data_fraction",
    "seed",
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "towers",
    "base_model",
    "dataset",
    "eval_limit",
    "min_steps",
    "patience",
)
FILLED = (*FORM, "method_note")  # what a run's settings fill (Runs: run again; Explore: train this)
VIEW = ("status", "progress", "cancel", "curve", "command", "log", "log_box", "timer", "points")


def fill_train_form(services: Services, config: dict) -> dict[str, object]:
    """The Train form (FILLED, by name), filled from a run's config: the run again, ready for changes. The app's
    own model and datasets show as the embedded choice."""
    task, method = config.get("task", "caption"), config.get("method", "lora")
    base, dataset = config.get("base_model"), config.get("dataset")
    return {
        "task": task,
        "method": method,
        "budget": config.get("budget"),
        "data_fraction": config.get("data_fraction"),
        "seed": config.get("seed", 0),
        "epochs": config.get("epochs") or DEFAULT_EPOCHS[task],  # a run queued without a cap had the trainer's
        "max_steps": config.get("max_steps") or 0,
        "lr": learning_rate(
            services, task, method, config.get("towers", "both"), base, config.get("lr"), config.get("budget")
        ),
        "batch_size": config.get("batch_size"),
        "towers": config.get("towers", "both"),
        "base_model": EMBEDDED if base in (None, services.settings.base_model) else base,
        "dataset": gr.update(
            choices=dataset_choices(services, task),
            value=EMBEDDED if dataset in (None, services.settings.datasets.get(task)) else dataset,
        ),
        "eval_limit": config.get("eval_limit") or 0,
        "min_steps": config.get("min_steps") or 0,
        "patience": config.get("patience", RunConfig.patience),
        "method_note": fmt.method_explainer(method),
    }


def send_to_train_form(services: Services, ui: Manager, config: dict | None, missing: str) -> dict:
    """Fill the Train form from a run's config and switch to the Train tab (Runs' 'Run again with changes',
    Explore's 'Train this'); `missing` says what to do first when there is no config."""
    if not config:
        raise UserError(missing)
    return {**ui.updates("train", fill_train_form(services, config)), ui["app.tabs"]: gr.Tabs(selected="train")}


def train_form_targets(ui: Manager) -> list:
    """The outputs of `send_to_train_form`."""
    return [*ui.of("train", FILLED), ui["app.tabs"]]


# --- handlers (plain functions: the UI wires them, the tests call them) ----------------------------------


def describe_method(method: str) -> str:
    """The method's explainer."""
    return fmt.method_explainer(method)


def learning_rate(
    services: Services,
    task: str,
    method: str,
    towers: str,
    base_model: str | None,
    value: float | None = None,
    budget: str | None = None,
) -> dict:
    """The learning-rate field: 0 (`value` None) means the rate the trainer picks, which the field's note
    gives: the one tuned on validation for this task, method, budget and base model (results/lr.csv), else the
    method's default. The trainer then also takes the tuned form of the method (prefix tuning plain or
    reparametrised); a typed value overrides the rate only."""
    text = (base_model or "").strip()
    source = services.settings.base_model if text in ("", EMBEDDED) else text
    chosen = {"budget": budget} if budget else {}
    config = RunConfig(task=task, method=method, towers=towers or "both", base_model=source, **chosen)
    try:  # a percentage budget matches its row through the base model's size
        total = services.estimate(method, config.budget, config.towers, base_model).total_params
    except UserError:
        total = None
    lr, options, origin = resolve_lr(config, METHODS[method].default_lr, total_params=total)
    if origin == "method default":
        said = f"{lr:g}, the method's default (no rate tuned on validation for this task and model yet)"
    else:
        form = f", {', '.join(f'{k}={v}' for k, v in options.items())}" if options else ""
        where = origin.replace(" (", "; ").rstrip(")")  # "results/lr.csv; tuned with the method on both towers"
        said = f"{lr:g}, tuned on the validation split for this task ({where}{form})"
    return gr.update(value=value or 0, info=f"0: {said}. Type a value to override it.")


def estimate(services: Services, method: str, budget: str, towers: str, base_model: str | None) -> str:
    try:
        return fmt.estimate_text(services.estimate(method, budget, towers, base_model))
    except UserError as exc:
        return f"⚠️ {exc}"


def describe_size(services: Services, form: Mapping[str, Any]) -> str:
    """'This run trains on 200 of 2,000 images (1,000 caption pairs): 32 steps of 4 examples. Expected time: about
    2 min (...).', and a warning when that is past the run limit. `form`: the Train form by FORM name."""
    task, method = form.get("task"), form.get("method")
    try:
        config = services.run_config(**{**form, "budget": form.get("budget") or "1"})
        size = services.training_size(config)
    except UserError as exc:
        return f"⚠️ {exc}"
    unit = "images" if task == "caption" else "questions"
    pairs = f" ({fmt.count(size.pairs)} caption pairs)" if task == "caption" else ""
    if method == "zero-shot":
        return "Zero-shot trains nothing: the job only scores the base model on the test set."
    text = f"This run trains on {fmt.count(size.examples)} of {fmt.count(size.split_size)} {unit}{pairs}: "
    if config.validates and not config.max_steps:
        floor = f" (at least {fmt.count(config.min_steps)})" if (config.min_steps or size.steps) < size.steps else ""
        text += f"up to {fmt.count(size.steps)} steps{floor} of {fmt.count(config.batch_size)} examples; "
        text += "early stopping on the validation score usually ends it sooner."
    else:
        text += f"{fmt.count(size.steps)} steps of {fmt.count(config.batch_size)} examples."
    steps = size.steps
    if services.settings.demo and size.steps > services.settings.demo_max_steps:
        text += f" The public demo stops it at {services.settings.demo_max_steps} steps."
        steps = services.settings.demo_max_steps
    return text + expected_time_text(services, config, steps)


def expected_time_text(services: Services, config: RunConfig, steps: int) -> str:
    """' Expected time: about 3 min 10 s (from ...).' and a warning past the run limit; '' when nothing knows.

    A run under the study's protocol takes its time from the reference grid's runs like it (early stopping ends
    most before their cap); any other from runs here or the benchmark, for the whole cap: an upper bound."""
    reference = services.reference_time(config)
    if reference is not None:
        seconds, low, high, n = reference
        spread = f"{fmt.duration(low)} to {fmt.duration(high)}, " if n > 1 else ""
        text = (
            f" **Expected time:** about {fmt.duration(seconds)} ({spread}from {n} run{'s' if n > 1 else ''} like it in "
            "the reference grid on a 2-core CPU; early stopping decides, a busy machine is slower)."
        )
    else:
        expected = services.expected_time(config, steps)
        if expected is None:
            return " No time estimate yet: finish one run of this method here and the next ones get one."
        seconds, source = expected
        text = f" **Expected time:** at most about {fmt.duration(seconds)} if it runs to its cap ({source})."
    limit = services.settings.job_limits().max_runtime_s
    if limit and seconds > limit:
        text += (
            f" ⚠️ **That is past this app's run limit of {fmt.duration(limit)}** (VLPEFT_MAX_RUNTIME_S): the "
            "job would be stopped there, keeping what it trained. Use fewer steps or a smaller share of "
            "the data."
        )
    return text


def protocol_text(services: Services, form: Mapping[str, Any]) -> str:
    """Whether the form (by FORM name) follows the study's protocol, and if not, where it leaves it and what that
    means for setting its score beside the reference curves."""
    try:
        config = services.run_config(**form)
    except UserError:
        return ""  # the size note says what is wrong with the form
    left = departures(config)
    if not left:
        return (
            "✅ **The study's settings** (text decoder, early stopping with patience "
            f"{config.patience}, at least {config.min_steps or 0:,} steps, the tuned learning rate): Explore sets "
            "its score beside the reference curves."
        )
    return (
        "⚠️ **Leaves the study's protocol:** " + "; ".join(left) + ". Explore shows it as *not comparable* with "
        "the reference curves."
    )


def start(services: Services, request: gr.Request | None, visitor: str, form: Mapping[str, Any]) -> dict:
    """Queue a job from the form (by FORM name); returns, by name, the watched job id, the job VIEW and the job
    picker, and the note under the Start button: why it was refused (kept there; status polls do not touch it),
    else nothing. A refused start changes nothing else."""
    try:
        config, _, _, notes = services.prepare(services.run_config(**form))
        job_id = services.submit(config, submitter(request, visitor))
    except UserError as exc:
        gr.Warning(str(exc))
        return {"start_note": f"⚠️ **Not started.** {exc}"}
    for note in notes:
        gr.Info(note)
    return {
        "job": job_id,
        **show_job(services, job_id, -1),
        "jobs": jobs_choices(services, request, visitor, job_id),
        "start_note": "",
    }


def _no_job_view(message: str, shown_points: int) -> dict:
    """The VIEW with no job to show: the message, the rest hidden or left as it is."""
    hidden = gr.update(visible=False)
    return {
        "status": message,
        "progress": "",
        "cancel": hidden,
        "command": gr.update(value="", visible=False),
        "log": "",
        "timer": gr.Timer(active=False),
        "points": shown_points,
    }


def show_job(services: Services, job_id: str | None, shown_points: int) -> dict:
    """The VIEW by name: status, progress bar, cancel button, loss figure (left out when unchanged), command, log,
    its accordion (opened when the job failed or was interrupted: the log says why), timer, points drawn."""
    if not job_id:
        return _no_job_view(IDLE, shown_points)
    try:
        status = services.status(job_id)
    except UserError:
        return _no_job_view("The job this page watched no longer exists.", shown_points)
    live = status["state"] in ACTIVE_STATES
    curve, validation = status["curve"], status.get("validation") or []
    points = len(curve) + len(validation)
    kept = status["state"] == "finished"  # a stopped run's best validation is not a checkpoint it kept
    log = status["log_tail"]
    if status["state"] == "failed" and status.get("error"):
        log = [*log, "", f"error: {status['error']}"]
    view = {
        "status": fmt.job_headline(status),
        "progress": fmt.progress_html(status),
        "cancel": gr.update(visible=live),
        "command": gr.update(value=status["command"], visible=True),
        "log": "\n".join(log) or "(the log is empty)",
        "timer": gr.Timer(active=live),
        "points": points,
    }
    if points != shown_points:
        view["curve"] = loss_curve(curve, validation, kept=kept)
    if status["state"] in ("failed", "interrupted"):
        view["log_box"] = gr.update(open=True)
    return view


def cancel(services: Services, request: gr.Request | None, visitor: str, job_id: str | None) -> None:
    if not job_id:
        raise UserError("There is no job to cancel.")
    services.cancel(job_id, submitter(request, visitor))
    gr.Info("Stop requested: the job stops after its current step and keeps what it trained.")


def jobs_choices(services: Services, request: gr.Request | None, visitor: str, selected: str | None) -> dict:
    """This visitor's jobs, newest first, for the 'Job shown' picker."""
    mine = [r for r in services.runs() if r.submitter == submitter(request, visitor)]
    choices = [(r.label, r.id) for r in mine]
    return gr.update(choices=choices, value=selected if selected in {r.id for r in mine} else None)


def reattach(services: Services, request: gr.Request | None, visitor: str, job_id: str | None) -> str | None:
    """On page load: the job this browser watched, else this visitor's newest live job."""
    if job_id:
        try:
            services.store.get(job_id)
            return job_id
        except UserError:
            pass
    live = services.live_jobs(submitter(request, visitor))
    return live[-1] if live else None


# --- layout ----------------------------------------------------------------------------------------------


def build(services: Services, ui: Manager, secret: str) -> Loader:
    settings = services.settings
    gr.Markdown(
        "Fine-tune the model on one task with one method. The **budget** says how many of its weights may "
        "change; the **share of data** how much of the training set it sees. Press **Start training**: the "
        "job runs in the background, you can close the page and come back."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            task = gr.Radio(
                [(fmt.TASK_LABELS[t], t) for t in TASKS],
                value="caption",
                label="Task",
                info="Captioning is what the model was pre-trained on; answering questions is new to it.",
            )
            method = gr.Dropdown(
                [(fmt.METHOD_LABELS[m], m) for m in METHOD_ORDER],
                value="lora",
                label="Method",
                info="Where the trainable parameters go.",
            )
            method_note = gr.Markdown(fmt.method_explainer("lora"), elem_classes="vl-note")
            budget = gr.Textbox(
                DEFAULT_BUDGET,
                label="Parameter budget",
                max_lines=1,
                elem_id="budget",
                info="How many weights may change: a share of the model (0.5%) or a count (20000, 20k, 1.5M).",
            )
            estimate_note = gr.Markdown(elem_classes="vl-estimate", elem_id="estimate")
            with gr.Row():
                data_fraction = gr.Number(
                    1.0,
                    label="Share of the training data",
                    elem_id="data-fraction",
                    info="More than 0, at most 1: 0.1 trains on 10 % of the examples.",
                )
                seed = gr.Number(
                    0,
                    label="Seed",
                    precision=0,
                    info="Same seed: same data subset and same start, so a run can be repeated.",
                )
            size_note = gr.Markdown(elem_classes="vl-note", elem_id="run-size")
            protocol_note = gr.Markdown(
                protocol_text(
                    services,
                    dict(
                        task="caption",
                        method="lora",
                        budget=DEFAULT_BUDGET,
                        data_fraction=1.0,
                        max_steps=0,
                        lr=0,
                        base_model=EMBEDDED,
                        dataset=EMBEDDED,
                    ),
                ),
                elem_classes="vl-note",
                elem_id="protocol-note",
            )
            with gr.Accordion("Advanced settings", open=False):
                with gr.Row():
                    epochs = gr.Number(
                        STUDY["caption"]["epochs"],
                        label="Epochs (at most)",
                        elem_id="epochs",
                        info=f"The cap on passes over the data; early stopping usually ends a run sooner (study: "
                        f"{STUDY['caption']['epochs']:g} for captions, {STUDY['vqa']['epochs']:g} for questions).",
                    )
                    max_steps = gr.Number(
                        0,
                        label="Steps",
                        elem_id="max-steps",
                        precision=0,
                        info="0: as many as the epochs take. Otherwise stop after this many (overrides epochs).",
                    )
                with gr.Row():
                    min_steps = gr.Number(
                        STUDY["caption"].get("min_steps", 0),
                        label="Minimum steps",
                        elem_id="min-steps",
                        precision=0,
                        info="Train at least this many steps, whatever the epochs, so a small share of the data "
                        f"is not stopped before it has learnt (study: {STUDY['caption'].get('min_steps', 0)}).",
                    )
                    patience = gr.Number(
                        STUDY["caption"]["patience"],
                        label="Patience",
                        elem_id="patience",
                        precision=0,
                        info="Stop after this many validations without improvement; the best checkpoint is "
                        f"kept (study: {STUDY['caption']['patience']}; 0: no validation).",
                    )
                with gr.Row():
                    lr = gr.Number(
                        0,
                        label="Learning rate",
                        elem_id="learning-rate",
                        info=learning_rate(
                            services, "caption", "lora", STUDY["caption"]["towers"], EMBEDDED, budget=DEFAULT_BUDGET
                        )["info"],
                    )
                    batch_size = gr.Number(
                        32,
                        label="Batch size",
                        precision=0,
                        info="Examples per step; lower it if memory runs out.",
                        elem_id="batch-size",
                    )
                towers = gr.Radio(
                    ["both", "vision", "text"],
                    value=STUDY["caption"]["towers"],
                    label="Towers",
                    info="Which half of the model gets the new parameters: the image encoder "
                    f"(vision), the text decoder (text) or both (study: {STUDY['caption']['towers']}).",
                )
                eval_limit = gr.Number(
                    0,
                    label="Test examples to score",
                    elem_id="eval-limit",
                    precision=0,
                    info="0: the whole test split. Fewer is faster, but the score is rougher.",
                )
                base_model = gr.Dropdown(
                    [
                        (
                            f"Embedded scene-BLIP{' (' + settings.base_model + ')' if settings.base_model else ''}",
                            EMBEDDED,
                        )
                    ],
                    value=EMBEDDED,
                    allow_custom_value=True,
                    label="Base model",
                    interactive=not settings.demo,
                    info="A Hugging Face Hub id (e.g. Salesforce/blip-image-captioning-base) or a local folder.",
                )
                dataset = gr.Dropdown(
                    dataset_choices(services, "caption"),
                    value=EMBEDDED,
                    allow_custom_value=True,
                    label="Dataset",
                    interactive=not settings.demo,
                    elem_id="dataset",
                    info="One you uploaded (below), a dataset folder or a Hub id (COCO Karpathy captions, VQAv2).",
                )
            ui.add(
                "train",
                task=task,
                method=method,
                budget=budget,
                data_fraction=data_fraction,
                seed=seed,
                epochs=epochs,
                max_steps=max_steps,
                lr=lr,
                batch_size=batch_size,
                towers=towers,
                base_model=base_model,
                dataset=dataset,
                eval_limit=eval_limit,
                min_steps=min_steps,
                patience=patience,
            )
            if not settings.demo:
                data.build(services, ui, "train", lambda name: _dataset_label(services, name))
            start_button = gr.Button("Start training", variant="primary", elem_id="start-training")
            start_note = gr.Markdown(elem_id="start-note")
        with gr.Column(scale=6):
            jobs = gr.Dropdown([], value=None, label="Job shown", info="Your jobs, newest first.", elem_id="job-picker")
            status = gr.Markdown(IDLE, elem_id="job-status")
            progress = gr.HTML("", elem_id="job-progress")
            cancel_button = gr.Button("Cancel this job", variant="stop", visible=False, elem_id="cancel-job")
            curve = gr.Plot(loss_curve([]), label="Loss curve", elem_id="loss-curve")
            command = gr.Code(
                "",
                language="shell",
                label="The same run from the command line",
                interactive=False,
                lines=2,
                wrap_lines=True,
                visible=False,
                elem_id="job-command",
            )
            with gr.Accordion("Log (last lines)", open=False, elem_id="log-box") as log_box:
                log = gr.Textbox(
                    "",
                    label="log.txt",
                    interactive=False,
                    lines=12,
                    max_lines=12,
                    autoscroll=True,
                    elem_id="job-log",
                    elem_classes="vl-log",
                )
    job = gr.BrowserState("", storage_key="vlpeft-job", secret=secret)  # the job shown; a reload re-attaches
    points = gr.State(-1)
    timer = gr.Timer(POLL_S, active=False)
    ui.add(
        "train",
        method_note=method_note,
        estimate_note=estimate_note,
        size_note=size_note,
        protocol_note=protocol_note,
        start_note=start_note,
        jobs=jobs,
        status=status,
        progress=progress,
        cancel=cancel_button,
        curve=curve,
        command=command,
        log=log,
        log_box=log_box,
        job=job,
        points=points,
        timer=timer,
    )
    visitor = ui["app.visitor"]
    form = set(ui.of("train", FORM))
    view = ui.of("train", VIEW)
    private = dict(api_visibility="private")

    def named(values: dict) -> dict[str, Any]:
        return ui.values("train", values)

    # Defaults follow a person's pick (.input), not a form filled from a run (Runs: run again with changes).
    method.input(describe_method, method, method_note, api_name="ui_describe_method", **private)

    def on_learning_rate(values: dict) -> dict:
        """The rate follows every pick it depends on; 0 means the tuned (or default) rate its note gives."""
        picked = named(values)
        rate = learning_rate(
            services, picked["task"], picked["method"], picked["towers"], picked["base_model"], budget=picked["budget"]
        )
        return {lr: rate}

    gr.on(
        [task.input, method.input, towers.input, base_model.input, budget.input],
        on_learning_rate,
        set(ui.of("train", ("task", "method", "towers", "base_model", "budget"))),
        lr,
        api_name="ui_learning_rate",
        **private,
    )
    estimated = ("method", "budget", "towers", "base_model")

    def on_estimate(values: dict) -> dict:
        picked = named(values)
        return {estimate_note: estimate(services, *(picked[name] for name in estimated))}

    gr.on(
        [field.change for field in ui.of("train", estimated)],
        on_estimate,
        set(ui.of("train", estimated)),
        estimate_note,
        api_name="ui_estimate",
        show_progress="minimal",
        concurrency_limit=None,
        **private,
    )
    form_changes = [field.change for field in ui.of("train", FORM)]
    gr.on(
        form_changes,
        lambda values: {size_note: describe_size(services, named(values))},
        form,
        size_note,
        api_name="ui_size",
        show_progress="hidden",
        concurrency_limit=None,
        **private,
    )
    gr.on(
        form_changes,
        lambda values: {protocol_note: protocol_text(services, named(values))},
        form,
        protocol_note,
        api_name="ui_protocol",
        show_progress="hidden",
        concurrency_limit=None,
        **private,
    )

    def task_defaults(values: dict) -> dict:
        """The task's datasets (one of its uploads stays picked: adding a dataset sets task and dataset at once)
        and its default epochs."""
        picked = named(values)
        choices = dataset_choices(services, picked["task"])
        value = picked["dataset"] if picked["dataset"] in {value for _, value in choices[1:]} else EMBEDDED
        return {dataset: gr.update(choices=choices, value=value), epochs: STUDY[picked["task"]]["epochs"]}

    # `.input`: only a person's own pick resets the dataset and epochs; a fill from a run (Runs: run again) or an
    # upload (which sets task and dataset itself) keeps what it set.
    task.input(task_defaults, {task, dataset}, [dataset, epochs], api_name="ui_task_defaults", **private)

    def on_start(values: dict, request: gr.Request) -> dict:
        return ui.updates("train", start(services, request, values[visitor], named(values)))

    start_button.click(
        on_start,
        {visitor, *form},
        [job, *view, jobs, start_note],
        api_name="ui_start",
        concurrency_limit=4,
        **private,
    )
    # The last lines are what matter: show them when the box opens (the text area starts at its top).
    log_box.expand(None, None, None, js=SCROLL_LOG_TO_END)

    def on_cancel(values: dict, request: gr.Request) -> dict:
        shows_user_errors(cancel)(services, request, values[visitor], values[job])
        return ui.updates("train", show_job(services, values[job], -1))

    cancel_button.click(on_cancel, {visitor, job}, view, api_name="ui_cancel", **private)
    timer.tick(
        lambda values: ui.updates("train", show_job(services, values[job], values[points])),
        {job, points},
        view,
        api_name="ui_poll",
        show_progress="hidden",
        concurrency_limit=None,
        **private,
    )

    def on_pick(values: dict) -> dict:
        job_id = values[jobs]
        return ui.updates("train", {"job": job_id or "", **show_job(services, job_id, -1)})

    jobs.input(on_pick, {jobs}, [job, *view], api_name="ui_pick_job", **private)

    def on_load(values: dict, request: gr.Request) -> dict:
        picked = named(values)
        watched = reattach(services, request, values[visitor], picked.pop("job"))
        return ui.updates(
            "train",
            {
                "job": watched or "",
                **show_job(services, watched, -1),
                "jobs": jobs_choices(services, request, values[visitor], watched),
                "estimate_note": estimate(services, *(picked[name] for name in estimated)),
                "size_note": describe_size(services, picked),
                # datasets added since the page was built
                "dataset": gr.update(choices=dataset_choices(services, picked["task"])),
            },
        )

    return Loader(
        "ui_train_load", on_load, {visitor, job, *form}, [job, *view, jobs, estimate_note, size_note, dataset]
    )


def dataset_choices(services: Services, task: str) -> list[tuple[str, str]]:
    return data.dataset_choices(services, task, _dataset_label(services, task))


def _dataset_label(services: Services, task: str) -> str:
    source = services.settings.datasets.get(task)
    name = "scene captions" if task == "caption" else "scene questions"
    return f"Embedded {name}" + (f" ({source})" if source else "")
