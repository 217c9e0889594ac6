"""What every tab needs: what it fills when a page opens, and a log box kept scrolled to its end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Loader:
    """What a tab fills when a page opens; run after the visitor id is known (see `app.main`). Its `fn` takes
    `{component: value}` for the set of `inputs` and returns `{component: value}` for some of `outputs`."""

    name: str
    fn: Callable[..., Any]
    inputs: set
    outputs: list


def scroll_to_end_js(elem_id: str) -> str:
    """Browser code that scrolls a text box to its last line (a log: the end says why it stopped)."""
    return (
        f"() => {{ setTimeout(() => {{ const box = document.querySelector('#{elem_id} textarea'); "
        "if (box) { box.scrollTop = box.scrollHeight; } }, 50); }"
    )
