"""The methods as the tests see them: one row per PEFT method of the catalog, so a new method is tested by every
battery that reads this table without an edit here (its plain-torch reference row lives in
tests/test_methods_reference.py)."""

from __future__ import annotations

from dataclasses import dataclass

from training.catalog import CATALOG, LAYER, PEFT_METHODS

# A small knob value on the tiny test model, by what the knob is.
TEST_KNOB = {"prompt length": 3, "prefix length": 3, "rank": 2, "bottleneck width": 4}
# Methods whose initial weights are not drawn from the run's generator (IA3's vectors start at one).
NOT_SEEDED = frozenset({"ia3"})


@dataclass(frozen=True)
class MethodRow:
    method: str
    knob: int | None  # on the tiny test model; None: the method has no knob
    starts_as_base: bool  # a fresh adapter is exactly the base model (layer composition: a zero update, or ones)
    seeded: bool  # its initial weights come from the run's seed

    def __str__(self) -> str:
        return self.method


ROWS = [
    MethodRow(
        name,
        TEST_KNOB[CATALOG[name].knob] if CATALOG[name].knob else None,
        CATALOG[name].family == LAYER,
        name not in NOT_SEEDED,
    )
    for name in PEFT_METHODS
]
KNOB = {row.method: row.knob for row in ROWS}
STARTS_AS_BASE = [row.method for row in ROWS if row.starts_as_base]
PEFT_FORMAT = [name for name in PEFT_METHODS if CATALOG[name].peft_format]  # exported for PeftModel
BUDGETED = [name for name in PEFT_METHODS if CATALOG[name].takes_budget]  # the methods a budget sets the size of
