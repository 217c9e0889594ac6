"""From a trainable-parameter budget to each method's knob (prompt length, prefix length, rank, width).

Counts are exact: the method is attached to a copy of the model built on the meta device (no memory, no
weights), and its parameters are counted. Every method's count is affine in its knob, so two probes give
the line and one more checks the chosen value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from transformers import BlipConfig, BlipForConditionalGeneration

from training.budget import Budget, parse_budget
from training.catalog import BASELINE, METHOD_NAMES
from training.errors import UserError
from training.methods.base import METHODS, AdapterContext


@dataclass
class Plan:
    method: str
    knob: str | None
    value: int | None
    trainable_params: int
    percent: float
    min_params: int
    max_params: int
    feasible: bool
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def count_base_params(model: BlipForConditionalGeneration) -> int:
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=256)
def _count(config_json: str, method: str, towers: str, knob_value: int | None) -> tuple[int, int]:
    """(trainable params of the method, total base params) on a meta-device model."""
    config = BlipConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = BlipForConditionalGeneration(config)
    total = count_base_params(model)
    attached = METHODS[method](model, AdapterContext(), "probe", towers, knob_value)
    return attached.num_trainable(), total


def count_trainable(config: BlipConfig, method: str, towers: str, knob_value: int | None) -> int:
    return _count(config.to_json_string(use_diff=False), method, towers, knob_value)[0]


def plan_method(model: BlipForConditionalGeneration, method: str, budget: Budget | str, towers: str = "both") -> Plan:
    """Solve the method's knob for the budget; `feasible` is False (with a message) outside the method's range."""
    if method not in METHODS:
        raise UserError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    budget = parse_budget(budget) if isinstance(budget, str) else budget
    cls = METHODS[method]
    config_json = model.config.to_json_string(use_diff=False)
    total = count_base_params(model)
    if cls.knob is None:
        count = _count(config_json, method, towers, None)[0]
        if cls.family == BASELINE:
            note = "The parameter budget does not apply to this baseline."
            return Plan(method, None, None, count, 100 * count / total, count, count, True, note)
        return fixed_count_plan(method, count, total, budget.resolve(total), towers)
    high = cls.max_knob(model, towers)
    low_count = _count(config_json, method, towers, 1)[0]
    high_count = _count(config_json, method, towers, high)[0]
    target = budget.resolve(total)
    if not low_count <= target <= high_count:
        message = (
            f"{method} cannot reach a budget of {target:,} trainable parameters here: with towers={towers} "
            f"it trains between {low_count:,} ({cls.knob} 1) and {high_count:,} ({cls.knob} {high}) "
            f"parameters ({100 * low_count / total:.3g}% to {100 * high_count / total:.3g}% of the "
            "model). Choose a budget in that range."
        )
        nearest, count = (1, low_count) if target < low_count else (high, high_count)
        return Plan(method, cls.knob, nearest, count, 100 * count / total, low_count, high_count, False, message)
    slope = (_count(config_json, method, towers, 2)[0] - low_count) if high > 1 else 0
    value = 1 if slope == 0 else min(high, max(1, round(1 + (target - low_count) / slope)))
    count = _count(config_json, method, towers, value)[0]
    return Plan(method, cls.knob, value, count, 100 * count / total, low_count, high_count, True)


def fixed_count_plan(method: str, count: int, total: int, target: int, towers: str) -> Plan:
    """A method without a knob that is not a baseline trains one fixed count: it meets any budget at or above
    that count and refuses a smaller one, saying the count."""
    share = f"{count:,} parameters ({100 * count / total:.3g}% of the model) with towers={towers}"
    if target < count:
        message = (
            f"{method} has no knob: it always trains {share}, so it cannot stay within a budget of "
            f"{target:,}. Give a budget of at least {count:,}, or choose a method with a knob."
        )
        return Plan(method, None, None, count, 100 * count / total, count, count, False, message)
    message = f"{method} has no knob: it trains its fixed {share}, within the budget of {target:,}."
    return Plan(method, None, None, count, 100 * count / total, count, count, True, message)


def plan_all(model: BlipForConditionalGeneration, budget: Budget | str, towers: str = "both") -> list[Plan]:
    return [plan_method(model, name, budget, towers) for name in METHOD_NAMES]


def require_feasible(plan: Plan) -> Plan:
    if not plan.feasible:
        raise UserError(plan.message)
    return plan
