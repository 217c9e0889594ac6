"""Module wrappers shared by the methods that insert computation around an existing layer."""

from __future__ import annotations

from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """The original module under any number of method wrappers (each keeps it as `.inner`)."""
    while hasattr(module, "inner"):
        module = module.inner
    return module
