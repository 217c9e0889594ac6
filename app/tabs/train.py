"""Train: pick a task, a method, a budget and a share of the data; start a job and watch it to the end."""

from __future__ import annotations

import gradio as gr

from app import format as fmt
from app.figures import loss_curve
from app.services import EMBEDDED, Services
from app.tabs import data
from app.tabs.common import Loader, optional_int, optional_number, scroll_to_end_js, shows_user_errors, submitter
from training.catalog import BASELINE, CATALOG, EMBEDDING, LAYER, METHOD_NAMES
from training.errors import UserError
from training.jobs.store import ACTIVE_STATES
from training.methods import METHODS
from training.run.config import DEFAULT_EPOCHS, TASKS, RunConfig, parse_fraction
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
VIEW = ("status", "progress", "cancel", "curve", "command", "log", "log box", "timer", "points")


def run_config(
    services: Services,
    task: str,
    method: str,
    budget: str,
    data_fraction: float | str | None,
    seed: float | str | None,
    epochs: float | str | None = None,
    max_steps: float | str | None = None,
    lr: float | str | None = None,
    batch_size: float | str | None = 32,
    towers: str | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    eval_limit: float | str | None = None,
    min_steps: float | str | None = None,
    patience: float | str | None = None,
) -> RunConfig:
    """The RunConfig a form (or an API call) describes; UserError with one sentence on a bad field.

    What is left out follows the study's protocol (sweeps/paper.yaml: towers, epoch cap, step floor, patience),
    so a run at a grid point lands on the grid's curve. Steps and test examples of 0 (or empty) mean no limit, a
    step floor of 0 none; a learning rate of 0 (or empty) the trainer's choice: the rate tuned for the task and
    method (results/lr.csv), else the method's own."""
    if data_fraction is None or str(data_fraction).strip() == "":
        raise UserError("Give the share of the training data to use, between 0 and 1 (e.g. 0.25 for a quarter).")
    epochs, lr = optional_number(epochs), optional_number(lr)
    lr = None if lr == 0 else lr  # the browser sends an empty number field as 0
    if epochs is not None and epochs <= 0:
        raise UserError(f"Epochs must be above 0 (e.g. 1), not {epochs:g}.")
    if lr is not None and not 0 < lr < 1:
        raise UserError(f"A learning rate of {lr:g} is out of range: use a small positive value such as 0.001.")
    batch = optional_int(batch_size, "The batch size")
    if batch is None or batch < 1:
        raise UserError("The batch size must be at least 1 (e.g. 32; smaller if memory runs out).")
    seed = optional_int(seed, "The seed") or 0
    if seed < 0:
        raise UserError(f"The seed must be 0 or more, not {seed}.")
    max_steps, eval_limit = optional_int(max_steps, "Steps"), optional_int(eval_limit, "Test examples to score")
    if (max_steps or 0) < 0 or (eval_limit or 0) < 0:
        raise UserError("Steps and test examples to score cannot be negative (0 means no limit).")
    study = study_settings(task) if task in TASKS else {}
    min_steps, patience = optional_int(min_steps, "Minimum steps"), optional_int(patience, "Patience")
    if (min_steps or 0) < 0 or (patience or 0) < 0:
        raise UserError("Minimum steps and patience cannot be negative (0: no floor; 0 patience: no validation).")
    config = RunConfig(
        task=task,
        method=method,
        budget=str(budget or "").strip(),
        data_fraction=parse_fraction(data_fraction),
        seed=seed,
        epochs=epochs if epochs is not None else study.get("epochs"),
        max_steps=max_steps or None,
        min_steps=study.get("min_steps") if min_steps is None else (min_steps or None),
        patience=study.get("patience", RunConfig.patience) if patience is None else patience,
        lr=lr,
        batch_size=batch,
        towers=towers or study.get("towers", "text"),
        base_model=services.base_model_source(base_model),
        dataset=services.dataset_source(task, dataset),
        eval_limit=eval_limit or None,
    )
    return config.validate()


def fill_train_form(services: Services, config: dict) -> tuple:
    """The Train form (in `run_config`'s order) and its method note, filled from a run's config: the run again,
    ready for changes. The app's own model and datasets show as the embedded choice."""
    task, method = config.get("task", "caption"), config.get("method", "lora")
    base, dataset = config.get("base_model"), config.get("dataset")
    return (
        task,
        method,
        config.get("budget"),
        config.get("data_fraction"),
        config.get("seed", 0),
        config.get("epochs") or DEFAULT_EPOCHS[task],  # a run queued without a cap had the trainer's
        config.get("max_steps") or 0,
        learning_rate(
            services, task, method, config.get("towers", "both"), base, config.get("lr"), config.get("budget")
        ),
        config.get("batch_size"),
        config.get("towers", "both"),
        EMBEDDED if base in (None, services.settings.base_model) else base,
        gr.update(
            choices=dataset_choices(services, task),
            value=EMBEDDED if dataset in (None, services.settings.datasets.get(task)) else dataset,
        ),
        config.get("eval_limit") or 0,
        config.get("min_steps") or 0,
        config.get("patience", RunConfig.patience),
        fmt.method_explainer(method),
    )


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
    from training.run.rates import resolve_lr

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
        where = origin.replace(" (", "; ").rstrip(")")  # "results/lr.csv; tuned with towers text"
        said = f"{lr:g}, tuned on the validation split for this task ({where}{form})"
    return gr.update(value=value or 0, info=f"0: {said}. Type a value to override it.")


def estimate(services: Services, method: str, budget: str, towers: str, base_model: str | None) -> str:
    try:
        return fmt.estimate_text(services.estimate(method, budget, towers, base_model))
    except UserError as exc:
        return f"⚠️ {exc}"


def describe_size(
    services: Services,
    task: str,
    method: str,
    data_fraction,
    seed,
    epochs,
    max_steps,
    batch_size,
    dataset: str | None,
    towers: str | None = None,
    base_model: str | None = None,
    budget: str | None = None,
    lr: float | str | None = None,
    eval_limit: float | str | None = None,
    min_steps: float | str | None = None,
    patience: float | str | None = None,
) -> str:
    """'This run trains on 200 of 2,000 images (1,000 caption pairs): 32 steps of 4 examples. Expected time: about
    2 min (...).', and a warning when that is past the run limit."""
    try:
        config = run_config(
            services,
            task,
            method,
            budget or "1",
            data_fraction,
            seed,
            epochs,
            max_steps,
            lr,
            batch_size,
            towers,
            base_model,
            dataset,
            eval_limit,
            min_steps,
            patience,
        )
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


def protocol_text(services: Services, *form) -> str:
    """Whether the form (in `run_config`'s order) follows the study's protocol, and if not, where it leaves it and
    what that means for setting its score beside the reference curves."""
    try:
        config = run_config(services, *form)
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


def start(services: Services, request: gr.Request | None, visitor: str, *form) -> tuple:
    """Queue a job from the form; returns the watched job id, the status view and the job picker, and the note
    under the Start button: why it was refused (kept there; status polls do not touch it), else nothing."""
    try:
        config, _, _, notes = services.prepare(run_config(services, *form))
        job_id = services.submit(config, submitter(request, visitor))
    except UserError as exc:
        gr.Warning(str(exc))
        return (gr.skip(), *[gr.skip()] * len(VIEW), gr.skip(), f"⚠️ **Not started.** {exc}")
    for note in notes:
        gr.Info(note)
    return (job_id, *show_job(services, job_id, -1), jobs_choices(services, request, visitor, job_id), "")


def _no_job_view(message: str, shown_points: int) -> tuple:
    """The VIEW with no job to show: the message, everything else hidden or left as it is."""
    hidden = gr.update(visible=False)
    return (
        message,
        "",
        hidden,
        gr.skip(),
        gr.update(value="", visible=False),
        "",
        gr.skip(),
        gr.Timer(active=False),
        shown_points,
    )


def show_job(services: Services, job_id: str | None, shown_points: int) -> tuple:
    """The VIEW: status, progress bar, cancel button, loss figure (skipped when unchanged), command, log, its
    accordion (opened when the job failed or was interrupted: the log says why), timer, points drawn."""
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
    figure = loss_curve(curve, validation, kept=kept) if points != shown_points else gr.skip()
    log = status["log_tail"]
    if status["state"] == "failed" and status.get("error"):
        log = [*log, "", f"error: {status['error']}"]
    ended_badly = status["state"] in ("failed", "interrupted")
    return (
        fmt.job_headline(status),
        fmt.progress_html(status),
        gr.update(visible=live),
        figure,
        gr.update(value=status["command"], visible=True),
        "\n".join(log) or "(the log is empty)",
        gr.update(open=True) if ended_badly else gr.skip(),
        gr.Timer(active=live),
        points,
    )


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


def build(services: Services, visitor: gr.BrowserState, secret: str) -> Loader:
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
                    services, "caption", "lora", DEFAULT_BUDGET, 1.0, 0, None, 0, 0, 32, None, EMBEDDED, EMBEDDED
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
            if not settings.demo:
                data.build(services, task, dataset, lambda name: _dataset_label(services, name))
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

    form = [
        task,
        method,
        budget,
        data_fraction,
        seed,
        epochs,
        max_steps,
        lr,
        batch_size,
        towers,
        base_model,
        dataset,
        eval_limit,
        min_steps,
        patience,
    ]
    view = [status, progress, cancel_button, curve, command, log, log_box, timer, points]
    assert len(view) == len(VIEW)
    private = dict(api_visibility="private")

    # Defaults follow a person's pick (.input), not a form filled from a run (Runs: run again with changes).
    method.input(describe_method, method, method_note, api_name="ui_describe_method", **private)
    # The learning rate follows every pick it depends on; empty means the tuned (or default) rate its note gives.
    for trigger in (task.input, method.input, towers.input, base_model.input, budget.input):
        trigger(
            lambda task_, method_, towers_, base_, budget_: learning_rate(
                services, task_, method_, towers_, base_, budget=budget_
            ),
            [task, method, towers, base_model, budget],
            lr,
            api_name="ui_learning_rate",
            **private,
        )
    estimate_inputs = [method, budget, towers, base_model]
    for trigger in (method.change, budget.change, towers.change, base_model.change):
        trigger(
            lambda *a: estimate(services, *a),
            estimate_inputs,
            estimate_note,
            api_name="ui_estimate",
            show_progress="minimal",
            concurrency_limit=None,
            **private,
        )
    size_inputs = [task, method, data_fraction, seed, epochs, max_steps, batch_size, dataset, towers, base_model]
    size_inputs += [budget, lr, eval_limit, min_steps, patience]
    for trigger in (
        task.change,
        method.change,
        data_fraction.change,
        seed.change,
        epochs.change,
        max_steps.change,
        batch_size.change,
        dataset.change,
        towers.change,
        base_model.change,
        budget.change,
        lr.change,
        eval_limit.change,
        min_steps.change,
        patience.change,
    ):
        trigger(
            lambda *a: describe_size(services, *a),
            size_inputs,
            size_note,
            api_name="ui_size",
            show_progress="hidden",
            concurrency_limit=None,
            **private,
        )

    def task_defaults(task_name: str, current: str | None) -> tuple:
        """The task's datasets (one of its uploads stays picked: adding a dataset sets task and dataset at once)
        and its default epochs."""
        choices = dataset_choices(services, task_name)
        value = current if current in {value for _, value in choices[1:]} else EMBEDDED
        return gr.update(choices=choices, value=value), STUDY[task_name]["epochs"]

    # `.input`: only a person's own pick resets the dataset and epochs; a fill from a run (Runs: run again) or an
    # upload (which sets task and dataset itself) keeps what it set.
    task.input(task_defaults, [task, dataset], [dataset, epochs], api_name="ui_task_defaults", **private)

    def on_start(request: gr.Request, visitor_id: str, *values):
        return start(services, request, visitor_id, *values)

    for field in form:
        field.change(
            lambda *values: protocol_text(services, *values),
            form,
            protocol_note,
            api_name="ui_protocol",
            show_progress="hidden",
            concurrency_limit=None,
            **private,
        )

    start_button.click(
        on_start, [visitor, *form], [job, *view, jobs, start_note], api_name="ui_start", concurrency_limit=4, **private
    )
    # The last lines are what matter: show them when the box opens (the text area starts at its top).
    log_box.expand(None, None, None, js=SCROLL_LOG_TO_END)

    def on_cancel(visitor_id: str, job_id: str, request: gr.Request):
        shows_user_errors(cancel)(services, request, visitor_id, job_id)
        return show_job(services, job_id, -1)

    cancel_button.click(on_cancel, [visitor, job], view, api_name="ui_cancel", **private)
    timer.tick(
        lambda job_id, shown: show_job(services, job_id, shown),
        [job, points],
        view,
        api_name="ui_poll",
        show_progress="hidden",
        concurrency_limit=None,
        **private,
    )

    def on_pick(job_id: str | None):
        return (job_id or "", *show_job(services, job_id, -1))

    jobs.input(on_pick, jobs, [job, *view], api_name="ui_pick_job", **private)

    def on_load(
        request: gr.Request,
        visitor_id: str,
        job_id: str,
        method_name: str,
        budget_text: str,
        towers_name: str,
        model: str,
        *size_values,
    ):
        watched = reattach(services, request, visitor_id, job_id)
        return (
            watched or "",
            *show_job(services, watched, -1),
            jobs_choices(services, request, visitor_id, watched),
            estimate(services, method_name, budget_text, towers_name, model),
            describe_size(services, *size_values),
            gr.update(choices=dataset_choices(services, size_values[0])),  # datasets added since the page was built
        )

    return Loader(
        "ui_train_load",
        on_load,
        [visitor, job, *estimate_inputs, *size_inputs],
        [job, *view, jobs, estimate_note, size_note, dataset],
        fills=[*form, method_note],
    )


def dataset_choices(services: Services, task: str) -> list[tuple[str, str]]:
    return data.dataset_choices(services, task, _dataset_label(services, task))


def _dataset_label(services: Services, task: str) -> str:
    source = services.settings.datasets.get(task)
    name = "scene captions" if task == "caption" else "scene questions"
    return f"Embedded {name}" + (f" ({source})" if source else "")
