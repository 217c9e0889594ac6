"""The app's API for `gradio_client`: the main actions as typed functions returning JSON.

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    client.predict("lora", "0.5%", api_name="/estimate")["trainable_params"]
    job = client.predict(task="vqa", method="lora", budget="0.5%", data_fraction=0.1, api_name="/start_job")
    client.predict(job["job_id"], api_name="/job_status")["state"]        # queued, running, finished, ...
    client.predict("vqa", [job["job_id"]], "what color is the circle?", 0, api_name="/compare")
    client.predict(handle_file("shapes.zip"), "shapes", "caption", api_name="/upload_dataset")["message"]
    client.predict("caption", api_name="/list_datasets")      # [{name, task, added_at}]
    client.predict("shapes", api_name="/remove_dataset")     # not while a queued or running job uses it
    client.predict("vqa", "300", "18k", api_name="/which_method")["sentence"]   # the grid's methods ranked there
    client.predict(api_name="/list_methods"); client.predict(api_name="/study_verdicts")["findings"]

A user error (a bad budget, an unknown model, a corrupt image) comes back as an error whose message is the
sentence the page would show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
from gradio.data_classes import FileData

from app.boundary import optional_int, shows_user_errors, submitter
from app.services import Services
from training.catalog import CATALOG
from training.errors import UserError
from training.methods import METHODS
from training.run.config import TASKS, TOWERS

MAX_TEXT = 300  # characters of a text argument (a budget, a model id, a path): longer is refused
MAX_ID_SHOWN = 40  # characters of a bad job id echoed back in an error
MAX_LOG_LINES = 1000


def register(services: Services) -> None:
    """Add the endpoints to the Blocks being built."""

    def endpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = shows_user_errors(fn)
        gr.api(wrapped, api_name=fn.__name__, concurrency_limit=4)
        return wrapped

    @endpoint
    def estimate(method: str, budget: str, towers: str = "text", base_model: str = "") -> dict:
        """Solve a budget: the exact trainable-parameter count a method gets under a budget, before training (the
        method sets its knob, e.g. the LoRA rank, to land as close as it can).

        Args:
            method: a method name from list_methods, e.g. lora.
            budget: a parameter count ('20k', '20000') or a share of the base model ('0.5%').
            towers: which towers the method trains: vision, text or both.
            base_model: empty for the app's own model, else a Hugging Face Hub id or a local folder.
        Returns:
            method, knob, value, trainable_params, percent, total_params, min_params, max_params, feasible, and
            message (why a budget out of the method's range cannot be reached)."""
        method, towers = choice(method, "method", METHODS), choice(towers, "towers", TOWERS)
        budget, base_model = text(budget, "budget"), text(base_model, "base_model", required=False)
        return services.estimate(method, budget, towers, base_model).to_dict()

    @endpoint
    def start_job(
        task: str = "caption",
        method: str = "lora",
        budget: str = "0.5%",
        data_fraction: float = 1.0,
        seed: int = 0,
        epochs: float | None = None,
        max_steps: int | None = None,
        lr: float | None = None,
        batch_size: int = 32,
        towers: str = "text",
        base_model: str = "",
        dataset: str = "",
        eval_limit: int | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Start a fine-tuning job (it is queued, then trained by a worker): poll it with job_status until its state
        is finished, then compare it with other runs on an image. which_method's 'train' field gives task, method,
        budget and data_fraction for a recommended run.

        Under the study's protocol unless told otherwise (sweeps/paper.yaml: the text decoder, the task's epoch cap,
        a 300-step floor, early stopping with patience 3), so its score sits beside the reference curves.

        Args:
            task: caption (image captioning) or vqa (visual question answering).
            method: a method name from list_methods, e.g. lora.
            budget: trainable parameters: a count ('20k') or a share of the base model ('0.5%').
            data_fraction: the share of the training set to train on, above 0 and at most 1 (e.g. 0.1).
            seed: the random seed (initialisation, data order, data subset).
            epochs: passes over the data at most; None for the task's default (validation stops it earlier).
            max_steps: a cap on optimiser steps; None for no cap (a few steps make a quick test run).
            lr: the learning rate; None (or 0) for the rate tuned on validation for this task, method, budget and
                base model (results/lr.csv), else the method's default; the run's config.json says which (lr_source).
            batch_size: examples per optimiser step.
            towers: which towers the method trains: vision, text or both.
            base_model: empty for the app's own model, else a Hugging Face Hub id or a local folder.
            dataset: empty for the app's own data, else a Hub id, a local folder, or a name from list_datasets.
            eval_limit: test examples to score at the end; None for the whole test split.
        Returns:
            job_id (for job_status, cancel_job and compare), state, queue_position, trainable_params, steps, command
            (the CLI line that reproduces it), notes."""
        task, method, towers = (
            choice(task, "task", TASKS),
            choice(method, "method", METHODS),
            choice(towers, "towers", TOWERS),
        )
        budget = text(budget, "budget")
        base_model, dataset = text(base_model, "base_model", required=False), text(dataset, "dataset", required=False)
        numbers = dict(
            data_fraction=data_fraction,
            seed=seed,
            epochs=epochs,
            max_steps=max_steps,
            lr=lr,
            batch_size=batch_size,
            eval_limit=eval_limit,
        )
        config = services.run_config(
            task=task,
            method=method,
            budget=budget,
            towers=towers,
            base_model=base_model,
            dataset=dataset,
            **{name: number(value, name) for name, value in numbers.items()},
        )
        config, planned, size, notes = services.prepare(config)
        job_id = services.submit(config, submitter(request, None))
        status = services.status(job_id, log_lines=0)
        return {
            "job_id": job_id,
            "state": status["state"],
            "queue_position": status["queue_position"],
            "trainable_params": planned.plan.trainable_params,
            "steps": size.steps,
            "command": status["command"],
            "notes": notes,
        }

    @endpoint
    def job_status(job_id: str, log_lines: int = 20) -> dict:
        """The live status of a job from start_job: poll it every few seconds until state is finished (then
        metrics holds its test scores), failed, cancelled or interrupted (then error and hint say why).

        Args:
            job_id: the id start_job returned, e.g. '20261129-103501-ab12cd'.
            log_lines: how many of the last log lines to return (0 to 1000).
        Returns:
            state (queued, running, finished, failed, cancelled, interrupted), reason, phase, step, total_steps,
            loss, eta_s, elapsed_s, queue_position, wait_s (queued: about how many seconds until it starts, or None),
            metrics (once evaluated), error, hint, log_tail."""
        lines = optional_int(number(log_lines, "log_lines"), "log_lines")
        if lines is None or not 0 <= lines <= MAX_LOG_LINES:
            raise UserError(f"log_lines must be a whole number from 0 to {MAX_LOG_LINES}, e.g. 20.")
        status = services.status(job_identifier(job_id), log_lines=lines)
        status.pop("curve")
        return status

    @endpoint
    def cancel_job(job_id: str, request: gr.Request = None) -> dict:
        """Cancel a queued job, or ask a running one to stop (it keeps the weights trained so far).

        Args:
            job_id: the id start_job returned."""
        status = services.cancel(job_identifier(job_id), submitter(request, None))
        status.pop("curve")
        return status

    @endpoint
    def list_runs(task: str = "") -> list[dict]:
        """Every training job of this app, newest first, with its settings and test scores, then the adapters
        shipped with the app (id 'shipped-...', `shipped` their label; read-only): find runs to compare.

        Args:
            task: '' for all, else caption or vqa.
        Returns:
            id, state, reason, task, method, config, trainable_params, metrics, duration_s, shipped per run."""
        task = choice(task, "task", TASKS) if task != "" else None
        return [record.to_dict() for record in services.runs(task) + services.shipped_runs(task)]

    @endpoint
    def upload_dataset(archive: FileData, name: str, task: str, replace: bool = False) -> dict:
        """Add a dataset from a zip in the folder format of docs/datasets.md (train/ and test/, optionally
        validation/, each with images and a metadata.jsonl), checked before it is kept. The name is then a dataset
        for start_job (dataset=name) and compare (dataset=name).

        Args:
            archive: the zip file (gradio_client.handle_file('data.zip')).
            name: lower-case letters, digits, - and _.
            task: caption or vqa.
            replace: true to replace an existing dataset of that name.
        Returns:
            name, task, splits ({split: {examples, images}}), top_answers (VQA), and message."""
        path = archive["path"] if isinstance(archive, dict) else getattr(archive, "path", None)
        if not isinstance(path, str):
            raise UserError("archive must be a zip file sent with gradio_client.handle_file('dataset.zip').")
        name, task = text(name, "name"), choice(task, "task", TASKS)
        if not isinstance(replace, bool):
            raise UserError(f"replace must be true or false, not {type(replace).__name__}.")
        preview = services.upload_dataset(path, name, task, replace)
        return {
            **preview.summary.to_dict(),
            "name": preview.stored.name,
            "message": f"Dataset {preview.stored.name!r} ({task}) is added: use dataset={preview.stored.name!r} "
            "in /start_job and /compare.",
        }

    @endpoint
    def list_datasets(task: str = "") -> list[dict]:
        """The datasets added with upload_dataset, newest first: name, task and added_at (seconds since the epoch).

        Args:
            task: '' for all, else caption or vqa."""
        task = choice(task, "task", TASKS) if task != "" else None
        found = sorted(services.uploaded_datasets(task), key=lambda d: d.added_at, reverse=True)
        return [{"name": d.name, "task": d.task, "added_at": d.added_at} for d in found]

    @endpoint
    def remove_dataset(name: str) -> dict:
        """Delete a dataset added with upload_dataset, here and on the durable storage. Runs trained on it keep
        their results and weights; refused while a queued or running job uses it.

        Args:
            name: the dataset's name (list_datasets lists them).
        Returns:
            name, task, message."""
        removed = services.remove_dataset(text(name, "name"))
        return {
            "name": removed.name,
            "task": removed.task,
            "message": f"Dataset {removed.name!r} ({removed.task}) is removed; the runs trained on it keep their "
            "results.",
        }

    @endpoint
    def compare(
        task: str,
        run_ids: list[str],
        question: str = "",
        test_image: int | None = None,
        image: FileData | None = None,
        dataset: str = "",
    ) -> list[dict]:
        """Compare adapters on one image: what the zero-shot base model and each finished run say about it (a
        caption, or the answer to a question), side by side. A test image is scored against its references.

        Args:
            task: caption or vqa (every run must be of this task).
            run_ids: job ids of finished runs (list_runs), e.g. ['20261129-103501-ab12cd']; [] for the base alone.
            question: for vqa, the question to answer, e.g. 'what color is the circle?'.
            test_image: a test image by its gallery position, 0-based; None when sending image.
            image: an uploaded picture (gradio_client.handle_file('picture.png')) instead of a test image.
            dataset: '' for the app's test images, else the name of a dataset added with upload_dataset.
        Returns:
            one dict per column (the base first): label, method, output, test_score, sample_score (this image),
            differs (from the base), references, answers, image_id."""
        task = choice(task, "task", TASKS)
        dataset = text(dataset, "dataset", required=False)
        if not isinstance(run_ids, list) or not all(isinstance(run_id, str) for run_id in run_ids):
            raise UserError("run_ids must be a list of job ids (strings), e.g. [] for the zero-shot base alone.")
        run_ids = [job_identifier(run_id) for run_id in run_ids]
        question = text(question, "question", required=False, limit=None)  # Compare says how long it may be
        if test_image is not None and (isinstance(test_image, bool) or not isinstance(test_image, int)):
            raise UserError("test_image must be a whole number, a gallery position from 0 (or None with image).")
        path = image["path"] if isinstance(image, dict) else getattr(image, "path", None)
        if image is not None and not isinstance(path, str):
            raise UserError("image must be a file sent with gradio_client.handle_file('picture.png').")
        if test_image is None and path is None:
            raise gr.Error("Give test_image (a gallery position) or image (handle_file('picture.png')).")
        comparison = services.compare(task, run_ids, question, test_image, path, dataset or None)
        return [
            {
                **vars(column),
                "differs": column.output != comparison.columns[0].output,
                "references": comparison.references,
                "answers": comparison.answers,
                "image_id": comparison.image_id,
            }
            for column in comparison.columns
        ]

    @endpoint
    def list_methods() -> list[dict]:
        """The fine-tuning methods this lab trains, to pick one for estimate, start_job or which_method.

        Returns:
            One dict per method: name (what the other tools take), label, family (layer composition, embedding
            composition or baseline), knob (what the budget sets, e.g. rank; None without one), takes_budget (False:
            a fixed count whatever the budget), summary."""
        return [
            {
                "name": info.name,
                "label": info.label,
                "family": info.family,
                "knob": info.knob,
                "takes_budget": info.takes_budget,
                "summary": info.summary,
            }
            for info in CATALOG.values()
        ]

    @endpoint
    def which_method(task: str, data: str, params: str) -> dict:
        """Which fine-tuning method to pick for a task, a data size and a trainable-parameter budget, from the study's
        grid of runs (results/runs.csv): the methods ranked by expected score there, with 95 % intervals over seeds,
        training time, memory, the runs behind each, and one sentence (field 'sentence') to tell the person. Between
        grid points the scores are interpolated (field 'rules' says how); outside the grid status is 'outside the
        grid' and nothing is guessed. 'train' is the config to pass to start_job for the pick.

        Args:
            task: caption (image captioning) or vqa (visual question answering).
            data: how much training data: a number of examples ('300') or a share of the training set ('7%').
            params: trainable parameters affordable: a count ('18k', '20000') or a share of the model ('0.6%').
        Returns:
            status, sentence, ranking (method, label, mean, low, high, seeds, tied, best, how, trainable_params,
            train_s, peak_mem_mb, runs), not_ranked (method, label, reason), support, rules, train."""
        task = choice(task, "task", TASKS)
        return services.which_method(task, text(data, "data"), text(params, "params")).to_dict()

    @endpoint
    def study_verdicts() -> dict:
        """Whether the paper's three findings reproduce in this lab's grid (reproduced, partly, not reproduced), and
        the study's full report in Markdown: the decision rules, the numbers, the per-method verdicts.

        Returns:
            findings (finding, answer, without_smallest_fraction) and report (Markdown text)."""
        return services.verdicts()


# --- argument checks: every wrong type or value gets a sentence saying what to send ----------------------


def choice(value: Any, name: str, choices: Any) -> str:
    """One of `choices` (names), else UserError listing them."""
    if not isinstance(value, str) or value not in choices:
        shown = repr(value) if len(repr(value)) <= MAX_ID_SHOWN else repr(value)[:MAX_ID_SHOWN] + "…"
        raise UserError(f"{name} {shown} is not one of {', '.join(choices)}: send one of them.")
    return value


def text(value: Any, name: str, required: bool = True, limit: int | None = MAX_TEXT) -> str:
    """A string argument (a number is taken as its text), at most `limit` characters."""
    if value is None and not required:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = f"{value:g}"
    if not isinstance(value, str) or (required and not value.strip()):
        raise UserError(f"{name} must be {'a non-empty' if required else 'a'} string, not {type(value).__name__}.")
    if limit is not None and len(value) > limit:
        raise UserError(f"{name} has {len(value):,} characters: keep it under {limit}.")
    return value


def number(value: Any, name: str) -> float | int | None:
    """A number argument or None (the default); strings of digits are read as the form would read them."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_SHOWN:
        return value  # Services.run_config reads it, or says it is not a number
    raise UserError(f"{name} must be a number, not {type(value).__name__}.")


def job_identifier(value: Any) -> str:
    """A job id as a string; a long or odd one is refused without being echoed back in full."""
    if not isinstance(value, str) or not value.strip():
        raise UserError("Send a job id as a string, e.g. '20261129-103501-ab12cd' (/list_runs lists them).")
    if len(value) > MAX_ID_SHOWN:
        raise UserError(
            f"There is no job {value[:MAX_ID_SHOWN]!r}… ({len(value):,} characters; ids look like "
            "'20261129-103501-ab12cd'): /list_runs lists them."
        )
    return value.strip()
