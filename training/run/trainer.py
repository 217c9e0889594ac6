"""One fine-tune, read top to bottom in `train`: load, attach the method, loop, save, evaluate.

Used the same way by the CLI, the job worker (which runs the CLI in its own process) and the sweeps.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import random
import re
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import peft
import torch
import transformers
from safetensors.torch import load_file
from tqdm import tqdm

from training.budget import parse_budget
from training.data.dataset import load_dataset, nested_fraction, subset_hash
from training.data.examples import Example, TaskDataset
from training.errors import UserError
from training.methods import METHODS
from training.methods.budget import Plan, count_base_params, plan_method, require_feasible
from training.methods.vlmodel import VLModel
from training.model.base_model import BaseModel, load_base_model
from training.model.pixels import PixelCache
from training.run import resume as saved_state
from training.run import runs
from training.run.config import RunConfig, planned_steps, step_limit, val_every
from training.run.evaluation import evaluate, image_features
from training.run.rates import resolve_lr
from training.run.resident import Resident
from training.run.runs import RunDirectory, StepRecord, ValidationRecord
from training.run.tasks import Encoder, training_pairs
from training.run.tracking import Tracker, eval_scalars, open_tracker, training_scalars
from training.run.validation import Validator

RUN_ADAPTER = "run"
LOG_EVERY = 5
EXIT_STOPPED = runs.EXIT_STOPPED


@dataclass
class Prepared:
    """Everything resolved before any training work, so bad input fails fast."""

    config: RunConfig
    base: BaseModel
    dataset: TaskDataset
    plan: Plan
    train_examples: list[Example]
    device: torch.device
    total_params: int  # of the base model, before a method is attached


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available: use --device cpu or auto.")
    return torch.device(name)


def prepare(config: RunConfig, resident: Resident | None = None) -> Prepared:
    """With `resident`, the dataset and a copy of the base model come from a worker's store instead of disk."""
    config.validate()
    device = resolve_device(config.device)
    dataset = resident.dataset(config.dataset, config.task) if resident else load_dataset(config.dataset, config.task)
    train = dataset.split("train")
    dataset.split("test")
    if config.task == "caption":
        # pycocoevalcap: the app imports this module at start-up
        from training.metrics.caption import require_java

        require_java()  # fail now, not after training, when the caption metrics cannot run
    base = resident.base_model(config.base_model, device) if resident else load_base_model(config.base_model, device)
    plan = require_feasible(plan_method(base.model, config.method, parse_budget(config.budget), config.towers))
    subset = [train[i] for i in nested_fraction(len(train), config.data_fraction, config.seed)]
    return Prepared(config, base, dataset, plan, subset, device, count_base_params(base.model))


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision: bf16 on CUDA (fp16 where bf16 is missing), none on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_model(prepared: Prepared, options: dict | None = None) -> tuple[VLModel, int]:
    vl = VLModel(prepared.base)
    plan, config = prepared.plan, prepared.config
    vl.attach(config.method, RUN_ADAPTER, config.towers, plan.value, seed=config.seed, options=options)
    vl.set_active(RUN_ADAPTER)
    trainable = vl.freeze_all_but(RUN_ADAPTER)
    if trainable != plan.trainable_params:
        raise RuntimeError(
            f"{config.method}: {trainable} trainable parameters, but the budget solver promised {plan.trainable_params}"
        )
    return vl, trainable


class StopRequested(Exception):
    """Raised inside evaluation when a stop was asked for."""


class StopFlag:
    """Set by SIGTERM/SIGINT or by a STOP file in the run directory: stop at the next step, keep the work."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.signalled = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def __bool__(self) -> bool:
        return self.signalled or self.stop_file.exists()


def lr_at(step: int, total: int, peak: float, warmup_ratio: float, horizon: int | None = None) -> float:
    """Linear warm-up over `warmup_ratio` of the planned `total` steps, then linear decay to zero at `horizon`
    (default `total`): a run's hard step limit, so that steps past a soft cap still train."""
    horizon = max(total, horizon or total)
    warmup = max(1, int(total * warmup_ratio))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (horizon - step) / max(1, horizon - warmup))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: RunConfig,
    run_dir: str | Path,
    install_signals: bool = True,
    resume: bool = False,
    resident: Resident | None = None,
) -> int:
    """Run one fine-tune into run_dir; returns 0 when finished, EXIT_STOPPED when stopped on request. With
    `resume`, a run directory that holds a saved state (training/run/resume.py) goes on from it. With `resident`
    (a worker that trains runs one after another), what the run loads comes from the worker's store.

    The protocol: train, validating every few steps on a fixed validation subset; keep the best checkpoint;
    stop when validation has not improved for `patience` validations (or at the epoch cap); score the test
    split once, at the end, with the best checkpoint."""
    run = RunDirectory(run_dir)
    run.write_loading()
    log = run.open_log()
    stop = StopFlag(run.stop_file)
    if install_signals:
        stop.install()
    try:
        return train_logged(config, run, log, stop, resume, resident)
    finally:
        runs.close_log(log)  # a worker trains many runs: each run's log file is closed when it ends


def train_logged(
    config: RunConfig,
    run: RunDirectory,
    log: logging.Logger,
    stop: StopFlag,
    resume: bool,
    resident: Resident | None,
) -> int:
    """`train` once its run directory, log and stop flag are set up."""
    # load
    prepared = prepare(config, resident)
    seed_everything(config.seed)
    lr, options, lr_source = resolve_lr(config, METHODS[config.method].default_lr, total_params=prepared.total_params)

    # attach
    vl, trainable = build_model(prepared, options)
    data = TrainingData(
        training_pairs(config.task, prepared.train_examples),
        Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions),
        resident.pixels(prepared.base, prepared.device, (config.dataset, config.task))
        if resident
        else PixelCache(prepared.base.processor),
    )
    total_steps = planned_steps(config, len(data.pairs))
    validator = make_validator(config, prepared.dataset, data) if config.validates and total_steps else None
    description = describe_run(prepared, vl, lr, lr_source, options, data, total_steps, validator)
    command = "python -m training train " + " ".join(config.to_cli_args()) + f" --out {run.path}"
    run.write_config(
        {
            "config": config.to_dict(),
            **description,
            "versions": versions(),
            "command": command,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    tracker = open_tracker(config.report_to, run.path, config.to_dict())  # a missing package fails here, early
    report = Reporter(run, log, tracker)
    try:
        knob = f"{prepared.plan.knob}={prepared.plan.value}" if prepared.plan.knob else "no knob"
        log.info(
            "%s on %s: %s, %s trainable of %s parameters (%.3f%%), %d training examples (%d pairs), "
            "at most %d steps, lr %g (%s)",
            config.method,
            config.task,
            knob,
            f"{trainable:,}",
            f"{description['total_params']:,}",
            description["trainable_percent"],
            len(prepared.train_examples),
            len(data.pairs),
            total_steps,
            lr,
            lr_source,
        )

        # loop
        outcome = LoopOutcome(stop_reason="zero-shot")
        if total_steps:
            if description["feature_cache"]:
                log.info(
                    "vision tower frozen: computing image features once for %d images", len(prepared.train_examples)
                )
                data.features = frozen_features(vl, prepared, prepared.train_examples, data.pixels, resident)
                if validator:  # every validation decodes the same images
                    validator.features = frozen_features(vl, prepared, validator.examples, data.pixels, resident)
            if config.task == "caption" and config.score_test:
                # pycocoevalcap: the app imports this module at start-up
                from training.metrics.caption import start_meteor

                start_meteor()  # METEOR's Java start-up overlaps training instead of adding to evaluation
            outcome = TrainingLoop(vl, config, data, total_steps, lr, validator, report, stop, resume).run()

        # save
        vl.adapters[RUN_ADAPTER].fold()
        run.save_weights(vl.adapters[RUN_ADAPTER].state_dict())
        if outcome.stopped:
            log.info("stopped on request after the last completed step; weights saved, evaluation skipped")
            run.set_phase("stopped")
            return EXIT_STOPPED

        # evaluate
        summary = outcome.summary(validator)
        if total_steps:  # read once here, so the results table need not read every run's metrics.jsonl
            # Kept at step 0 (no training loss there): the loss its training reached, which says whether it could fit.
            summary["train_loss"] = runs.training_loss(run.path, summary["best_step"] or None)
        if not config.score_test:
            run.write_eval(
                {"task": config.task, "split": None, "validation": summary, "train_s": round(run.elapsed_s(), 2)}
            )
            saved_state.discard(run.path)  # a finished run has no use for it
            run.set_phase("done")
            log.info("done (no test split): best validation %s at step %s", summary.get("best"), summary["best_step"])
            return 0
        return score_test_split(vl, config, prepared.dataset, data, summary, outcome.steps_run, report, stop)
    finally:
        tracker.close()


@dataclass
class TrainingData:
    """The training sequences, and what turns a batch of them into a loss."""

    pairs: list[tuple[Example, str, str]]
    encoder: Encoder
    pixels: PixelCache
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # by image id; empty: run the vision tower

    def loss(self, vl: VLModel, batch: list[tuple[Example, str, str]]) -> torch.Tensor:
        return batch_loss(vl, batch, self.encoder, self.pixels, self.features)


def make_validator(config: RunConfig, dataset: TaskDataset, data: TrainingData) -> Validator:
    examples = dataset.split("validation")
    limit = config.resolved_val_limit()
    return Validator(
        config.task,
        examples[:limit] if limit else examples,
        data.pixels,
        data.encoder,
        config.max_new_tokens,
        config.patience,
    )


def describe_run(
    prepared: Prepared,
    vl: VLModel,
    lr: float,
    lr_source: str,
    options: dict,
    data: TrainingData,
    total_steps: int,
    validator: Validator | None,
) -> dict:
    """What config.json records beside the config itself: the resolved method, counts, schedule, data and device."""
    config, plan, dataset = prepared.config, prepared.plan, prepared.dataset
    total_params, trainable = prepared.total_params, plan.trainable_params
    precision = autocast_dtype(prepared.device) or torch.float32
    return {
        "method": config.method,
        "family": METHODS[config.method].family,
        "knob": plan.knob,
        "knob_value": plan.value,
        "trainable_params": trainable,
        "total_params": total_params,
        "trainable_percent": 100 * trainable / total_params,
        "budget_params": parse_budget(config.budget).resolve(total_params),
        "lr": lr,
        "lr_source": lr_source,
        "method_options": options,
        "total_steps": total_steps,
        "step_limit": step_limit(config, total_steps),  # past the cap only while validation improves
        "effective_batch_size": config.batch_size * config.grad_accum,
        "val_every": val_every(config, len(data.pairs)) if validator else None,
        "val_examples": len(validator.examples) if validator else 0,
        "validation_held_out_of_train": dataset.held_out_validation,
        "device": str(prepared.device),
        "precision": str(precision).replace("torch.", ""),
        "base_model": prepared.base.source,
        "dataset": dataset.source,
        "dataset_name": dataset.name,
        "train_examples": len(prepared.train_examples),
        "train_pairs": len(data.pairs),
        "train_split_size": len(dataset.split("train")),
        "subset_hash": subset_hash(prepared.train_examples),
        "feature_cache": config.cache_features and not vl.adapters[RUN_ADAPTER].touches_vision(),
    }


@dataclass
class Reporter:
    """Where a run's records go: its directory, its log, and the tracker (tensorboard or trackio) if any."""

    run: RunDirectory
    log: logging.Logger
    tracker: Tracker

    def step(self, record: StepRecord, to_log: bool) -> None:
        self.run.write_step(record)
        self.tracker.log(record.step, training_scalars(record.row()))
        if to_log:
            self.log.info(
                "step %d/%d loss %.4f lr %.2e %.1f samples/s eta %ss",
                record.step,
                record.total_steps,
                record.loss,
                record.lr,
                record.samples_per_s,
                record.eta_s,
            )

    def validation(self, record: ValidationRecord, improved: bool, validator: Validator) -> None:
        self.run.write_validation(record)
        self.tracker.log(record.step, eval_scalars({record.metric: record.value}))
        self.run.set_phase("training")
        self.log.info(
            "validation at step %d: %s %.4g (best %.4g at step %d)%s",
            record.step,
            record.metric,
            record.value,
            record.best,
            record.best_step,
            "" if improved else f", {validator.since_best} of {validator.patience} without improvement",
        )


@torch.no_grad()
def precompute_features(vl: VLModel, examples: list[Example], pixels: PixelCache) -> dict[str, torch.Tensor]:
    """The frozen vision tower's features of the examples' images (in eval mode), by image id."""
    was_training = vl.model.training
    vl.model.eval()
    features = image_features(vl, examples, pixels)
    vl.model.train(was_training)
    return features


def frozen_features(
    vl: VLModel, prepared: Prepared, examples: list[Example], pixels: PixelCache, resident: Resident | None
) -> dict[str, torch.Tensor]:
    """`precompute_features`, or a worker's stored features of the same images from an earlier run."""
    if resident is None:
        return precompute_features(vl, examples, pixels)
    dataset = (prepared.config.dataset, prepared.config.task)
    return resident.image_features(
        prepared.base, prepared.device, examples, lambda: precompute_features(vl, examples, pixels), dataset
    )


def batch_loss(
    vl: VLModel,
    batch: list[tuple[Example, str, str]],
    encoder: Encoder,
    pixels: PixelCache,
    features: dict[str, torch.Tensor],
) -> torch.Tensor:
    examples = [example for example, _, _ in batch]
    if features:
        image_embeds = torch.stack([features[e.image_id] for e in examples])
    else:
        image_embeds = vl.encode_images(pixels(examples))
    input_ids, mask, labels = encoder.training_batch([(prompt, target) for _, prompt, target in batch])
    return vl.loss(image_embeds, input_ids, mask, labels)


CAP_REASONS = ("epoch cap", "min steps", "max steps", "hard limit")  # a run ended by a limit, not by validation


@dataclass
class LoopOutcome:
    """How the training loop ended."""

    stop_reason: str  # patience | epoch cap | min steps | max steps | hard limit | stopped | zero-shot
    steps_run: int = 0
    epochs_run: float = 0.0
    planned_steps: int = 0  # the cap: epochs (or the step floor, or --max-steps)
    step_limit: int = 0  # how far the run could go on past the cap while validation improved

    @property
    def stopped(self) -> bool:
        return self.stop_reason == "stopped"

    def summary(self, validator: Validator | None) -> dict:
        """What eval.json and the results table say about training and validation."""
        last = validator.curve[-1].step if validator and validator.curve else None
        return {
            "metric": validator.metric if validator else None,
            "best": validator.best if validator else None,
            "best_step": validator.best_step if validator else self.steps_run,
            "steps_run": self.steps_run,
            "epochs_run": round(self.epochs_run, 3),
            "stop_reason": self.stop_reason,
            "validations": len(validator.curve) if validator else 0,
            "planned_steps": self.planned_steps,
            "step_limit": self.step_limit,
            # A limit ended it while its latest validation was its best: it might have gone on improving.
            "stopped_improving": bool(
                validator
                and self.stop_reason in CAP_REASONS
                and last is not None
                and last > 0
                and validator.best_step == last
            ),
        }


class TrainingLoop:
    """AdamW over the run adapter's parameters with linear warm-up and decay to the hard step limit, validating
    before the first step and every `val_every` steps, and keeping the best checkpoint (restored at the end)."""

    def __init__(
        self,
        vl: VLModel,
        config: RunConfig,
        data: TrainingData,
        total_steps: int,
        lr: float,
        validator: Validator | None,
        report: Reporter,
        stop: StopFlag,
        resume: bool = False,
    ) -> None:
        self.vl, self.config, self.data, self.total_steps, self.lr = vl, config, data, total_steps, lr
        self.validator, self.report, self.stop = validator, report, stop
        self.autocast_dtype = autocast_dtype(vl.device)
        self.method = vl.adapters[RUN_ADAPTER]
        self.params = list(self.method.train_parameters())
        self.best_state: list[torch.Tensor] | None = None
        self.rng = random.Random(config.seed)
        self.order: list[int] = []
        self.epoch = 0
        self.target = total_steps  # the step the loop runs to: the cap, or the hard limit once it goes past it
        self.resume = resume  # go on from the run directory's saved state, if it has one

    def next_batch(self) -> list:
        pairs = self.data.pairs
        if len(self.order) < self.config.batch_size:
            fresh = list(range(len(pairs)))
            self.rng.shuffle(fresh)
            self.order += fresh
            self.epoch += 1
        batch = [pairs[i] for i in self.order[: self.config.batch_size]]
        del self.order[: self.config.batch_size]
        return batch

    def epochs_done(self) -> float:
        return self.epoch - len(self.order) / max(1, len(self.data.pairs))

    def run(self) -> LoopOutcome:
        """Validate the starting weights (step 0, a checkpoint candidate like any other), train to the cap, go on
        past it towards the hard limit while the latest validation is the best, stop early on patience only
        after the step floor, and end with the best checkpoint's weights."""
        config, vl = self.config, self.vl
        optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler(enabled=self.autocast_dtype == torch.float16)
        every = val_every(config, len(self.data.pairs))
        cap, limit = self.total_steps, step_limit(config, self.total_steps)
        floor = min(config.min_steps or 0, cap)  # patience may end a run only from here on
        vl.model.train()
        progress_bar = None
        if sys.stderr.isatty():
            progress_bar = tqdm(total=cap, desc="training", unit="step")
        if config.max_steps:
            reason = "max steps"
        elif config.min_steps and cap == config.min_steps:  # the floor, not the epochs, set the length
            reason = "min steps"
        else:
            reason = "epoch cap"
        resumed = self.restore(optimizer) if self.resume else None
        if resumed is None:
            step = 0
            if self.validator:
                self.validate(0)
        else:
            step, reason = resumed
        loop_start = time.perf_counter()
        seen = 0
        while step < self.target:
            step += 1
            if self.stop:
                self.save(step - 1, optimizer, reason)
                return LoopOutcome("stopped", step - 1, self.epochs_done(), cap, limit)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step - 1, cap, self.lr, config.warmup_ratio, limit)
            step_loss = 0.0
            for _ in range(config.grad_accum):
                batch = self.next_batch()
                with torch.autocast(vl.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    loss = self.data.loss(vl, batch) / config.grad_accum
                scaler.scale(loss).backward()
                step_loss += loss.item()
                seen += len(batch)
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if progress_bar:
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{step_loss:.3f}")
            if step % LOG_EVERY == 0 or step == self.target or step == 1:
                record = self.step_record(step, step_loss, optimizer.param_groups[0]["lr"], seen, loop_start)
                self.report.step(record, to_log=progress_bar is None)
            if self.validator and (step % every == 0 or step == self.target or step == floor):
                exhausted = self.validate(step)
                if exhausted and floor <= step < self.target:
                    reason = "patience"
                    break
                if step == cap < limit and self.validator.best_step == step:
                    self.target, reason = limit, "hard limit"
                    self.report.log.info(
                        "step cap %d reached while validation still improves: going on, to at most %d steps", cap, limit
                    )
                    if progress_bar:
                        progress_bar.total = limit
                        progress_bar.refresh()
                self.save(step, optimizer, reason)
        if progress_bar:
            progress_bar.close()
        if self.best_state is not None:
            with torch.no_grad():
                for param, saved in zip(self.params_to_keep(), self.best_state, strict=True):
                    param.copy_(saved)
        if self.validator and self.validator.best_step == 0:
            self.report.log.info(
                "no validation beat the starting weights (step 0, %s %.4g): the run ends with its starting weights",
                self.validator.metric,
                self.validator.best,
            )
        vl.model.eval()
        return LoopOutcome(reason, step, self.epochs_done(), cap, limit)

    def save(self, step: int, optimizer: torch.optim.Optimizer, reason: str) -> None:
        """Save what resuming after `step` needs (training/run/resume.py)."""
        validator = self.validator
        state = saved_state.LoopState(
            step,
            self.epoch,
            list(self.order),
            self.target,
            reason,
            validator.best if validator else None,
            validator.best_step if validator else 0,
            validator.since_best if validator else 0,
            list(validator.curve) if validator else [],
            saved_state.python_rng_state(self.rng),
        )
        saved_state.save(self.report.run.path, state, self.params_to_keep(), self.best_state, optimizer)

    def restore(self, optimizer: torch.optim.Optimizer) -> tuple[int, str] | None:
        """Go back to the run directory's saved state, if any: (the step it was saved after, how the loop would
        end then); None: start afresh."""
        run_dir = self.report.run.path
        if saved_state.saved_step(run_dir) is None:
            return None
        state, self.best_state = saved_state.load(run_dir, self.params_to_keep(), optimizer)
        self.epoch, self.order, self.target = state.epoch, list(state.order), state.target
        saved_state.restore_python_rng(self.rng, state.python_rng)
        if self.validator:
            self.validator.best, self.validator.best_step = state.best, state.best_step
            self.validator.since_best, self.validator.curve = state.since_best, list(state.curve)
        saved_state.truncate_records(run_dir, state.step)
        self.report.log.info(
            "resumed at step %d (its saved state: weights, optimizer, data order, validation)", state.step
        )
        return state.step, state.reason

    def params_to_keep(self) -> list[torch.Tensor]:
        """Every tensor the best checkpoint must hold: what is trained and what is stored (they differ for a
        reparametrised method until it is folded)."""
        seen: dict[int, torch.Tensor] = {}
        for param in [*self.params, *self.method.parameters()]:
            seen.setdefault(id(param), param)
        return list(seen.values())

    def validate(self, step: int) -> bool:
        """Score the validation subset; keep the checkpoint if it is the best; True when patience ran out."""
        validator = self.validator
        self.report.run.set_phase("validating")
        value, seconds = validator.score(self.vl)
        improved = validator.observe(step, value)
        if improved:
            self.best_state = [p.detach().clone() for p in self.params_to_keep()]
        elapsed_s = self.report.run.elapsed_s()
        record = ValidationRecord(
            step,
            round(self.epochs_done(), 3),
            validator.metric,
            value,
            validator.best,
            validator.best_step,
            round(seconds, 2),
            round(elapsed_s, 2),
        )
        validator.curve.append(record)
        self.report.validation(record, improved, validator)
        return validator.exhausted

    def step_record(self, step: int, step_loss: float, lr: float, seen: int, loop_start: float) -> StepRecord:
        elapsed = time.perf_counter() - loop_start
        rate = seen / elapsed if elapsed > 0 else 0.0
        steps_per_s = step / elapsed if elapsed > 0 else 0.0
        eta = round((self.target - step) / steps_per_s, 1) if steps_per_s else None
        return StepRecord(step, self.target, self.epochs_done(), step_loss, lr, rate, self.report.run.elapsed_s(), eta)


def score_test_split(
    vl: VLModel,
    config: RunConfig,
    dataset: TaskDataset,
    data: TrainingData,
    summary: dict,
    steps_run: int,
    report: Reporter,
    stop: StopFlag,
) -> int:
    """Score the test split once with the kept checkpoint and write eval.json; EXIT_STOPPED if stopped meanwhile."""
    run, log = report.run, report.log
    test = dataset.split("test")
    if config.eval_limit:
        test = test[: config.eval_limit]
    run.set_phase("evaluating")
    log.info("evaluating on %d test examples", len(test))

    def eval_progress(done: int, total: int) -> None:
        if stop:
            raise StopRequested
        run.set_phase("evaluating", eval_done=done, eval_total=total)

    try:
        metrics, records = evaluate(
            vl,
            config.task,
            test,
            data.pixels,
            data.encoder,
            max_new_tokens=config.max_new_tokens,
            progress=eval_progress,
        )
    except StopRequested:
        log.info("stopped on request during evaluation; weights saved, no evaluation written")
        run.set_phase("stopped")
        return EXIT_STOPPED
    run.write_predictions(records)
    report.tracker.log(steps_run, eval_scalars(metrics, "test"))
    wall_s = run.elapsed_s()
    run.write_eval(
        {
            "task": config.task,
            "split": "test",
            "metrics": metrics,
            "validation": summary,
            "train_s": round(wall_s - metrics["eval_s"], 2),
            "wall_s": round(wall_s, 2),
            "peak_mem_mb": peak_memory_mb(vl.device),
        }
    )
    log.info("done: %s", ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    saved_state.discard(run.path)  # a finished run has no use for it
    run.set_phase("done")
    return 0


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except ImportError:
        return float("nan")


def adapter_name(run_dir: str | Path) -> str:
    """The name a run's adapter takes on a shared base: safe as a module name (a sweep's run folders hold dots,
    `f0.25`), and one per run folder (two sweeps may each have a run of the same name)."""
    path = Path(run_dir).resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', path.name)[:60]}-{digest}"


def load_run(
    run_dir: str | Path, vl: VLModel | None = None, adapter: str | None = None, device: str = "cpu"
) -> tuple[VLModel, str, dict]:
    """Attach a finished run's weights to vl (or a fresh model of the run's base) as `adapter` (default:
    `adapter_name(run_dir)`)."""
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.CONFIG)
    weights = run_dir / runs.WEIGHTS
    if info is None or not weights.is_file():
        raise UserError(f"{run_dir} is not a finished run: it needs {runs.CONFIG} and {runs.WEIGHTS}.")
    config = RunConfig.from_dict(info["config"])
    if vl is None:
        vl = VLModel(load_base_model(config.base_model, resolve_device(device)))
    adapter = adapter or adapter_name(run_dir)
    attached = vl.attach(config.method, adapter, config.towers, info.get("knob_value"))
    try:
        attached.load_state_dict(load_file(str(weights), device=str(vl.device)))
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"The weights in {weights} do not fit this base model: {exc}") from None
    return vl, adapter, info


def reevaluate(run_dir: str | Path, eval_limit: int | None = None, device: str = "auto") -> dict:
    """Evaluate a finished run again on its test split; rewrites eval.json and predictions.jsonl."""
    run_dir = Path(run_dir)
    vl, adapter, info = load_run(run_dir, device=str(resolve_device(device)))
    vl.set_active(adapter)
    config = RunConfig.from_dict(info["config"])
    test = load_dataset(config.dataset, config.task).split("test")
    limit = eval_limit or config.eval_limit
    test = test[:limit] if limit else test
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    metrics, records = evaluate(
        vl, config.task, test, PixelCache(vl.base.processor), encoder, max_new_tokens=config.max_new_tokens
    )
    run = RunDirectory(run_dir)
    run.write_predictions(records)
    previous = runs.read_json(run_dir / runs.EVAL) or {}
    run.write_eval({**previous, "task": config.task, "split": "test", "metrics": metrics})
    return metrics
