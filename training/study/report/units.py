"""A finding's units (a method, or a pair x task x towers) and how they are tested: a unit reproduces the claim only
when every one of its checks holds, so its p-value is the largest of its checks' (the intersection-union test), and
Holm's correction runs over the finding's units, not over their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.study.report.rules import ALPHA, NOT, PARTLY, REPRODUCED, UNDETERMINED
from training.study.report.stats import Interval, holm


@dataclass
class Part:
    """One part of a unit's claim (finding 1's data slope, finding 2's flatness): intervals that must all lie above
    zero. `possible` is False for a part that cannot hold whatever the numbers (a best budget at an edge is no
    interior optimum): its p-value is 1."""

    checks: list[Interval | None]
    possible: bool = True
    holds: bool | None = None  # set by judge_units; None while its unit is not judged

    @property
    def judged(self) -> bool:
        return all(check is not None and check.known for check in self.checks)

    @property
    def p(self) -> float:
        """The largest of its checks' one-sided p-values (1 when it cannot hold; nan when it is not judged)."""
        if not self.judged:
            return math.nan
        return max(check.p for check in self.checks) if self.possible and self.checks else 1.0

    @property
    def above_zero(self) -> bool:
        return self.possible and all(check.above_zero for check in self.checks)


@dataclass
class Unit:
    """One unit of a finding: its parts by name, every one of which must hold for it to reproduce the claim, and
    why it is undetermined when one of them could not be judged (a method without runs, a seed missing a
    fraction)."""

    name: str
    parts: dict[str, Part]
    why: str = ""
    holm_p: float = math.nan  # its p-value after Holm's correction over the finding's units (nan: not judged)

    @property
    def judged(self) -> bool:
        return bool(self.parts) and all(part.judged for part in self.parts.values())

    @property
    def p(self) -> float:
        """The largest of its parts' p-values: the unit's intersection-union test (nan when it is not judged)."""
        return max(part.p for part in self.parts.values()) if self.judged else math.nan

    def holds(self, part: str) -> bool | None:
        """Whether the named part holds (None: not judged, or the unit has no such part)."""
        return self.parts[part].holds if part in self.parts else None

    @property
    def state(self) -> str:
        """reproduced when every part holds, partly when some do, not reproduced when none does; undetermined
        when a part could not be judged (an incomplete unit counts as not agreeing)."""
        if not self.judged:
            return UNDETERMINED
        held = [part.holds for part in self.parts.values()]
        if all(held):
            return REPRODUCED
        return PARTLY if any(held) else NOT


def judge_units(units: list[Unit]) -> None:
    """Holm's step-down over a finding's judged units, one test per unit (its p-value, the largest of its parts').
    Sets each unit's `holm_p` and each part's `holds`: its intervals lie above zero and its p-value, standing in for
    its unit's in the family, is below ALPHA after the correction. Holm's adjusted p-value never falls when a
    p-value rises, so a unit's parts all hold exactly when its own test does."""
    judged = [unit for unit in units if unit.judged]
    p_values = [unit.p for unit in judged]
    for unit, adjusted in zip(judged, holm(p_values), strict=True):
        unit.holm_p = adjusted
    for slot, unit in enumerate(judged):
        for part in unit.parts.values():
            stand_in = holm([*p_values[:slot], part.p, *p_values[slot + 1 :]])[slot]
            part.holds = part.above_zero and stand_in < ALPHA


def pooled_holds(checks: list[Interval | None]) -> bool | None:
    """A finding's pooled claim (its pooled tests, which must all hold): every interval above zero and the largest
    one-sided p-value below ALPHA (the intersection-union test again); None when one could not be judged."""
    part = Part(checks)
    return bool(part.above_zero and part.p < ALPHA) if part.judged else None
