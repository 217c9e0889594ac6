"""PEFT methods, one module per family, registered by the names the CLI and the app show.

Every module of this package is imported here, so a method's module registers itself (`@register`): adding a
method is its module and its entry in training/catalog.py, nothing else in this package.
"""

import importlib
import pkgutil

from training.methods.base import METHODS, AdapterContext, Method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "AdapterContext", "Method"]
