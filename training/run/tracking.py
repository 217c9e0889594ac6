"""Experiment tracking where people already look: `--report-to tensorboard|trackio|none`.

The run directory stays the record the app reads; a tracker is an extra copy of the scalars for TensorBoard
or Trackio, under the names transformers' Trainer uses (`train/loss`, `train/learning_rate`, `eval/...`),
so runs of this project sit beside other fine-tunes in the same dashboards.

    tracker = open_tracker(config.report_to, run_dir, config.to_dict())
    tracker.log(step, training_scalars(row))          # each metrics.jsonl row
    tracker.log(step, eval_scalars(validation))       # each validation
    tracker.close()

The packages are optional (`pip install ".[tracking]"`); asking for one that is missing is a UserError.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from training.errors import UserError

REPORT_TO = ("none", "tensorboard", "trackio")
TENSORBOARD_DIR = "tensorboard"  # inside the run directory
TRACKIO_PROJECT = "vl-peft-lab"
# metrics.jsonl names -> transformers' Trainer names
TRAIN_NAMES = {
    "loss": "train/loss",
    "lr": "train/learning_rate",
    "samples_per_s": "train/samples_per_second",
    "epoch": "train/epoch",
}


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def open_tracker(kind: str, run_dir: str | Path, config: dict[str, Any]) -> Tracker:
    """A tracker for `--report-to kind`, writing for the run in `run_dir` whose settings are `config`."""
    if kind == "none":
        return NoTracker()
    if kind == "tensorboard":
        return TensorBoardTracker(Path(run_dir), config)
    if kind == "trackio":
        return TrackioTracker(Path(run_dir), config)
    raise UserError(f"Unknown --report-to {kind!r}: choose one of {', '.join(REPORT_TO)}.")


def training_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The trackable values of a metrics.jsonl row, under transformers' names."""
    return {TRAIN_NAMES[k]: v for k, v in row.items() if k in TRAIN_NAMES and _is_number(v)}


def eval_scalars(metrics: dict[str, Any], split: str = "eval") -> dict[str, float]:
    """Validation (or, with split="test", test) scores as `eval/CIDEr-D`, ..., numbers only."""
    return {f"{split}/{k}": v for k, v in metrics.items() if _is_number(v)}


class NoTracker:
    def log(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Event files in `<run dir>/tensorboard/` (`tensorboard --logdir <run dir>`)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            # optional dependency (requirements-tracking.txt), and torch: the jobs CLI imports this module
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(_missing("tensorboard")) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class TrackioTracker:
    """A run in Trackio's project `vl-peft-lab`, named after the run directory; Trackio keeps it locally
    (`TRACKIO_DIR`, by default under `HF_HOME`) or on a Space (`TRACKIO_SPACE_ID`), as its docs say."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import trackio  # optional dependency: requirements-tracking.txt
        except ImportError:
            raise UserError(_missing("trackio")) from None
        self.trackio = trackio
        self.run = trackio.init(project=TRACKIO_PROJECT, name=run_dir.name, config=config)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _missing(package: str) -> str:
    return (
        f"--report-to {package} needs the {package} package, which is not installed: "
        f'pip install {package} (or pip install ".[tracking]"), or use --report-to none.'
    )
