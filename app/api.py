"""The app's API for `gradio_client`: the main actions as typed functions returning JSON.

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    client.predict("lora", "0.5%", api_name="/estimate")["trainable_params"]
    job = client.predict(task="vqa", method="lora", budget="0.5%", data_fraction=0.1, api_name="/start_job")
    client.predict(job["job_id"], api_name="/job_status")["state"]        # queued, running, finished, ...
    client.predict("vqa", [job["job_id"]], "what color is the circle?", 0, api_name="/compare")

A user error (a bad budget, an unknown model, a corrupt image) comes back as an error whose message is the
sentence the page would show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
from gradio.data_classes import FileData

from app.services import Services
from app.tabs.common import shows_user_errors, submitter
from app.tabs.train import run_config


def register(services: Services) -> None:
    """Add the endpoints to the Blocks being built."""

    def endpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = shows_user_errors(fn)
        gr.api(wrapped, api_name=fn.__name__, concurrency_limit=4)
        return wrapped

    @endpoint
    def estimate(method: str, budget: str, towers: str = "both", base_model: str = "") -> dict:
        """The exact trainable-parameter count of a method under a budget (e.g. '0.5%' or '20k'), before training.

        Returns method, knob, value, trainable_params, percent, total_params, min_params, max_params, feasible and
        message (why a budget out of the method's range cannot be reached)."""
        return services.estimate(method, budget, towers, base_model).to_dict()

    @endpoint
    def start_job(task: str = "caption", method: str = "lora", budget: str = "0.5%", data_fraction: float = 1.0,
                  seed: int = 0, epochs: float | None = None, max_steps: int | None = None, lr: float | None = None,
                  batch_size: int = 32, towers: str = "both", base_model: str = "", dataset: str = "",
                  eval_limit: int | None = None, request: gr.Request = None) -> dict:  # fmt: skip
        """Queue a fine-tuning job; returns job_id, state, queue_position, trainable_params, steps and command.

        base_model and dataset: empty for the app's own, else a Hub id or a local path."""
        config = run_config(services, task, method, budget, data_fraction, seed, epochs, max_steps, lr, batch_size,
                            towers, base_model, dataset, eval_limit)  # fmt: skip
        config, planned, size, notes = services.prepare(config)
        job_id = services.submit(config, submitter(request, None))
        status = services.status(job_id, log_lines=0)
        return {"job_id": job_id, "state": status["state"], "queue_position": status["queue_position"],
                "trainable_params": planned.plan.trainable_params, "steps": size.steps,
                "command": status["command"], "notes": notes}  # fmt: skip

    @endpoint
    def job_status(job_id: str, log_lines: int = 20) -> dict:
        """Live status: state (queued, running, finished, failed, cancelled, interrupted), reason, phase, step,
        total_steps, loss, eta_s, elapsed_s, queue_position, metrics (once evaluated), error, hint, log_tail."""
        status = services.status(job_id, log_lines=log_lines)
        status.pop("curve")
        return status

    @endpoint
    def cancel_job(job_id: str, request: gr.Request = None) -> dict:
        """Cancel a queued job, or ask a running one to stop (it keeps the weights trained so far)."""
        status = services.cancel(job_id, submitter(request, None))
        status.pop("curve")
        return status

    @endpoint
    def list_runs(task: str = "") -> list[dict]:
        """Every job, newest first: id, state, reason, task, method, config, trainable_params, metrics, duration_s."""
        return [record.to_dict() for record in services.runs(task or None)]

    @endpoint
    def compare(task: str, run_ids: list[str], question: str = "", test_image: int | None = None,
                image: FileData | None = None) -> list[dict]:  # fmt: skip
        """The zero-shot base and each run on one image: a test image by its gallery position (0-based, then each
        column is scored against the human references), or an uploaded `image` (gradio_client.handle_file)."""
        path = image["path"] if isinstance(image, dict) else getattr(image, "path", None)
        if test_image is None and path is None:
            raise gr.Error("Give test_image (a gallery position) or image (handle_file('picture.png')).")
        comparison = services.compare(task, run_ids, question, test_image, path)
        return [{**vars(column), "differs": column.output != comparison.columns[0].output,
                 "references": comparison.references, "answers": comparison.answers,
                 "image_id": comparison.image_id} for column in comparison.columns]  # fmt: skip
