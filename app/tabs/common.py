"""What every tab needs: who is asking, and user errors shown as a message instead of a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.people import ADDRESS, VISITOR
from training.errors import UserError


@dataclass
class Loader:
    """What a tab fills when a page opens; run after the visitor id is known (see `app.main`)."""

    name: str
    fn: Callable[..., Any]
    inputs: list
    outputs: list
    fills: list = field(default_factory=list)  # components another tab may fill (the Train form, from a run)


def scroll_to_end_js(elem_id: str) -> str:
    """Browser code that scrolls a text box to its last line (a log: the end says why it stopped)."""
    return (
        f"() => {{ setTimeout(() => {{ const box = document.querySelector('#{elem_id} textarea'); "
        "if (box) { box.scrollTop = box.scrollHeight; } }, 50); }"
    )


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
