"""Module wrappers shared by the methods that insert computation around an existing layer."""

from __future__ import annotations

import re

from torch import nn

from training.model.blip_internals import BaseTunerLayer


def unwrap(module: nn.Module) -> nn.Module:
    """The original module under any number of method wrappers (each keeps it as `.inner`)."""
    while hasattr(module, "inner"):
        module = module.inner
    return module


def unwrapped_name(name: str) -> str:
    """A module or tensor name as it was in the base model: without the `.inner` of method wrappers and the
    `.base_layer` of peft's LoRA layers."""
    return re.sub(r"\.(inner|base_layer)(?=\.|$)", "", name)


def peft_targets(model: nn.Module, pattern: str) -> list[str]:
    """Names of the modules a peft method should inject into, for `target_modules` as a list of exact names:
    for every layer whose unwrapped name fully matches `pattern`, the outermost module that is a Linear or a
    peft tuner layer (another method's wrapper that keeps the Linear as `.inner` is looked through; a peft layer
    is wrapped again, so adapters stack)."""
    chosen: dict[str, str] = {}
    for name, module in model.named_modules():
        key = unwrapped_name(name)
        if key not in chosen and isinstance(module, nn.Linear | BaseTunerLayer) and re.fullmatch(pattern, key):
            chosen[key] = name
    return sorted(chosen.values())
