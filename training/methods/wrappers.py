"""Module wrappers shared by the methods that insert computation around an existing layer."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from training.methods.base import ALL_ROWS, AdapterContext


def unwrap(module: nn.Module) -> nn.Module:
    """The original module under any number of method wrappers (each keeps it as `.inner`)."""
    while hasattr(module, "inner"):
        module = module.inner
    return module


def unwrapped_name(name: str) -> str:
    """A module or tensor name as it was in the base model: without the `.inner` of method wrappers and the
    `.base_layer` of peft's LoRA layers."""
    return re.sub(r"\.(inner|base_layer)(?=\.|$)", "", name)


def add_on_rows(ctx: AdapterContext, adapter: str, target: torch.Tensor, source: torch.Tensor,
                delta: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """target + delta(source) on the batch rows the adapter acts on; the other rows are left as they are."""
    rows = ctx.rows(adapter, target.device)
    if rows is None:
        return target
    if rows is ALL_ROWS:
        return target + delta(source)
    return target.index_add(0, rows, delta(source[rows]).to(target.dtype))
