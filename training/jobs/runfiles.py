"""Reading a run directory while its trainer may be writing it: every reader copes with missing,
partial or half-written files and returns None or an empty list instead of raising."""

from __future__ import annotations

import json
from pathlib import Path

LOG_FILE = "log.txt"
STOP_FILE = "STOP"
PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
WEIGHTS_FILE = "weights.safetensors"

_TAIL_BYTES = 64 * 1024


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def last_metrics(run_dir: Path) -> dict | None:
    """The last complete line of metrics.jsonl (the one being written may be cut short)."""
    for line in reversed(tail_lines(run_dir / METRICS_FILE, 3)):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def read_progress(run_dir: Path) -> dict | None:
    """progress.json, else the last metrics line; None before the trainer has written either."""
    return read_json(run_dir / PROGRESS_FILE) or last_metrics(run_dir)


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a text file as a terminal would show them (a `\\r` redraws its line)."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as file:
            size = file.seek(0, 2)
            start = max(0, size - _TAIL_BYTES)
            file.seek(start)
            data = file.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").split("\n")
    if start > 0:
        lines = lines[1:]  # the first one is cut
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines]
    while shown and not shown[-1].strip():
        shown.pop()
    return shown[-count:]
