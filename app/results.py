"""The Explore tab's data: the sweep's `results/runs.csv` and the user's own finished runs, as one table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from app.format import METHOD_LABELS
from app.services import MAIN_METRIC, RunRecord
from training.catalog import NO_BUDGET_METHODS
from training.errors import UserError
from training.paths import REPO_ROOT
from training.sweeps.protocol import departures

RESULTS_FILE = "runs.csv"
REPORT_FILE = "report.md"
SETTING_COLUMNS = [
    "task",
    "method",
    "budget",
    "trainable_params",
    "trainable_percent",
    "data_fraction",
    "train_examples",
    "seed",
    "train_s",
    "peak_mem_mb",
    "base_model",
    "dataset",
]
CAPTION_METRICS = ["CIDEr-D", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L"]
SWEEP, MINE, SWEPT = "sweep", "your run", "your sweep"  # SWEPT: runs of a sweep queued from the page
ALL = "all (averaged)"
TABLE_HEADERS = {
    "source": "from",
    "method": "method",
    "budget": "budget",
    "trainable_params": "trained parameters",
    "trainable_percent": "trained % of the model",
    "data_fraction": "share of data",
    "seed": "seed",
    "run_id": "run",
}


def load_sweep(results_dir: Path) -> tuple[pd.DataFrame, str]:
    """The sweep's rows (source = 'sweep') and a note for the page; an empty table when there are none yet."""
    path = Path(results_dir) / RESULTS_FILE
    if not path.is_file():
        return _empty(), (
            f"No sweep results yet: `{path.name}` appears in `{_shown(path.parent)}` once a sweep has "
            "run; until then the figures show the runs you finish in the Train tab."
        )
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        return _empty(), f"`{_shown(path)}` could not be read ({exc}); the figures show your own finished runs only."
    missing = {"task", "method", "data_fraction", "trainable_params"} - set(frame.columns)
    if missing:
        return _empty(), f"`{_shown(path)}` lacks the columns {', '.join(sorted(missing))}; showing your own runs only."
    frame["source"], frame["run_id"] = SWEEP, ""
    return frame, f"{len(frame):,} sweep runs from `{_shown(path)}`."


def _shown(path: Path) -> str:
    """A path for the page: relative to the repository when it is inside it (no machine-specific prefix)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def load_verdict(results_dir: Path) -> str:
    """The sweep report's text (`python -m training report`) for the page, without its figure images."""
    path = Path(results_dir) / REPORT_FILE
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return (
            f"No verdict yet: `{path.name}` is written by `python -m training report` once a sweep has run "
            f"(it goes to `{_shown(path.parent)}`)."
        )
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("![")]
    text = "\n".join(kept).replace("# Do the paper's findings reproduce?", "", 1).strip()
    plain, rest = _section(text, "## In plain words")
    if not plain:  # a report written before the plain sentences
        return text
    return (
        f"{plain}\n\n<details><summary>The statistics behind these answers (decision rules, tests, every unit)"
        f"</summary>\n\n{rest}\n\n</details>"
    )


def _section(text: str, heading: str) -> tuple[str, str]:
    """(the section under `heading`, up to the next heading of its level, with its heading; everything else)."""
    start = text.find(heading + "\n")
    if start < 0:
        return "", text
    end = text.find("\n## ", start + len(heading))
    end = len(text) if end < 0 else end
    return text[start:end].strip(), (text[:start] + text[end:]).strip()


def user_frame(records: list[RunRecord], source: str = MINE) -> pd.DataFrame:
    """The user's finished, evaluated runs in the sweep's columns (`source`: MINE, or SWEPT for a page sweep's)."""
    rows = []
    for record in records:
        if record.state != "finished" or not record.metrics:
            continue
        config, info = record.config, record.info
        row = {
            "task": record.task,
            "method": record.method,
            "budget": config.get("budget"),
            "trainable_params": record.trainable_params,
            "trainable_percent": record.trainable_percent,
            "data_fraction": config.get("data_fraction"),
            "train_examples": info.get("train_examples"),
            "seed": config.get("seed"),
            "train_s": None,
            "peak_mem_mb": None,
            "base_model": info.get("base_model"),
            "dataset": info.get("dataset_name"),
            "source": source,
            "run_id": record.id,
            "not_comparable": leaves_protocol(config),
            "label": record.label,
        }
        for name, value in record.metrics.items():
            if isinstance(value, int | float) and (name in CAPTION_METRICS or name == "accuracy"):
                row[name] = value
        for name, value in (record.metrics.get("per_type") or {}).items():
            row[f"accuracy_{name}"] = value
        rows.append(row)
    return pd.DataFrame(rows) if rows else _empty()


def leaves_protocol(config: dict) -> str:
    """Why a run cannot be set beside the reference curves ('' when it can); its dataset is not a reason here:
    Explore draws a run only among the runs on its own dataset."""
    try:
        return "; ".join(departures(config, with_dataset=False))
    except (UserError, TypeError):
        return "its settings could not be read"


def reference_datasets(sweep: pd.DataFrame, task: str) -> set[str]:
    """The datasets the reference grid ran a task on (empty when its table does not say)."""
    if sweep.empty or "dataset" not in sweep.columns:
        return set()
    return {str(name) for name in sweep[sweep["task"] == task]["dataset"].dropna()}


def on_dataset(frame: pd.DataFrame, dataset: str, reference: set[str]) -> pd.DataFrame:
    """The rows of runs on `dataset`; a row that names none is the reference grid's data."""
    if frame.empty or "dataset" not in frame.columns:
        return frame if dataset in reference else frame.iloc[0:0]
    names = frame["dataset"].astype("string")
    return frame[(names == dataset).fillna(False) | (names.isna() & (dataset in reference))]


def dataset_choices(frame: pd.DataFrame, reference: set[str]) -> list[tuple[str, str]]:
    """The datasets of a task's rows: the reference grid's first, then each other one its runs used."""
    if frame.empty:
        return []
    named = frame["dataset"].dropna() if "dataset" in frame.columns else pd.Series(dtype=str)
    names = [str(n) for n in named.unique()]
    if len(named) < len(frame):  # rows that name no dataset are the reference grid's
        names += sorted(reference - set(names))
    ordered = sorted(names, key=lambda n: (n not in reference, n))
    return [(f"{n} (the reference grid's)" if n in reference else n, n) for n in ordered]


def combined(sweep: pd.DataFrame, mine: pd.DataFrame, task: str) -> pd.DataFrame:
    frames = [f[f["task"] == task] for f in (sweep, mine) if not f.empty]
    if not frames:
        return _empty()
    return pd.concat(frames, ignore_index=True)


def metric_names(frame: pd.DataFrame, task: str) -> list[str]:
    """The task's metric columns present in the table, the main one first."""
    if task == "caption":
        names = [name for name in CAPTION_METRICS if name in frame.columns]
    else:
        names = ["accuracy"] + sorted(c for c in frame.columns if c.startswith("accuracy_"))
        names = [name for name in names if name in frame.columns]
    main = MAIN_METRIC[task]
    return [main] + [n for n in names if n != main] if names else [main]


def held_values(frame: pd.DataFrame, column: str) -> tuple[list[str], str]:
    """Choices for the value held fixed in a figure (a budget, a data fraction) and the most common one."""
    trained = frame[~frame["method"].isin(NO_BUDGET_METHODS)] if not frame.empty else frame
    if trained.empty or column not in trained.columns:
        return [ALL], ALL
    values = trained[column].dropna().astype(str)
    if values.empty:
        return [ALL], ALL
    counts = values.value_counts()
    return [ALL, *sorted(counts.index, key=_sort_key)], str(counts.index[0])


def aggregate(frame: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """Mean, standard deviation (over seeds and anything else not on the x axis) and count per method and x."""
    if frame.empty or metric not in frame.columns:
        return pd.DataFrame(columns=["method", x, "mean", "std", "n"])
    data = frame.dropna(subset=[metric])
    grouped = data.groupby(["method", x], dropna=False)[metric]
    table = grouped.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    table["std"] = table["std"].fillna(0.0)
    return table.sort_values(["method", x])


def table_view(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The rows a person reads: who, what, how big, how well."""
    columns = [
        "source",
        "method",
        "budget",
        "trainable_params",
        "trainable_percent",
        "data_fraction",
        "seed",
        *[m for m in metrics if m in frame.columns],
        "run_id",
    ]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    view = frame[[c for c in columns if c in frame.columns]].copy()
    for column in ["trainable_percent", *metrics]:
        if column in view.columns:
            view[column] = pd.to_numeric(view[column], errors="coerce").round(3)
    view = view.sort_values(["method", "data_fraction", "trainable_params"], na_position="first")
    view["method"] = view["method"].map(lambda name: METHOD_LABELS.get(name, name))
    return view.rename(columns={**TABLE_HEADERS, **{m: metric_label(m) for m in metrics}})


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=[*SETTING_COLUMNS, "source", "run_id"])


def _sort_key(value: str) -> tuple[int, float, str]:
    """Budgets and fractions by size: counts (570, 1.8k, 18k, 180k, 1.5M) first, then shares of the model (0.5%)."""
    text = value.strip().replace(",", "")
    scale, share = 1.0, text.endswith("%")
    if share:
        text = text[:-1]
    elif text[-1:] in ("k", "K", "M"):
        scale, text = (1e3 if text[-1] in "kK" else 1e6), text[:-1]
    try:
        return (1 if share else 0), float(text) * scale, value
    except ValueError:
        return 2, float("inf"), value


def metric_label(name: str) -> str:
    """A score's column name as a person reads it: 'accuracy_attribute_at_position' -> 'Accuracy: attribute at
    position'; 'CIDEr-D' stays."""
    if name.startswith("accuracy_"):
        return "Accuracy: " + name.removeprefix("accuracy_").replace("_", " ")
    return name[:1].upper() + name[1:]
