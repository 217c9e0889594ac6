"""What the tabs and the API share: the job queue and its worker, the resident base models, the datasets and
the runs. One `Services` per app process.

The app never trains: `submit` queues a job that a worker process runs, and everything about a run is read
back from the job store and the run directory.
"""

from __future__ import annotations

import csv
import shutil
import socket
import statistics
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import pandas as pd
import torch
from PIL import Image
from transformers import AutoTokenizer, BlipForConditionalGeneration, PreTrainedTokenizerBase

from app.boundary import optional_int, optional_number, run_limits
from app.format import EMBEDDED_DATASET_NAMES as EMBEDDED_DATASETS
from app.people import person
from app.settings import Settings
from app.shipped import ID_PREFIX, load_shipped
from training.budget import parse_budget
from training.catalog import MAIN_METRIC, METHOD_LABELS, NO_BUDGET_METHODS
from training.compare import Column, Comparer, check_image
from training.data.archive import DatasetSummary, StoredDataset, install_zip, stored_datasets, summarize
from training.data.dataset import load_dataset, nested_fraction
from training.data.examples import Example, TaskDataset
from training.data.vocabulary import VocabularyCheck, vocabulary_check
from training.errors import UserError
from training.jobs import JobStore, Supervisor, job_status
from training.jobs.durable import DurableDatasets
from training.jobs.status import read_progress
from training.jobs.store import ACTIVE_STATES, Job, PersonalLimitReached
from training.methods.budget import Plan, count_base_params, plan_method, require_feasible
from training.model.base_model import default_model_path, load_base_config, meta_model
from training.run import runs
from training.run.config import TASKS, RunConfig, parse_fraction, planned_steps
from training.run.export import PEFT_FOLDER, exports_to_peft, run_readme, write_peft_adapter
from training.run.tasks import training_pairs
from training.study.choice import Choice, which_method
from training.sweeps.protocol import departures, study_settings

EMBEDDED = "embedded"  # the form value that stands for the app's default base model or dataset
RESIDENT_MODELS = 3  # base models kept loaded at once: the app's own and the latest others
THUMBNAIL_PX = 192
PREVIEW_IMAGES = 8  # pictures of a newly added dataset shown with their captions or questions
PACE_RUNS = 3  # latest finished runs whose pace gives the expected time of a new one
GRID_TABLE, REPORT = "runs.csv", "report.md"  # the sweep's table and its report, in the results folder
HUB_CHECK_S = 3  # how long to wait for the Hugging Face Hub to answer before saying it cannot be reached


def require_hub_model(repo_id: str) -> None:
    """Fail in seconds, with a sentence, for a Hub model this machine cannot get: not cached and the Hub offline
    or out of reach (transformers would retry for most of a minute first)."""
    try:
        cached = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # huggingface_hub's HFValidationError: not something a Hub id can be
        raise UserError(
            f"{repo_id[:100]!r} is neither a local folder nor a Hugging Face Hub id (like "
            "Salesforce/blip-image-captioning-base): check the spelling."
        ) from None
    if isinstance(cached, str):
        return
    unreachable = (
        f"Base model {repo_id!r} is not on this machine and the Hugging Face Hub cannot be reached: "
        "connect to the network, or give a local folder saved with save_pretrained."
    )
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise UserError(unreachable)
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=HUB_CHECK_S).close()
    except OSError:
        raise UserError(unreachable) from None


@dataclass
class Estimate:
    plan: Plan
    total_params: int
    base_model: str

    def to_dict(self) -> dict:
        return {**self.plan.to_dict(), "total_params": self.total_params, "base_model": self.base_model}


@dataclass
class TrainingSize:
    """How much a config trains: images or questions, (example, target) pairs, optimiser steps."""

    examples: int
    split_size: int
    pairs: int
    steps: int


@dataclass
class TestImage:
    """One picture of a task's test split, as the Compare gallery shows it."""

    index: int
    image_id: str
    thumbnail: str
    examples: list[Example]  # one per caption set, or one per question about this image

    @property
    def references(self) -> list[str]:
        return self.examples[0].captions

    @property
    def questions(self) -> list[str]:
        return [e.question for e in self.examples if e.question]

    def answers(self, question: str) -> list[str] | None:
        wanted = question.strip().lower()
        return next((e.answers for e in self.examples if e.question.strip().lower() == wanted), None)


@dataclass
class DatasetPreview:
    """A dataset just added from a zip: its counts, and a few training pictures with what they are labelled."""

    stored: StoredDataset
    summary: DatasetSummary
    examples: list[tuple[str, str]]  # (thumbnail path, caption or questions and answers)
    words: VocabularyCheck | None = None  # the caption or answer words the app's model cannot say


@dataclass
class RunRecord:
    """A job and what its run directory says: the Runs table, Compare's choices, Explore's own points."""

    id: str
    state: str
    reason: str
    submitter: str
    config: dict
    info: dict  # config.json of the run directory ({} before the trainer wrote it)
    metrics: dict  # eval.json's metrics ({} until evaluated)
    run_dir: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    has_weights: bool
    progress: dict = field(default_factory=dict)  # progress.json: the step reached, the phase
    validation: dict = field(default_factory=dict)  # eval.json's validation summary: best step, why it stopped
    shipped: str = ""  # for an adapter shipped with the app (read-only, not a job): its label in words

    @property
    def steps_done(self) -> int | None:
        """Optimiser steps completed: all of them for a finished run, where it stopped for the others."""
        return self.progress.get("step")

    @property
    def task(self) -> str:
        return self.config.get("task", "")

    @property
    def method(self) -> str:
        return self.config.get("method", "")

    @property
    def dataset_name(self) -> str:
        """The data it trained and was scored on, by name: an uploaded dataset's, else the task's embedded one."""
        source = self.config.get("dataset")
        return self.info.get("dataset_name") or (Path(source).name if source else EMBEDDED_DATASETS.get(self.task, "?"))

    @property
    def label(self) -> str:
        """The run in words: 'LoRA 18k · 10 % of scene-vqa · seed 0 · 06 Dec 21:50' (zero-shot: no budget, no
        share, no seed); a shipped adapter's own label."""
        if self.shipped:
            return self.shipped
        method = METHOD_LABELS.get(self.method, self.method)
        budget = "" if self.method in NO_BUDGET_METHODS else f" {self.config.get('budget')}"
        share, seed = self.config.get("data_fraction"), self.config.get("seed", 0)
        data = (
            self.dataset_name if self.method == "zero-shot" else f"{_share(share)} of {self.dataset_name} · seed {seed}"
        )
        return f"{method}{budget} · {data} · {time.strftime('%d %b %H:%M', time.localtime(self.created_at))}"

    @property
    def trainable_params(self) -> int | None:
        return self.info.get("trainable_params")

    @property
    def trainable_percent(self) -> float | None:
        return self.info.get("trainable_percent")

    @property
    def score(self) -> tuple[str, float] | None:
        name = MAIN_METRIC.get(self.task)
        value = self.metrics.get(name)
        return (name, value) if isinstance(value, int | float) else None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end (to now while running); None before it started."""
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    @property
    def comparable(self) -> bool:
        return self.state in ("finished", "cancelled", "interrupted") and self.has_weights

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(
            task=self.task,
            method=self.method,
            trainable_params=self.trainable_params,
            trainable_percent=self.trainable_percent,
            duration_s=self.duration_s,
            steps_done=self.steps_done,
        )
        return data


@dataclass
class Comparison:
    columns: list[Column]
    task: str
    question: str = ""
    image_id: str | None = None
    references: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    records: dict[str, RunRecord] = field(default_factory=dict)  # the compared runs by run directory
    base_score_source: str = ""  # where the zero-shot column's test score comes from, when not from a run


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(
            settings.data_home / "jobs.sqlite3", limits=settings.job_limits(), durable=settings.durable
        )
        self.supervisor = Supervisor(self.store)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._models: OrderedDict[str, Comparer] = OrderedDict()  # each holds one loaded copy of its base
        self._shapes: dict[tuple[str, str], BlipForConditionalGeneration] = {}  # meta device, from config.json
        self._datasets: dict[tuple[str, str | None], TaskDataset] = {}
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._galleries: dict[tuple[str, str | None], list[TestImage]] = {}
        self._job_estimates: dict[str, float | None] = {}  # job id -> job_estimate_s, for the queue's wait
        self._lock = threading.Lock()
        self._loading: dict[object, threading.Lock] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="vlpeft-app-"))
        # Datasets added from zips live on the local disk; with a durable location they are published there too
        # and come back after a restart on an empty disk (a Space), at the path their runs name.
        self.durable_datasets = DurableDatasets(settings.durable) if settings.durable else None
        if self.durable_datasets is not None:
            self.durable_datasets.restore(self.datasets_home)
        shipped, self.shipped_skipped = load_shipped(settings.shipped_dir, settings.base_model, self.scratch)
        self.shipped = {adapter.id: _shipped_record(adapter) for adapter in shipped}

    def start_worker(self) -> None:
        """Run queued jobs from this process (each in its own child process)."""
        self.supervisor.start_in_thread()

    def close(self) -> None:
        """Stop the worker thread (running jobs go on; the next worker adopts them) and drop scratch files."""
        self.supervisor.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- base models -----------------------------------------------------------------------------

    def base_model_source(self, text: str | None) -> str | None:
        """The base model a form value means: blank or `embedded` is the app's own, a path is made absolute."""
        text = (text or "").strip()
        if not text or text == EMBEDDED:
            return self.settings.base_model
        if self.settings.demo and text != self.settings.base_model:
            raise UserError("This public demo trains the embedded model only; run the app yourself for other models.")
        path = Path(text).expanduser()
        if path.exists():
            return str(path.resolve())
        require_hub_model(text)
        return text

    def _resident(self, source: str | None) -> Comparer:
        key = source or EMBEDDED
        resident = self._once(self._models, key, lambda: Comparer(source, device=self.device))
        with self._lock:
            self._models.move_to_end(key)
            while len(self._models) > RESIDENT_MODELS:  # the app's own model stays; the oldest other goes
                del self._models[next(k for k in self._models if k != (self.settings.base_model or EMBEDDED))]
        return resident

    def _once(self, cache: dict, key: object, load: Callable[[], object]) -> object:
        """cache[key], loaded once even when several requests ask at the same time; a slow load (a download)
        of one key does not hold up the others."""
        with self._lock:
            if key in cache:
                return cache[key]
            key_lock = self._loading.setdefault((id(cache), key), threading.Lock())  # caches may share keys
        with key_lock:
            with self._lock:
                if key in cache:
                    return cache[key]
            value = load()
            with self._lock:
                cache[key] = value
            return value

    def estimate(self, method: str, budget: str, towers: str = "both", base_model: str | None = None) -> Estimate:
        """The exact trainable count of a method under a budget, before anything is trained: counted on the meta
        device from the base model's config, so the web process reads no weights."""
        source = self.base_model_source(base_model)
        key = ("shape", source or EMBEDDED)
        shape = self._once(self._shapes, key, lambda: meta_model(load_base_config(source)))
        plan = plan_method(shape, method, parse_budget(budget), towers)
        return Estimate(plan, count_base_params(shape), source or "embedded default")

    # --- datasets --------------------------------------------------------------------------------

    def dataset_source(self, task: str, text: str | None) -> str | None:
        """The dataset a form value means: blank or `embedded` is the app's own, the name of a dataset added from a
        zip is its folder, a path is made absolute, anything else is a Hub id."""
        text = (text or "").strip()
        if not text or text == EMBEDDED:
            return self.settings.datasets.get(task)
        if self.settings.demo and text != self.settings.datasets.get(task):
            raise UserError("This public demo uses the embedded datasets only; run the app yourself for others.")
        stored = next((d for d in self.uploaded_datasets() if d.name == text), None)
        if stored is not None:
            if stored.task != task:
                raise UserError(
                    f"Dataset {text!r} is a {stored.task} dataset: pick it for that task, or another "
                    f"dataset for {task}."
                )
            return str(stored.path.resolve())
        path = Path(text).expanduser()
        return str(path.resolve()) if path.exists() else text

    @property
    def datasets_home(self) -> Path:
        """Where datasets added from zips are kept: `datasets/<name>` under the data home."""
        return self.settings.data_home / "datasets"

    def uploaded_datasets(self, task: str | None = None) -> list[StoredDataset]:
        return [d for d in stored_datasets(self.datasets_home) if task is None or d.task == task]

    def upload_dataset(self, archive: str | Path, name: str, task: str, replace: bool = False) -> DatasetPreview:
        """Check a zip in the folder format and add it as dataset `name` (see training.data.archive), then
        summarise it; it is then offered in Train and as Compare's image source."""
        if self.settings.demo:
            raise UserError("This public demo uses the embedded datasets only; run the app yourself to add yours.")
        if task not in ("caption", "vqa"):
            raise UserError(f"Pick the dataset's task: caption or vqa, not {task!r}.")
        if name.strip() == EMBEDDED:
            raise UserError(f"{EMBEDDED!r} stands for the app's own dataset: choose another name.")
        in_use = self._live_jobs_using(str((self.datasets_home / name.strip()).resolve()))
        if replace and in_use:
            raise UserError(
                f"Dataset {name.strip()!r} is used by the run {self.run(in_use[0]).label}, queued or running: "
                "replace it once that run has ended, or add this zip under another name."
            )
        stored = install_zip(archive, name, task, self.datasets_home, replace, self.settings.archive_limits)
        if self.durable_datasets is not None:
            try:
                self.durable_datasets.publish(stored.path)
            except OSError as exc:
                raise UserError(
                    f"Dataset {stored.name!r} is added, but saving it to the durable storage failed ({exc}): it "
                    "works until the app restarts. Upload it again with Replace ticked to save it."
                ) from None
        source = str(stored.path.resolve())
        self._forget_dataset(source)  # a replaced dataset is read afresh
        dataset = self.dataset(task, source)
        folder = self.scratch / "datasets" / f"{name}-{time.time_ns()}"
        folder.mkdir(parents=True)
        examples = []
        for index, group in enumerate(_by_image(dataset.split("train"), PREVIEW_IMAGES).values()):
            thumbnail = _thumbnail(group[0].image.load(), folder / f"{index:03d}.png")
            if task == "caption":
                label = group[0].captions[0]
            else:
                label = " · ".join(f"{e.question} → {_majority(e.answers)}" for e in group[:3])
            examples.append((thumbnail, label))
        every = [e for split in ("train", "validation", "test") for e in dataset.split(split)]
        words = vocabulary_check(every, self.tokenizer(None))
        return DatasetPreview(stored, summarize(dataset), examples, words)

    def tokenizer(self, base_model: str | None) -> PreTrainedTokenizerBase:
        """A base model's tokenizer (the app's own for None), loaded once: for what its model can say."""
        source = self.base_model_source(base_model) or default_model_path()
        return self._once(self._tokenizers, source, lambda: AutoTokenizer.from_pretrained(source))

    def remove_dataset(self, name: str) -> StoredDataset:
        """Delete a dataset added from a zip, here and on the durable location. Runs trained on it keep their
        results and weights; a queued or running job that uses it keeps it."""
        if self.settings.demo:
            raise UserError("This public demo has no uploaded datasets to remove.")
        stored = next((d for d in self.uploaded_datasets() if d.name == (name or "").strip()), None)
        if stored is None:
            raise UserError(f"There is no uploaded dataset named {str(name)[:60]!r}: pick one from the list.")
        source = str(stored.path.resolve())
        in_use = self._live_jobs_using(source)
        if in_use:
            raise UserError(
                f"Dataset {stored.name!r} is used by the run {self.run(in_use[0]).label}, queued or running: "
                "remove it once that run has ended."
            )
        gone = stored.path.with_name(f".removing-{stored.name}-{time.time_ns()}")
        stored.path.rename(gone)  # out of the list at once; the files go next
        shutil.rmtree(gone, ignore_errors=True)
        if self.durable_datasets is not None:
            self.durable_datasets.remove(stored.name)
        self._forget_dataset(source)
        return stored

    def _live_jobs_using(self, source: str) -> list[str]:
        """The queued or running jobs that train on the dataset folder `source`."""
        return [job.id for job in self.store.list_jobs(ACTIVE_STATES) if job.config.get("dataset") == source]

    def _forget_dataset(self, source: str) -> None:
        """Drop the loaded copies (datasets, galleries) of the dataset folder `source`."""
        with self._lock:
            for cache in (self._datasets, self._galleries):
                for key in [key for key in cache if key[1] == source]:
                    del cache[key]

    def dataset(self, task: str, source: str | None = None) -> TaskDataset:
        return self._once(self._datasets, (task, source), lambda: load_dataset(source, task))

    def training_size(self, config: RunConfig) -> TrainingSize:
        """What the trainer will do with this config: the same subset and step count (`training.run.trainer.train`)."""
        train = self.dataset(config.task, config.dataset).split("train")
        subset = [train[i] for i in nested_fraction(len(train), config.data_fraction, config.seed)]
        pairs = len(training_pairs(config.task, subset))
        return TrainingSize(len(subset), len(train), pairs, planned_steps(config, pairs))

    def expected_time(self, config: RunConfig, steps: int) -> tuple[float, str] | None:
        """Seconds the job should take, start to scores, and where the figure comes from: the pace of the latest
        finished runs of the same task, method and towers on this machine, else the benchmark (embedded model
        only); None when neither knows."""
        paces = []
        for record in self.runs(config.task):
            if (record.state, record.method, record.config.get("towers")) != ("finished", config.method, config.towers):
                continue
            rows = [r for r in runs.read_jsonl(Path(record.run_dir) / runs.METRICS) if "elapsed_s" in r]
            eval_s = record.metrics.get("eval_s")
            if len(rows) < 2 or rows[-1]["step"] <= rows[0]["step"] or not isinstance(eval_s, int | float):
                continue
            per_step = (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (rows[-1]["step"] - rows[0]["step"])
            batch = config.batch_size / (record.config.get("batch_size") or config.batch_size)
            paces.append(rows[0]["elapsed_s"] + per_step * batch * steps + eval_s)  # start-up, steps, scoring
            if len(paces) == PACE_RUNS:
                break
        if paces:
            runs_word = "run" if len(paces) == 1 else "runs"
            return sorted(paces)[len(paces) // 2], f"from {len(paces)} finished {runs_word} like it on this machine"
        bench = runs.read_json(self.settings.results_dir / "bench.json") if config.base_model is None else None
        row = next(
            (
                r
                for r in (bench or {}).get("train", [])
                if (r.get("method"), r.get("towers")) == (config.method, config.towers)
            ),
            None,
        )
        if row is None:
            return None
        seconds = row["step_s"] * config.batch_size / row["batch_size"] * steps + bench.get("eval", {}).get("eval_s", 0)
        return seconds, "from the benchmark on an idle 2-core CPU; a busy machine is slower"

    def reference_time(self, config: RunConfig) -> tuple[float, float, float, int] | None:
        """Seconds a run under the study's protocol should take, from the reference grid's runs of the same task,
        method and share of data (its budget's where the grid has it): (median, shortest, longest, runs). Each
        grid run's pace per step is stretched to the config's step floor, since early stopping ends most runs
        before their cap. None when the config leaves the protocol or the grid has no such run."""
        if departures(config):
            return None
        path = self.settings.results_dir / "runs.csv"
        if not path.is_file():
            return None
        with path.open(newline="") as handle:
            rows = [
                r
                for r in csv.DictReader(handle)
                if (r.get("task"), r.get("method")) == (config.task, config.method)
                and _same_share(r.get("data_fraction"), config.data_fraction, config.method)
                and r.get("wall_s")
            ]
        same_budget = [r for r in rows if r.get("budget") == str(config.budget)]
        rows = same_budget or rows
        seconds = []
        for row in rows:
            wall, train_s, steps = float(row["wall_s"]), float(row.get("train_s") or 0), int(row.get("steps_run") or 0)
            floor = max(steps, config.min_steps or 0)
            seconds.append(wall - train_s + (train_s / steps * floor if steps else 0.0))
        if not seconds:
            return None
        return statistics.median(seconds), min(seconds), max(seconds), len(seconds)

    def test_images(self, task: str, dataset: str | None = None) -> list[TestImage]:
        """The first pictures of a test split (the app's dataset for the task, or one added from a zip, by name),
        with crisp upscaled thumbnails."""
        if dataset not in (None, "", EMBEDDED) and dataset not in {d.name for d in self.uploaded_datasets(task)}:
            raise UserError(
                f"There is no {task} dataset named {str(dataset)[:60]!r} among the uploaded ones: pick "
                "the app's test images or a dataset you uploaded."
            )
        source = self.dataset_source(task, dataset)
        return self._once(self._galleries, (task, source), lambda: self._make_gallery(task, source))

    def _make_gallery(self, task: str, source: str | None) -> list[TestImage]:
        grouped = _by_image(self.dataset(task, source).split("test"), self.settings.gallery_size)
        folder = self.scratch / "gallery" / f"{task}-{len(self._galleries)}-{time.time_ns()}"
        folder.mkdir(parents=True, exist_ok=True)
        return [
            TestImage(index, image_id, _thumbnail(group[0].image.load(), folder / f"{index:03d}.png"), group)
            for index, (image_id, group) in enumerate(grouped.items())
        ]

    # --- jobs ------------------------------------------------------------------------------------

    def run_config(
        self,
        *,
        task: str,
        method: str,
        budget: str,
        data_fraction: float | str | None,
        seed: float | str | None = 0,
        epochs: float | str | None = None,
        max_steps: float | str | None = None,
        lr: float | str | None = None,
        batch_size: float | str | None = 32,
        towers: str | None = None,
        base_model: str | None = None,
        dataset: str | None = None,
        eval_limit: float | str | None = None,
        min_steps: float | str | None = None,
        patience: float | str | None = None,
    ) -> RunConfig:
        """The RunConfig the Train form (or an API call) describes, by field name; UserError with one sentence on
        a bad field.

        What is left out follows the study's protocol (sweeps/paper.yaml: towers, epoch cap, step floor,
        patience), so a run at a grid point lands on the grid's curve. Steps and test examples of 0 (or empty)
        mean no limit, a step floor of 0 none; a learning rate of 0 (or empty) the trainer's choice: the rate
        tuned for the task and method (results/lr.csv), else the method's own."""
        if data_fraction is None or str(data_fraction).strip() == "":
            raise UserError("Give the share of the training data to use, between 0 and 1 (e.g. 0.25 for a quarter).")
        epochs, lr = optional_number(epochs), optional_number(lr)
        lr = None if lr == 0 else lr  # the browser sends an empty number field as 0
        if epochs is not None and epochs <= 0:
            raise UserError(f"Epochs must be above 0 (e.g. 1), not {epochs:g}.")
        if lr is not None and not 0 < lr < 1:
            raise UserError(f"A learning rate of {lr:g} is out of range: use a small positive value such as 0.001.")
        batch, max_steps, eval_limit = run_limits(batch_size, max_steps, eval_limit)
        seed = optional_int(seed, "The seed") or 0
        if seed < 0:
            raise UserError(f"The seed must be 0 or more, not {seed}.")
        study = study_settings(task) if task in TASKS else {}
        min_steps, patience = optional_int(min_steps, "Minimum steps"), optional_int(patience, "Patience")
        if (min_steps or 0) < 0 or (patience or 0) < 0:
            raise UserError("Minimum steps and patience cannot be negative (0: no floor; 0 patience: no validation).")
        config = RunConfig(
            task=task,
            method=method,
            budget=str(budget or "").strip(),
            data_fraction=parse_fraction(data_fraction),
            seed=seed,
            epochs=epochs if epochs is not None else study.get("epochs"),
            max_steps=max_steps,
            min_steps=study.get("min_steps") if min_steps is None else (min_steps or None),
            patience=study.get("patience", RunConfig.patience) if patience is None else patience,
            lr=lr,
            batch_size=batch,
            towers=towers or study.get("towers", "text"),
            base_model=self.base_model_source(base_model),
            dataset=self.dataset_source(task, dataset),
            eval_limit=eval_limit,
        )
        return config.validate()

    def prepare(self, config: RunConfig) -> tuple[RunConfig, Estimate, TrainingSize, list[str]]:
        """Validate a config against the model and data (fast failure instead of a failed job) and apply the
        demo caps; returns the config to queue, its estimate and size, and notes for the user."""
        config.validate()
        estimate = self.estimate(config.method, config.budget, config.towers, config.base_model)
        require_feasible(estimate.plan)
        size = self.training_size(config)
        notes = []
        if self.settings.demo and size.steps > self.settings.demo_max_steps:
            config.max_steps = self.settings.demo_max_steps
            notes.append(
                f"The public demo caps runs at {self.settings.demo_max_steps} steps "
                f"(this one would take {size.steps:,})."
            )
            size = self.training_size(config)
        return config, estimate, size, notes

    def submit(self, config: RunConfig, submitter: str) -> str:
        try:
            return self.store.submit(config, submitter=submitter)
        except PersonalLimitReached as exc:  # said to the person it is about, without their internal id
            raise UserError("You " + exc.sentence("already have")) from None

    def status(self, job_id: str, log_lines: int = 40) -> dict:
        """job_status plus the test metrics and the loss curve (a list of metrics.jsonl rows)."""
        status = job_status(self.store, job_id, log_lines=log_lines)
        run_dir = Path(status["run_dir"])
        evaluation = runs.read_json(run_dir / runs.EVAL) or {}
        status["metrics"] = evaluation.get("metrics", {})
        status["curve"] = [row for row in runs.read_jsonl(run_dir / runs.METRICS) if "loss" in row]
        status["validation"] = runs.read_jsonl(run_dir / runs.VALIDATION)
        status["info"] = runs.read_json(run_dir / runs.CONFIG) or {}
        if status["state"] == "queued":
            status["wait_s"] = self.wait_s(job_id)
        return status

    def job_estimate_s(self, config: RunConfig) -> float | None:
        """Seconds a job should take, start to scores: the reference grid's runs like it for a run under the study's
        protocol, else finished runs like it here or the benchmark, to its cap; None when nothing knows."""
        reference = self.reference_time(config)  # early stopping: the grid's runs like it, not the cap
        if reference is not None:
            return reference[0]
        steps = self.training_size(config).steps
        if self.settings.demo:
            steps = min(steps, self.settings.demo_max_steps)
        expected = self.expected_time(config, steps)
        return expected[0] if expected is not None else None

    def _estimate_or_none(self, job: Job) -> float | None:
        try:
            return self.job_estimate_s(job.run_config)
        except UserError:  # its data can no longer be read (the job will fail and say so): no estimate, no error here
            return None

    def wait_s(self, job_id: str) -> float | None:
        """Seconds until a queued job starts: each running job's time left (its countdown, else its estimate less
        the time it has run), then the estimates of the jobs queued ahead of it, each taking the first free worker
        slot; None when one of them has no estimate. Each job's estimate is made once (a poll reads them all)."""
        now = time.time()

        def estimate_s(job: Job) -> float | None:
            return self._once(self._job_estimates, job.id, lambda: self._estimate_or_none(job))

        slots = []
        for job in self.store.list_jobs(("running",)):
            left = job_status(self.store, job.id, log_lines=0).get("eta_s")
            if left is None:
                estimate = estimate_s(job)
                if estimate is None:
                    return None
                left = max(0.0, estimate - (now - (job.started_at or now)))
            slots.append(left)
        slots += [0.0] * max(0, self.store.limits.max_concurrent - len(slots))
        for job in self.store.list_jobs(("queued",)):
            if job.id == job_id:
                return min(slots)
            estimate = estimate_s(job)
            if estimate is None:
                return None
            slots.remove(first := min(slots))
            slots.append(first + estimate)
        return None  # no longer queued

    def _own(self, job_id: str, submitter: str, action: str) -> None:
        job = self.store.get(job_id)
        if job.submitter != submitter:
            raise UserError(
                f"The run {self.run(job_id).label} was started by {person(job.submitter)}: only they can {action} it."
            )

    def cancel(self, job_id: str, submitter: str) -> dict:
        """Cancel a job of this submitter's (nobody cancels another person's job)."""
        self._own(job_id, submitter, "cancel")
        self.store.cancel(job_id, by=submitter)
        return self.status(job_id)

    def live_jobs(self, submitter: str) -> list[str]:
        return [job.id for job in self.store.list_jobs(ACTIVE_STATES, submitter)]

    # --- runs ------------------------------------------------------------------------------------

    def runs(self, task: str | None = None) -> list[RunRecord]:
        """Every job, newest first, with what its run directory holds."""
        records = []
        for job in reversed(self.store.list_jobs()):
            if task and job.config.get("task") != task:
                continue
            run_dir = Path(job.run_dir)
            evaluation = runs.read_json(run_dir / runs.EVAL) or {}
            records.append(
                RunRecord(
                    id=job.id,
                    state=job.state,
                    reason=job.reason,
                    submitter=job.submitter,
                    config=job.config,
                    info=runs.read_json(run_dir / runs.CONFIG) or {},
                    metrics=evaluation.get("metrics", {}),
                    run_dir=job.run_dir,
                    created_at=job.created_at,
                    started_at=job.started_at,
                    finished_at=job.finished_at,
                    has_weights=(run_dir / runs.WEIGHTS).is_file(),
                    progress=read_progress(run_dir) or {},
                    validation=evaluation.get("validation") or {},
                )
            )
        return records

    def shipped_runs(self, task: str | None = None) -> list[RunRecord]:
        """The adapters shipped with the app that fit its base model (app/shipped.py), read-only: Compare offers
        them beside the runs; Runs does not list them (they are not jobs, and cannot be deleted)."""
        return [record for record in self.shipped.values() if task in (None, record.task)]

    def run(self, job_id: str) -> RunRecord:
        if job_id.startswith(ID_PREFIX):
            if job_id not in self.shipped:
                raise UserError(
                    f"There is no shipped adapter {job_id!r} for this app's base model: /list_runs lists them."
                )
            return self.shipped[job_id]
        self.store.get(job_id)  # UserError for an unknown id
        return next(r for r in self.runs() if r.id == job_id)

    def delete(self, job_id: str, submitter: str) -> None:
        """Delete an ended run: in a public demo only its own submitter may."""
        if job_id.startswith(ID_PREFIX):
            raise UserError("An adapter shipped with the app is read-only: it cannot be deleted.")
        if self.settings.demo:
            self._own(job_id, submitter, "delete")
        self.store.delete(job_id)

    def zip_run(self, job_id: str) -> Path:
        """A zip of the run for download: its weights, config, log, curve, evaluation and predictions, a README
        on what the adapter is and how to load it, and for LoRA, DoRA and IA3 the adapter in peft's format."""
        record = self.run(job_id)
        run_dir = Path(record.run_dir)
        if not record.has_weights:
            raise UserError(f"The run {record.label} has no trained weights yet ({record.state}): nothing to download.")
        folder = self.scratch / "downloads"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"vlpeft-{job_id}.zip"
        partial = folder / f".{target.name}.{threading.get_ident()}"  # two visitors may ask at once
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in (runs.WEIGHTS, runs.CONFIG, runs.LOG, runs.METRICS, runs.EVAL, runs.PREDICTIONS):
                if (run_dir / name).is_file():
                    stored = zipfile.ZIP_STORED if name == runs.WEIGHTS else zipfile.ZIP_DEFLATED  # floats: no gain
                    archive.write(run_dir / name, arcname=f"{job_id}/{name}", compress_type=stored)
            archive.writestr(f"{job_id}/README.md", run_readme(run_dir, job_id, record.state))
            if exports_to_peft(record.info):
                exported = write_peft_adapter(run_dir, partial.with_suffix(".peft"))
                for path in sorted(exported.iterdir()):
                    archive.write(path, arcname=f"{job_id}/{PEFT_FOLDER}/{path.name}")
                shutil.rmtree(exported)
        partial.replace(target)
        return target

    # --- compare ---------------------------------------------------------------------------------

    def compare(
        self,
        task: str,
        run_ids: list[str],
        question: str = "",
        test_index: int | None = None,
        image_path: str | None = None,
        dataset: str | None = None,
    ) -> Comparison:
        """The zero-shot base and each chosen run on one image: a test picture (scored) of the app's dataset or of
        `dataset` (one added from a zip), or an upload."""
        chosen = [self.run(run_id) for run_id in run_ids]
        for record in chosen:
            if record.task != task:
                raise UserError(
                    f"The run {record.label} was trained for {record.task}, not {task}: pick runs of one task."
                )
            if not record.comparable:
                raise UserError(f"The run {record.label} is {record.state} and has no trained weights to compare.")
        sources = {record.config.get("base_model") for record in chosen} or {self.settings.base_model}
        if len(sources) > 1:
            raise UserError("The chosen runs were trained on different base models: compare one base model at a time.")
        comparer = self._resident(sources.pop())
        comparison = Comparison(
            [], task, question=(question or "").strip(), records={record.run_dir: record for record in chosen}
        )
        if test_index is not None:
            gallery = self.test_images(task, dataset)
            if not 0 <= test_index < len(gallery):
                raise UserError(f"There is no test image #{test_index}: pick one of the {len(gallery)} in the gallery.")
            picture = gallery[test_index]
            image = picture.examples[0].image.load()
            comparison.image_id = picture.image_id
            if task == "caption":
                comparison.references = picture.references
            else:
                comparison.answers = picture.answers(comparison.question) or []
        else:
            image = check_image(image_path)
        comparison.columns = comparer.compare(
            image,
            task,
            [record.run_dir for record in chosen],
            question=comparison.question,
            references=comparison.references or None,
            answers=comparison.answers or None,
            max_new_tokens=RunConfig().max_new_tokens,  # as long as the test-set evaluation decodes
        )
        return comparison

    # --- the study's answers ---------------------------------------------------------------------

    def which_method(self, task: str, data: str, params: str) -> Choice:
        """'Which method for me?': the sweep table's methods ranked at a data size and a parameter budget."""
        path = self.settings.results_dir / GRID_TABLE
        try:
            table = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"There are no grid results to answer from ({path.name}: {exc}): run the sweep "
                "(python -m training sweep --config sweeps/paper.yaml) first."
            ) from None
        return which_method(table, task, data, params)

    def verdicts(self) -> dict:
        """The sweep report's verdict per finding (finding, answer, answer without the smallest data fraction)
        and the report's text without its figures."""
        path = self.settings.results_dir / REPORT
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise UserError(
                f"There is no report yet: {path.name} is written by `python -m training report` once a sweep has run."
            ) from None
        findings = []
        for line in text.splitlines():
            cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 3 and cells[0][:2].rstrip(".").isdigit():
                findings.append({"finding": cells[0], "answer": cells[1], "without_smallest_fraction": cells[2]})
        report = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("!["))
        return {"findings": findings, "report": report}

    def curves(self, job_id: str) -> tuple[list[dict], list[dict]]:
        """A run's training steps (metrics.jsonl) and validations (validation.jsonl), as logged so far."""
        run_dir = Path(self.run(job_id).run_dir)
        return runs.read_jsonl(run_dir / runs.METRICS), runs.read_jsonl(run_dir / runs.VALIDATION)


def _shipped_record(adapter) -> RunRecord:
    """A shipped adapter as a finished run of no one, for Compare."""
    run_dir = adapter.run_dir
    return RunRecord(
        id=adapter.id,
        state="finished",
        reason="",
        submitter="",
        config=(runs.read_json(run_dir / runs.CONFIG) or {}).get("config", {}),
        info=runs.read_json(run_dir / runs.CONFIG) or {},
        metrics=(adapter.record.get("test") or {}).get("metrics") or {},
        run_dir=str(run_dir),
        created_at=(run_dir / runs.CONFIG).stat().st_mtime,
        started_at=None,
        finished_at=None,
        has_weights=True,
        validation=adapter.record.get("validation") or {},
        shipped=adapter.label,
    )


def _by_image(examples: list[Example], limit: int) -> dict[str, list[Example]]:
    """The examples of the first `limit` pictures, grouped by picture (a caption set, or its questions)."""
    grouped: dict[str, list[Example]] = {}
    for example in examples:
        if example.image_id in grouped or len(grouped) < limit:
            grouped.setdefault(example.image_id, []).append(example)
    return grouped


def _thumbnail(image: Image.Image, path: Path) -> str:
    """A small picture scaled up by a whole factor (crisp pixels), or a large one scaled down."""
    scale = max(1, THUMBNAIL_PX // max(image.size))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    image.thumbnail((THUMBNAIL_PX * 2, THUMBNAIL_PX * 2))
    image.save(path)
    return str(path)


def _share(fraction: float | None) -> str:
    """0.1 -> '10 %'."""
    return "?" if fraction is None else f"{100 * float(fraction):.3g} %"


def _same_share(text: str | None, fraction: float, method: str) -> bool:
    """A grid row at this share of the data (zero-shot trains on none: any of its rows)."""
    if method == "zero-shot":
        return True
    try:
        return abs(float(text or "nan") - fraction) < 1e-9
    except ValueError:
        return False


def _majority(answers: list[str]) -> str:
    return max(answers, key=answers.count) if answers else ""
