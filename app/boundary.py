"""What every way into the app (a tab's event, an API endpoint) needs: who is asking, the numbers a field holds, the
limits every run form shares, and user errors shown as a message instead of a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr

from app.people import ADDRESS, VISITOR
from training.errors import UserError


def submitter(request: gr.Request | None, visitor: str | None) -> str:
    """Who a job counts against and who may cancel it: the logged-in user; else, in the page, this browser's id;
    else, over the API, the client's address (every new gradio_client on one machine is the same person)."""
    if request is not None and request.username:
        return request.username
    if visitor:
        return f"{VISITOR}{visitor}"
    host = getattr(getattr(request, "client", None), "host", None) if request is not None else None
    return f"{ADDRESS}{host}" if host else "local"


def shows_user_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into a message in the page (gr.Error): the sentence, no traceback."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return wrapper


def optional_number(value: float | int | str | None) -> float | None:
    """An empty form field is None; anything else must be a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{value!r} is not a number.") from None


def optional_int(value: float | int | str | None, name: str) -> int | None:
    number = optional_number(value)
    if number is None:
        return None
    if number != int(number):
        raise UserError(f"{name} must be a whole number, not {number:g}.")
    return int(number)


def run_limits(batch_size: Any, max_steps: Any, eval_limit: Any) -> tuple[int, int | None, int | None]:
    """(batch size, step limit, test examples to score) from a Train or Sweep form; 0 or empty: no limit."""
    batch = optional_int(batch_size, "The batch size")
    if batch is None or batch < 1:
        raise UserError("The batch size must be at least 1 (e.g. 32; smaller if memory runs out).")
    steps, limit = optional_int(max_steps, "Steps"), optional_int(eval_limit, "Test examples to score")
    if (steps or 0) < 0 or (limit or 0) < 0:
        raise UserError("Steps and test examples to score cannot be negative (0 means no limit).")
    return batch, steps or None, limit or None
