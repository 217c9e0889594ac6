"""A trainable-parameter budget as typed data: an absolute count or a share of the base model, parsed once from
what a person types (`20k`, `1.5M`, `0.5%`). Torch-free, so the web process and the CLI check a budget before
any model is loaded; `training.methods.budget` solves a method's knob for it on a given model."""

from __future__ import annotations

import re
from dataclasses import dataclass

from training.errors import UserError

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}


@dataclass(frozen=True)
class Budget:
    """A trainable-parameter budget: an absolute count, or a percentage of the base model."""

    value: float
    percent: bool

    def resolve(self, total_params: int) -> int:
        return round(total_params * self.value / 100) if self.percent else round(self.value)

    def __str__(self) -> str:
        if self.percent:
            return f"{self.value:g}%"
        return f"{int(self.value)}"


def parse_budget(text: str | int | float) -> Budget:
    """Parse `20000`, `20k`, `1.5M` or `0.5%` into a Budget; raise UserError on anything else."""
    raw = str(text).strip().replace(",", "").replace("_", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?|\.\d+)\s*([kKmMgGbB%]?)", raw)
    if not match:
        raise UserError(
            f"Budget {text!r} is not understood: give a parameter count such as 20000, 20k or 1.5M, "
            "or a percentage of the base model such as 0.5%."
        )
    number, suffix = float(match.group(1)), match.group(2).lower()
    if suffix == "%":
        if not 0 < number <= 100:
            raise UserError(f"Budget {text!r}: a percentage must be above 0 and at most 100.")
        return Budget(number, percent=True)
    count = number * _SUFFIX[suffix]
    if count < 1:
        raise UserError(f"Budget {text!r}: a parameter count must be at least 1.")
    return Budget(count, percent=False)
