"""The run directory: the files every run writes, and the only place the UI reads training state from.

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
import os
import tempfile
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
STOP = "STOP"

# Exit codes of `python -m training train`, which the job worker maps to states.
EXIT_FINISHED = 0
EXIT_USER_ERROR = 2
EXIT_STOPPED = 3


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
