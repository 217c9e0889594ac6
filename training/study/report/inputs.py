"""What the report reads: the results table, `sweep.json`, the per-item scores and the VQA answer prior."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.catalog import MAIN_METRIC
from training.data.dataset import load_dataset
from training.errors import UserError
from training.metrics.vqa import vqa_scores
from training.paths import REPO_ROOT
from training.sweeps.table import PROTOCOL_COLUMNS  # older tables lack them and read as empty


@dataclass
class ItemScores:
    """`item_scores.jsonl`: per-test-item scores per run, and the VQA question type of each item."""

    scores: dict[str, np.ndarray]
    question_types: dict[str, list[str]]  # task -> one type per test item
    problems: list[str]


def load_item_scores(path: Path) -> ItemScores | None:
    """The item file, or None when there is none; malformed lines are skipped and named in `problems`."""
    if not path.is_file():
        return None
    scores, types, problems, lengths = {}, {}, [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            values = np.asarray(record["scores"], dtype=float)
            run, task = str(record["run"]), str(record["task"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            problems.append(f"line {number} is not a run's item scores (needs run, task and a list of scores)")
            continue
        if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
            problems.append(f"line {number} ({run}): scores must be a non-empty list of numbers")
            continue
        expected = lengths.setdefault(task, values.size)
        if values.size != expected:
            problems.append(f"{run}: {values.size} item scores where the first {task} run has {expected}")
            continue
        scores[run] = values
        if record.get("question_types") and task not in types:
            types[task] = [str(t) for t in record["question_types"]]
    return ItemScores(scores, types, problems)


@dataclass
class Prior:
    """The answer prior on VQA's test split: overall, per question type and per test item."""

    accuracy: float
    per_type: dict[str, float]
    items: np.ndarray
    source: str
    question_types: list[str] | None = None  # per test item, to check the item file lists the same items


def answer_prior_from_dataset(source: str) -> Prior:
    """Score the majority-training-answer-per-type baseline on the test split of the VQA dataset `source`."""
    path = source
    if source and not Path(source).exists() and (REPO_ROOT / source).exists():
        path = str(REPO_ROOT / source)  # the sweep records repository-relative sources
    dataset = load_dataset(path, "vqa")
    from training.run.tasks import answer_prior  # imports torch: only once there is a dataset to score

    prior = answer_prior(dataset)
    test = dataset.split("test")
    # answer_prior keeps the means only; the paired intervals need the prior's score on each test item.
    items = vqa_scores([prior["answers"].get(e.question_type, "") for e in test], [e.answers for e in test])
    return Prior(
        float(prior["accuracy"]),
        dict(prior.get("per_type") or {}),
        np.asarray(items["per_sample"]),
        source,
        [str(e.question_type) for e in test],
    )


def find_prior(frame, meta: dict) -> tuple[Prior | None, str]:
    """The answer prior for the table's VQA dataset, or None and the reason it could not be computed."""
    vqa = frame[frame.task == "vqa"]
    if vqa.empty:
        return None, "the table has no VQA runs"
    sources = set(vqa["dataset_source"].dropna().astype(str)) if "dataset_source" in vqa else set()
    source = ((meta.get("datasets") or {}).get("vqa") or {}).get("source")
    if source is None and len(sources) > 1:
        return None, f"the VQA runs name {len(sources)} datasets ({', '.join(sorted(sources))})"
    source = source or (sources.pop() if sources else None)
    if source is None:
        return None, "neither `sweep.json` nor the table names the VQA dataset (column `dataset_source`)"
    try:
        return answer_prior_from_dataset(source), ""
    except (UserError, OSError) as exc:  # a dataset moved or not at hand: the rest of the report still stands
        return None, f"the VQA dataset `{source}` could not be read ({exc})"


def load_table(path: str | Path):
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
        return None
    if frame.empty or not {"task", "method", "seed"} <= set(frame.columns):
        return None
    return with_protocol_columns(frame)


def read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def grid_methods(meta: dict) -> list[str] | None:
    """The methods the sweep's grid configures (its spec in `sweep.json`), or None when that is not known."""
    methods = (meta.get("spec") or {}).get("methods")
    return [str(m) for m in methods] if isinstance(methods, list) else None


def task_rows(frame, task: str):
    metric = MAIN_METRIC[task]
    if metric not in frame:
        return frame.iloc[0:0]
    return frame[(frame.task == task) & frame[metric].notna()]


def predates_protocol(frame) -> bool:
    """A table without validation scores: its runs chose nothing on validation data (load_table adds the column)."""
    return bool(frame["val_metric"].isna().all())


def with_protocol_columns(frame):
    """The table with every column the report reads (empty where an older table lacks it), numbers as numbers."""
    frame = frame.copy()
    for column in ("budget", "family", "towers", *PROTOCOL_COLUMNS):
        if column not in frame:
            frame[column] = None
    for column in ("data_fraction", "trainable_params", "train_s"):
        if column not in frame:
            frame[column] = np.nan
    for column in ("val_metric", "epochs_run", "train_loss", "best_step", "steps_run"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame
