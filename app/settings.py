"""The app's settings, read once from environment variables (see `Settings.from_env`).

Tests build a `Settings` directly (a tiny model, tiny datasets, a temporary data home) instead.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from training.data.archive import ArchiveLimits
from training.errors import UserError
from training.jobs.limits import JobLimits
from training.paths import RESULTS_DIR, SHIPPED_DIR, data_home, durable_home

DEMO_MAX_STEPS = 300
DEMO_MAX_RUNTIME_S = 600
DEMO_MAX_QUEUED = 10


@dataclass(frozen=True)
class Settings:
    base_model: str | None = None  # None: the embedded default
    datasets: dict[str, str | None] = field(default_factory=lambda: {"caption": None, "vqa": None})
    home: Path | None = None  # None: training.paths.data_home()
    durable: Path | None = None  # where ended runs are published (training.jobs.durable); None: kept in home
    results_dir: Path = RESULTS_DIR
    shipped_dir: Path | None = SHIPPED_DIR  # adapters Compare offers before anyone trains (app/shipped.py); None: none
    demo: bool = False
    demo_max_steps: int = DEMO_MAX_STEPS
    auth: tuple[tuple[str, str], ...] = ()
    host: str = "127.0.0.1"
    port: int = 7860
    limits: JobLimits = field(default_factory=JobLimits)
    gallery_size: int = 24
    archive_limits: ArchiveLimits = field(default_factory=ArchiveLimits)  # what an uploaded dataset zip may hold

    @classmethod
    def from_env(cls) -> Settings:
        """PORT, GRADIO_SERVER_NAME, VLPEFT_BASE_MODEL, VLPEFT_CAPTION_DATASET, VLPEFT_VQA_DATASET,
        VLPEFT_RESULTS, VLPEFT_DEMO, VLPEFT_DEMO_MAX_STEPS, VLPEFT_AUTH, the job limits (VLPEFT_MAX_*), and
        VLPEFT_HOME and VLPEFT_DURABLE (see training.paths)."""
        env = os.environ
        demo = env.get("VLPEFT_DEMO", "").strip().lower() in ("1", "true", "yes", "on")
        return cls(
            base_model=env.get("VLPEFT_BASE_MODEL") or None,
            datasets={task: env.get(f"VLPEFT_{task.upper()}_DATASET") or None for task in ("caption", "vqa")},
            durable=durable_home(),
            results_dir=Path(env.get("VLPEFT_RESULTS") or RESULTS_DIR),
            demo=demo,
            demo_max_steps=_int_env("VLPEFT_DEMO_MAX_STEPS", DEMO_MAX_STEPS),
            auth=parse_auth(env.get("VLPEFT_AUTH", "")),
            host=env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
            port=_int_env("PORT", 7860),
            limits=JobLimits.from_env(),
        )

    @property
    def data_home(self) -> Path:
        if self.home is None:
            return data_home()
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home

    def job_limits(self) -> JobLimits:
        """The queue limits; demo mode tightens them to one job per visitor and short runs."""
        if not self.demo:
            return self.limits
        limits = self.limits
        runtime = min(limits.max_runtime_s or DEMO_MAX_RUNTIME_S, DEMO_MAX_RUNTIME_S)
        queued = min(limits.max_queued or DEMO_MAX_QUEUED, DEMO_MAX_QUEUED)
        return dataclasses.replace(limits, max_queued_per_submitter=1, max_runtime_s=runtime, max_queued=queued)


def parse_auth(text: str) -> tuple[tuple[str, str], ...]:
    """`user:password[,user2:password2]` into pairs; an empty string means no login."""
    pairs = []
    for item in text.split(","):
        if not item.strip():
            continue
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise UserError("VLPEFT_AUTH must look like user:password (several separated by commas).")
        pairs.append((user, password))
    return tuple(pairs)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a whole number: set it to e.g. {default}.") from None
