"""PEFT methods, one module per family, registered by the names the CLI and the app show."""

from training.methods import adapters, baselines, dora, ia3, lora, prefix, prompt  # noqa: F401  (registers them)
from training.methods.base import METHODS, AdapterContext, Method

__all__ = ["METHODS", "AdapterContext", "Method"]
