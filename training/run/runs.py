"""The run directory: the files every run writes (through `RunDirectory`), and the only place the UI reads
training state from.

config.json   resolved config, parameter counts, versions, data subset, the reproducing command
metrics.jsonl one line per logged step (step, total_steps, epoch, loss, lr, samples_per_s, elapsed_s, eta_s)
progress.json the latest phase and step (overwritten atomically)
log.txt       the run's log
weights.safetensors  the method's parameters (the whole model for full fine-tuning)
validation.jsonl one line per validation (step, epoch, metric, value, best so far)
eval.json     test-split metrics and the validation summary (best step, why training stopped);
              predictions.jsonl the outputs the test metrics were computed from
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PROGRESS = "progress.json"
LOG = "log.txt"
WEIGHTS = "weights.safetensors"
EVAL = "eval.json"
PREDICTIONS = "predictions.jsonl"
VALIDATION = "validation.jsonl"
RESUME = "resume"  # the resumable state (training/run/resume.py)
RESUME_FIELDS = "state.json"
STOP = "STOP"

# Exit codes of `python -m training train`, which the job worker maps to states.
EXIT_FINISHED = 0
EXIT_USER_ERROR = 2
EXIT_STOPPED = 3


@dataclass
class StepRecord:
    """A logged optimizer step: one line of metrics.jsonl."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    lr: float
    samples_per_s: float
    elapsed_s: float
    eta_s: float | None

    def row(self) -> dict:
        """The metrics.jsonl line: rounded there, while the log prints the values as measured."""
        return {
            **asdict(self),
            "epoch": round(self.epoch, 3),
            "loss": round(self.loss, 5),
            "samples_per_s": round(self.samples_per_s, 2),
            "elapsed_s": round(self.elapsed_s, 2),
        }


@dataclass
class ValidationRecord:
    """One line of validation.jsonl: a score of the validation subset, and the best one so far."""

    step: int
    epoch: float
    metric: str
    value: float
    best: float
    best_step: int
    seconds: float
    elapsed_s: float


class RunDirectory:
    """Writes one run's files (the names above); the run's clock starts when it is opened."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def stop_file(self) -> Path:
        return self.path / STOP

    def open_log(self) -> logging.Logger:
        """Log to log.txt, and to stderr unless stderr already is log.txt (as when the job worker runs us)."""
        logger = logging.getLogger(f"vlpeft.run.{self.path}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        log_path = self.path / LOG
        file_handler = logging.FileHandler(log_path, encoding="utf-8")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
        try:
            same = os.path.samestat(os.fstat(sys.stderr.fileno()), os.stat(log_path))
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(formatter)
            logger.addHandler(stream)
        return logger

    def set_phase(self, phase: str, **fields: Any) -> None:
        """Move progress.json to a new phase, keeping the step it last recorded."""
        write_json(self.path / PROGRESS, {**(read_json(self.path / PROGRESS) or {}), "phase": phase, **fields})

    def write_loading(self) -> None:
        write_json(self.path / PROGRESS, {"phase": "loading", "step": 0, "total_steps": None})

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG, config)

    def write_step(self, record: StepRecord) -> None:
        row = record.row()
        append_jsonl(self.path / METRICS, row)
        write_json(self.path / PROGRESS, {"phase": "training", **row})

    def write_validation(self, record: ValidationRecord) -> None:
        append_jsonl(self.path / VALIDATION, asdict(record))

    def save_weights(self, state_dict: dict) -> None:
        from safetensors.torch import save_file  # torch only where weights are written: the UI reads the rest

        save_file(state_dict, str(self.path / WEIGHTS))

    def write_predictions(self, records: list[dict]) -> None:
        (self.path / PREDICTIONS).unlink(missing_ok=True)
        for record in records:
            append_jsonl(self.path / PREDICTIONS, record)

    def write_eval(self, result: dict) -> None:
        write_json(self.path / EVAL, result)


def close_log(logger: logging.Logger) -> None:
    """Close and drop the handlers `RunDirectory.open_log` gave a run's logger."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def append_jsonl(path: str | Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def read_json(path: str | Path) -> dict | None:
    """The JSON in a file, or None if it is missing or not (yet) complete."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line still being written
    except OSError:
        return []
    return rows


LOSS_WINDOW_EPOCHS = 0.5


def training_loss(run_dir: str | Path, step: int | None) -> float | None:
    """The mean training loss logged over the half epoch up to `step` (the kept checkpoint; the last step when
    None): how well the method fits its training data there. A high one beside a low score is a method that
    cannot fit the task; a low one beside a low score, one that over-fits."""
    rows = [r for r in read_jsonl(Path(run_dir) / METRICS) if isinstance(r.get("loss"), int | float)]
    if step is not None:
        rows = [r for r in rows if r["step"] <= step]
    if not rows:
        return None
    start = rows[-1].get("epoch", 0) - LOSS_WINDOW_EPOCHS
    window = [r["loss"] for r in rows if r.get("epoch", 0) >= start]
    return round(sum(window) / len(window), 4)


def tail(path: str | Path, lines: int = 40) -> list[str]:
    """The last lines of a text file (reads at most the last 64 KiB)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    # A progress bar redraws its line with carriage returns: keep only what the line shows last.
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.strip("\r")][-lines:]


def saved_step(run_dir: str | Path) -> int | None:
    """The step a run's saved state resumes after (training/run/resume.py), or None when it has none."""
    fields = read_json(Path(run_dir) / RESUME / RESUME_FIELDS)
    return int(fields["step"]) if fields and "step" in fields else None
