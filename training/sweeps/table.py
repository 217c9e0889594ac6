"""The results table: one row per finished run of a sweep, read from its run directory.

`results/runs.csv` is what the app's Explore tab and `python -m training report` read; `sweep.json` beside
it says how the table was made (command, machine, date, wall time, grid size, runs done and failed).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path

from training.catalog import CATALOG, MAIN_METRIC, trained_towers
from training.paths import REPO_ROOT
from training.run import runs
from training.sweeps.grid import GridPoint, budget_text

TABLE = "runs.csv"
META = "sweep.json"
# What a run under the study protocol adds (empty in a table written before it): where its learning rate came
# from, its validation score, how long it ran, why it stopped (and whether a step limit stopped it while still
# improving, and how far past its cap it could have gone), and its training loss at the kept checkpoint.
PROTOCOL_COLUMNS = [
    "lr_source",
    "method_options",
    "val_metric",
    "steps_run",
    "epochs_run",
    "best_step",
    "stop_reason",
    "stopped_improving",
    "step_limit",
    "train_loss",
]
# The columns every table starts with, in this order; metric columns follow, then anything else.
COLUMNS = [
    "task",
    "method",
    "family",
    "budget",
    "budget_params",
    "trainable_params",
    "trainable_percent",
    "total_params",
    "knob",
    "knob_value",
    "towers",
    "batch_size",
    "data_fraction",
    "train_examples",
    "train_pairs",
    "seed",
    "total_steps",
    "lr",
    *PROTOCOL_COLUMNS,
    "train_s",
    "wall_s",
    "peak_mem_mb",
    "device",
    "precision",
    "base_model",
    "base_model_sha",
    "dataset",
    "dataset_source",
    "dataset_sha",
    "subset_hash",
    "python",
    "torch",
    "transformers",
    "peft",
    "run",
]
CAPTION_METRICS = ["CIDEr-D", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L"]
RENAMED_METRICS = {"num_examples": "eval_examples"}


def display_path(source: str | None) -> str | None:
    """A local path inside the project as a relative path (the table must not depend on the checkout)."""
    if not source:
        return source
    try:
        return str(Path(source).resolve().relative_to(REPO_ROOT))
    except (ValueError, OSError):
        return source


def folder_sha(source: str | None) -> str | None:
    """A short sha256 over a local folder's files (names and contents); None for a Hub id."""
    if not source or not Path(source).is_dir():
        return None
    digest = hashlib.sha256()
    root = Path(source)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def run_row(point: GridPoint, run_dir: Path, shas: dict[str, str | None] | None = None) -> dict | None:
    """The table row of a finished run, or None if the run has not finished."""
    info, evaluation = runs.read_json(run_dir / runs.CONFIG), runs.read_json(run_dir / runs.EVAL)
    if info is None or evaluation is None:
        return None

    shas = shas or {}
    validation = evaluation.get("validation") or {}
    versions, config = info.get("versions") or {}, info.get("config") or {}
    trained = point.method != "zero-shot"
    row = {
        "task": point.task,
        "method": point.method,
        "family": CATALOG[point.method].family,
        "budget": budget_text(point.budget) if point.budget is not None else None,
        "budget_params": info.get("budget_params") if point.budget is not None else None,
        "trainable_params": info.get("trainable_params"),
        "trainable_percent": info.get("trainable_percent"),
        "total_params": info.get("total_params"),
        "knob": info.get("knob"),
        "knob_value": info.get("knob_value"),
        # Full fine-tuning trains both towers and zero-shot none, whatever the sweep's towers setting says.
        "towers": trained_towers(point.method, config.get("towers")),
        "batch_size": config.get("batch_size"),
        "data_fraction": point.fraction,
        "train_examples": info.get("train_examples") if trained else 0,
        "train_pairs": info.get("train_pairs") if trained else 0,
        "seed": point.seed,
        "total_steps": info.get("total_steps"),
        "lr": info.get("lr") if trained else None,
        "lr_source": info.get("lr_source") if trained else None,
        "method_options": json.dumps(info.get("method_options") or {}, sort_keys=True) if trained else None,
        "val_metric": validation.get("best"),
        "steps_run": validation.get("steps_run"),
        "epochs_run": validation.get("epochs_run"),
        "best_step": validation.get("best_step"),
        "stop_reason": validation.get("stop_reason") if trained else None,
        # True: a step limit ended the run while its latest validation was its best (the protocol's target: none)
        "stopped_improving": validation.get("stopped_improving") if trained else None,
        "step_limit": validation.get("step_limit") if trained else None,
        "train_loss": validation.get("train_loss") if trained else None,
        "train_s": evaluation.get("train_s"),
        "wall_s": evaluation.get("wall_s"),
        "peak_mem_mb": evaluation.get("peak_mem_mb"),
        "device": info.get("device"),
        "precision": info.get("precision"),
        "base_model": display_path(info.get("base_model")),
        "base_model_sha": shas.get("base_model"),
        "dataset": info.get("dataset_name"),
        "dataset_source": display_path(info.get("dataset")),
        "dataset_sha": shas.get(point.task),
        "subset_hash": info.get("subset_hash") if trained else None,
        "python": versions.get("python"),
        "torch": versions.get("torch"),
        "transformers": versions.get("transformers"),
        "peft": versions.get("peft"),
        "run": point.name,
    }
    for name, value in (evaluation.get("metrics") or {}).items():
        if name == "per_type" and isinstance(value, dict):
            row.update({f"accuracy_{qtype}": acc for qtype, acc in sorted(value.items())})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            row[RENAMED_METRICS.get(name, name)] = value
    return row


def column_order(rows: list[dict]) -> list[str]:
    present = {key for row in rows for key in row}
    metrics = [m for m in ["accuracy", *CAPTION_METRICS] if m in present]
    metrics += sorted(k for k in present if k.startswith("accuracy_"))
    rest = sorted(present - set(COLUMNS) - set(metrics))
    return COLUMNS + metrics + rest


def write_table(rows: list[dict], path: str | Path) -> Path:
    """Write the rows as CSV atomically (a reader never sees half a table); empty cells for missing values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=column_order(rows) if rows else COLUMNS, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, path)
    return path


ITEM_SCORES = "item_scores.jsonl"


def item_scores(point: GridPoint, run_dir: Path) -> dict | None:
    """A finished run's per-test-item main metric, in test-split order, for the report's paired bootstrap."""
    records = runs.read_jsonl(run_dir / runs.PREDICTIONS)
    metric = MAIN_METRIC[point.task]
    if not records or any(metric not in r for r in records):
        return None
    line = {"run": point.name, "task": point.task, "metric": metric, "scores": [r[metric] for r in records]}
    if point.task == "vqa":
        line["question_types"] = [r.get("question_type") for r in records]
    return line


ITEM_DECIMALS = 6  # per-item scores are stored to this many decimals: far below any difference the report tests


def compact_item_lines(lines: list[dict]) -> list[dict]:
    """The lines as stored: scores rounded to ITEM_DECIMALS, and a task's question types (the same list for every
    run of a task) kept on its first line only, and on any line whose list differs from that one. The report reads
    a task's types from the first line that has them. A whole VQA grid saves about 2 MB."""
    first: dict[str, list] = {}
    for line in lines:
        if line.get("question_types"):
            first.setdefault(line.get("task"), line["question_types"])
    stored, written = [], set()
    for line in lines:
        kept = {k: v for k, v in line.items() if k != "question_types"}
        if isinstance(kept.get("scores"), list):
            kept["scores"] = [round(v, ITEM_DECIMALS) if isinstance(v, float) else v for v in kept["scores"]]
        task, types = kept.get("task"), line.get("question_types")
        if task in first and task not in written:
            kept["question_types"] = first[task]
            written.add(task)
        elif types and types != first[task]:
            kept["question_types"] = types
        stored.append(kept)
    return stored


def write_item_scores(lines: list[dict], path: str | Path) -> Path:
    """Write one JSON line per run atomically, compacted (see compact_item_lines)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for line in compact_item_lines(lines):
            handle.write(json.dumps(line, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return path
