"""Numbers, durations and job states as a person with no ML background reads them."""

from __future__ import annotations

import html
from pathlib import PurePath
from typing import TYPE_CHECKING

from app.people import reason
from training.catalog import BASELINE, CATALOG, MAIN_METRIC, METHOD_LABELS, NO_BUDGET_METHODS, TASK_LABELS

if TYPE_CHECKING:
    from app.services import Estimate

EMBEDDED_DATASET_NAMES = {"caption": "scene-caption", "vqa": "scene-vqa"}  # as the trainer records them
METRIC_NOTES = {
    "CIDEr-D": "how closely a caption matches the human ones, rare shared word groups counting most: 0 (nothing in "
    "common) to 10 (word for word as every human caption); higher is better",
    "accuracy": "the share of questions answered as the human annotators did, 0 to 100 %; higher is better",
}


def score_scale(task: str | None) -> str:
    """A task's main score and its scale: 'CIDEr-D: how closely a caption matches ... higher is better'."""
    metric = MAIN_METRIC.get(task or "", "")
    return f"{metric}: {METRIC_NOTES[metric]}" if metric in METRIC_NOTES else ""


def task_name(task: str | None) -> str:
    """A task as the form names it, in running text: 'image captioning'."""
    return TASK_LABELS.get(task, task or "?").lower() if task in TASK_LABELS else (task or "?")


def count(value: int | float | None) -> str:
    return "-" if value is None else f"{round(value):,}"


def percent(value: float | None) -> str:
    """0.7213 -> '0.721 %', 12.5 -> '12.5 %', 100 -> '100 %' (three significant figures)."""
    if value is None:
        return "-"
    return f"{value:.3g} %" if value < 100 else f"{value:.0f} %"


def fraction(value: float | None) -> str:
    """A data fraction as a share: 0.1 -> '10 %'."""
    return "-" if value is None else percent(100 * float(value))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def about(seconds: float) -> str:
    """'about 2 min 30 s': rounded to 5 s under a minute, 10 s under ten minutes, else the minute, so a countdown
    polled every second reads calmly and no figure claims a precision the pace does not have."""
    step = 5 if seconds < 60 else 10 if seconds < 600 else 60
    return f"about {duration(step * round(seconds / step))}"


def time_left(seconds: float) -> str:
    return f"{about(seconds)} left"


def metric(name: str, value: float | None) -> str:
    if value is None:
        return f"{name} -"
    if name.startswith("accuracy"):
        return f"{name} {value:.1f} %"
    return f"{name} {value:.3g}" if abs(value) >= 0.01 else f"{name} {value:.3f}"  # never '4e-06' for a person


NOT_SCORES = {"num_examples", "decode_s", "eval_s"}  # what eval.json records beside the scores


def test_scores(metrics: dict) -> dict[str, float]:
    """The scores among a run's test metrics (not its counts, timings or per-type breakdown), in their order."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and k not in NOT_SCORES}


def score_value(name: str, value: float | None) -> str:
    """A score in a table cell: '43.2 %' for an accuracy, '0.812' for the others, '-' for none."""
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.1f} %" if name.startswith("accuracy") else f"{value:.3f}"


def main_score(task: str, metrics: dict) -> str:
    name = MAIN_METRIC.get(task, "")
    return metric(name, metrics.get(name)) if name in metrics else "-"


def run_words(config: dict, dataset_name: str | None = None) -> str:
    """A job's settings in words: 'LoRA 18k on 10 % of scene-vqa' ('Zero-shot on scene-vqa': no budget, no data
    trained on); the dataset is the one recorded by the trainer, else the folder's name, else the embedded one."""
    method, task = config.get("method"), config.get("task")
    source = config.get("dataset")
    dataset = dataset_name or (PurePath(source).name if source else EMBEDDED_DATASET_NAMES.get(task, task or "?"))
    label = METHOD_LABELS.get(method, method)
    if method == "zero-shot":
        return f"{label} on {dataset}"
    budget = "" if method in NO_BUDGET_METHODS or not config.get("budget") else f" {config['budget']}"
    share = config.get("data_fraction")
    return f"{label}{budget} on " + (f"{fraction(share)} of {dataset}" if share is not None else dataset)


def method_explainer(method: str) -> str:
    info = CATALOG[method]
    family = "" if info.family == BASELINE else f" (*{info.family}*)"  # a baseline's label already says it
    return f"**{METHOD_LABELS.get(method, method)}**{family}: {info.summary}"


def estimate_text(estimate: Estimate) -> str:
    """'**21,504 trainable parameters** = 0.721 % of the model (LoRA rank 4) ...', or why the budget fails."""
    plan = estimate.plan
    label = METHOD_LABELS.get(plan.method, plan.method)
    if plan.method == "zero-shot":
        return "**0 trainable parameters**: zero-shot trains nothing, it scores the model as it is."
    if not plan.feasible:
        return f"⚠️ **This budget is out of reach.** {plan.message}"
    head = (
        f"**{count(plan.trainable_params)} trainable parameters** = {percent(plan.percent)} of the model "
        f"({count(estimate.total_params)} parameters)"
    )
    if plan.knob is None and CATALOG[plan.method].family != BASELINE:  # no knob: a fixed count, said in the plan
        return f"{head}. {plan.message}"
    if plan.knob is None:
        return f"{head}. {label} ignores the budget: it trains every weight."
    return (
        f"{head}: {label} with {plan.knob} {plan.value}. Reachable with this method: "
        f"{count(plan.min_params)} to {count(plan.max_params)}."
    )


def job_headline(status: dict) -> str:
    """One line saying where a job is: queued #n, running step x/y with the time left, or how it ended."""
    state, config = status["state"], status.get("config") or {}
    owner = status.get("submitter")  # the Train tab shows a person their own jobs
    status = {
        **status,
        "reason": reason(status.get("reason"), owner, owner),
        "cancel_requested_by": reason(status.get("cancel_requested_by"), owner, owner) or None,
    }
    what = run_words(config, status.get("info", {}).get("dataset_name"))
    if state == "queued":
        ahead, seconds = (status.get("queue_position") or 1) - 1, status.get("wait_s")
        when = "" if seconds is None else "in a moment" if seconds < 5 else f"in {about(seconds)}"
        if ahead:
            wait = f"{ahead} job{'s' if ahead > 1 else ''} ahead of it" + (f"; it starts {when}" if when else "")
        elif when:
            wait = f"it starts next, {when}, when a running job ends"
        else:
            wait = "it starts next, as soon as a running job ends"
        return f"**Queued #{status.get('queue_position') or '?'}** ({what}): {wait}."
    if state == "running":
        phase = status.get("phase")
        if status.get("cancel_requested_by"):
            return f"**Stopping** ({what}): cancel requested by {status['cancel_requested_by']}."
        if phase == "training" and status.get("total_steps"):
            loss = status.get("loss")
            left = status.get("eta_s")
            return (
                f"**Training** ({what}): step {status['step']:,} of {status['total_steps']:,}"
                + (f", loss {loss:.3f}" if loss is not None else "")
                + (f", {time_left(left)}" if left is not None else "")
                + "."
            )
        if phase == "validating" and status.get("total_steps"):
            return (
                f"**Training** ({what}): step {status['step']:,} of {status['total_steps']:,}, scoring the "
                "validation split to keep the best checkpoint so far."
            )
        if phase == "evaluating":
            done, total = status.get("eval_done"), status.get("eval_total")
            where = f": {done:,} of {total:,} test examples answered" if total else ": training is done"
            return f"**Scoring on the test set** ({what}){where}."
        if phase == "done":
            return f"**Finishing** ({what}): test scores written, recording the result."
        if phase == "stopped":
            return f"**Stopping** ({what}): the weights trained so far are saved."
        return f"**Starting** ({what}): loading the model and the data."
    if state == "finished":
        score = main_score(config.get("task", ""), status.get("metrics") or {})
        note = METRIC_NOTES.get(MAIN_METRIC.get(config.get("task", ""), ""))
        return f"**Finished** in {duration(status.get('elapsed_s'))} ({what}). Test score: {score}" + (
            f" ({note})." if note else "."
        )
    if state == "failed":
        hint = status.get("hint")
        return f"**Failed** ({what}): {status.get('reason')}." + (f" **What to do:** {hint}" if hint else "")
    if state == "cancelled":
        return f"**Cancelled** ({what}): {status.get('reason')}."
    return f"⚠️ **{state.capitalize()}** ({what}): {status.get('reason')}."


def progress_share(status: dict) -> float:
    """0..1 of the job done, for the progress bar: training is the first 95 %, scoring the test set the rest.
    A job that ended early keeps the share it reached."""
    state, phase = status["state"], status.get("phase")
    if state == "finished" or phase == "done":
        return 1.0
    if state == "queued":
        return 0.0
    if phase == "evaluating":
        done, total = status.get("eval_done") or 0, status.get("eval_total")
        return 0.95 + 0.05 * min(1.0, done / total) if total else 0.95
    step, total = status.get("step") or 0, status.get("total_steps")
    return 0.95 * min(1.0, step / total) if total else 0.0


def progress_label(status: dict) -> str:
    """What the bar says beside its share: the time left while training, the scoring count, or where it stopped."""
    state, phase = status["state"], status.get("phase")
    share = f"{100 * progress_share(status):.0f} %"
    step, total = status.get("step"), status.get("total_steps")
    if state == "running" and phase == "evaluating" and status.get("eval_total"):
        return f"{share} · scoring {status.get('eval_done') or 0:,} of {status['eval_total']:,}"
    if state == "running" and phase == "training" and status.get("eta_s") is not None:
        return f"{share} · {time_left(status['eta_s'])}"
    if state in ("cancelled", "failed", "interrupted") and step and total:
        return f"{share} · stopped at step {step:,} of {total:,}"
    return share


def progress_html(status: dict | None) -> str:
    if status is None:
        return ""
    return progress_bar(progress_share(status), status["state"], progress_label(status))


def progress_bar(share: float, state: str, label: str) -> str:
    """The bar of a job or a sweep: filled to `share` (0 to 1), coloured by `state`, with `label` on it."""
    return (
        f'<div class="vl-progress" role="progressbar" aria-valuenow="{100 * share:.0f}" aria-valuemin="0" '
        f'aria-valuemax="100"><div class="vl-progress-fill vl-{html.escape(state)}" '
        f'style="width:{100 * share:.1f}%"></div><span>{html.escape(label)}</span></div>'
    )
