"""Every component of the page by name ("train.budget"), as LLaMA-Factory's web UI names its elements.

A handler takes a set of components as its inputs, so Gradio passes it `{component: value}`, and returns
`{component: value}` for what it changes: adding a field never shifts a tuple. The tabs' plain functions (which
the tests call) speak in short names ("budget"); `values` and `updates` translate at the edge."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gradio.blocks import Block


class Manager:
    def __init__(self) -> None:
        self._blocks: dict[str, Block] = {}
        self._names: dict[int, str] = {}  # id(block) -> its full name

    def add(self, tab: str, **blocks: Block) -> None:
        """Name `blocks` under `tab`: `add("train", budget=...)` is `"train.budget"`."""
        for name, block in blocks.items():
            full = f"{tab}.{name}"
            if full in self._blocks:
                raise ValueError(f"{full} is named twice")
            self._blocks[full] = block
            self._names[id(block)] = full

    def __getitem__(self, name: str) -> Block:
        return self._blocks[name]

    def of(self, tab: str, names: Iterable[str]) -> list[Block]:
        """The components `tab.name` for each name, in that order (for outputs, and for a set of inputs)."""
        return [self._blocks[f"{tab}.{name}"] for name in names]

    def values(self, tab: str, given: Mapping[Block, Any]) -> dict[str, Any]:
        """`{component: value}` from Gradio -> `{short name: value}` for the components of `tab`."""
        prefix = f"{tab}."
        named = {self._names.get(id(block), ""): value for block, value in given.items()}
        return {name[len(prefix) :]: value for name, value in named.items() if name.startswith(prefix)}

    def updates(self, tab: str, changes: Mapping[str, Any]) -> dict[Block, Any]:
        """`{short name: value}` -> `{component: value}` for Gradio; a name left out leaves its component as it is."""
        return {self._blocks[f"{tab}.{name}"]: value for name, value in changes.items()}
