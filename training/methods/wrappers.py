"""Module wrappers shared by the methods that insert computation around an existing layer."""

from __future__ import annotations

import re

from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """The original module under any number of method wrappers (each keeps it as `.inner`)."""
    while hasattr(module, "inner"):
        module = module.inner
    return module


def unwrapped_name(name: str) -> str:
    """A module or tensor name as it was in the base model: without the `.inner` of method wrappers and the
    `.base_layer` of peft's LoRA layers."""
    return re.sub(r"\.(inner|base_layer)(?=\.|$)", "", name)
