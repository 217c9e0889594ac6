"""Limits for a shared (public) deployment, read from environment variables.

The defaults suit a free CPU Space: a short queue, a few jobs per person, one job at a time and
half an hour per job. A private GPU box raises them, e.g. `VLPEFT_MAX_QUEUED_PER_USER=100`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from training.errors import UserError

ENV_VARS = {
    "max_queued": ("VLPEFT_MAX_QUEUED", 20),
    "max_queued_per_submitter": ("VLPEFT_MAX_QUEUED_PER_USER", 3),
    "max_runtime_s": ("VLPEFT_MAX_RUNTIME_S", 1800),
    "max_concurrent": ("VLPEFT_MAX_CONCURRENT", 1),
    "stop_grace_s": ("VLPEFT_STOP_GRACE_S", 10),
    "checkpoint_s": ("VLPEFT_CHECKPOINT_S", 300),
}


@dataclass(frozen=True)
class JobLimits:
    """0 means no limit, except for `max_concurrent` (at least 1), `stop_grace_s` and `checkpoint_s`."""

    max_queued: int = 20  # jobs queued or running, all submitters together
    max_queued_per_submitter: int = 3  # jobs queued or running for one submitter
    max_runtime_s: float = 1800  # a running job past this is stopped like a cancel
    max_concurrent: int = 1  # jobs running at once on this store
    stop_grace_s: float = 10  # between the graceful stop and killing the process group
    checkpoint_s: float = 300  # how often a running job's saved state is published to the durable location (0: never)

    def past_runtime(self, started_at: float | None, now: float) -> bool:
        """Whether a job that started at `started_at` has run longer than `max_runtime_s` (0: no limit)."""
        return bool(self.max_runtime_s and started_at and now - started_at > self.max_runtime_s)

    @classmethod
    def from_env(cls) -> JobLimits:
        values = {}
        for name, (var, default) in ENV_VARS.items():
            value = env_number(var, default, "use 0 for no limit or a positive number")
            values[name] = value if name.endswith("_s") else int(value)
        values["max_concurrent"] = max(1, values["max_concurrent"])
        return cls(**values)


def env_number(var: str, default: float, when_negative: str) -> float:
    """A non-negative number from the environment (default when unset); a UserError that says what to set."""
    raw = os.environ.get(var, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise UserError(f"{var}={raw!r} is not a number: set it to e.g. {default:g}.") from None
    if value < 0:
        raise UserError(f"{var}={raw!r} is negative: {when_negative}.")
    return value
