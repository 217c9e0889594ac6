"""The training loop: load, attach the method, train, evaluate, write the run directory.

Used the same way by the CLI, the job worker (which runs the CLI in its own process) and the sweeps.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training import runs
from training.base_model import BaseModel, load_base_model
from training.config import RunConfig, parse_budget, planned_steps, val_every
from training.data.dataset import Example, TaskDataset, load_dataset, nested_fraction, subset_hash
from training.errors import UserError
from training.evaluation import evaluate
from training.methods import METHODS
from training.methods.budget import Plan, plan_method, require_feasible
from training.pixels import PixelCache
from training.tasks import Encoder, training_pairs
from training.tracking import NoTracker, Tracker, eval_scalars, open_tracker, training_scalars
from training.tuning import resolve_lr
from training.validation import Validator
from training.vlmodel import VLModel

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available: use --device cpu or auto.")
    return torch.device(name)


def prepare(config: RunConfig) -> Prepared:
    config.validate()
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.task)
    train = dataset.split("train")
    dataset.split("test")
    if config.task == "caption":
        from training.metrics.caption import require_java

        require_java()  # fail now, not after training, when the caption metrics cannot run
    base = load_base_model(config.base_model, device)
    plan = require_feasible(plan_method(base.model, config.method, parse_budget(config.budget), config.towers))
    subset = [train[i] for i in nested_fraction(len(train), config.data_fraction, config.seed)]
    return Prepared(config, base, dataset, plan, subset, device)


def setup_logging(run_dir: Path) -> logging.Logger:
    """Log to log.txt, and to stderr unless stderr already is log.txt (as when the job worker runs us)."""
    logger = logging.getLogger(f"vlpeft.run.{run_dir}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    log_path = run_dir / runs.LOG
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


def versions() -> dict:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}  # fmt: skip


def build_model(prepared: Prepared, options: dict | None = None) -> tuple[VLModel, int]:
    vl = VLModel(prepared.base)
    plan, config = prepared.plan, prepared.config
    vl.attach(config.method, RUN_ADAPTER, config.towers, plan.value, seed=config.seed, options=options)
    vl.set_active(RUN_ADAPTER)
    trainable = vl.freeze_all_but(RUN_ADAPTER)
    if trainable != plan.trainable_params:
        raise RuntimeError(f"{config.method}: {trainable} trainable parameters, but the budget solver promised "
                           f"{plan.trainable_params}")  # fmt: skip
    return vl, trainable


class StopRequested(Exception):
    """Raised inside evaluation when a stop was asked for."""


class StopFlag:
    """Set by SIGTERM/SIGINT or by a STOP file in the run directory: stop at the next step, keep the work."""

    def __init__(self, run_dir: Path) -> None:
        self.stop_file = run_dir / runs.STOP
        self.signalled = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def __bool__(self) -> bool:
        return self.signalled or self.stop_file.exists()


def lr_at(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Linear warm-up, then linear decay to zero."""
    warmup = max(1, int(total * warmup_ratio))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: RunConfig, run_dir: str | Path, install_signals: bool = True) -> int:
    """Run one fine-tune into run_dir; returns 0 when finished, EXIT_STOPPED when stopped on request.

    The protocol: train, validating every few steps on a fixed validation subset; keep the best checkpoint;
    stop when validation has not improved for `patience` validations (or at the epoch cap); score the test
    split once, at the end, with the best checkpoint."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(run_dir / runs.PROGRESS, {"phase": "loading", "step": 0, "total_steps": None})
    log = setup_logging(run_dir)
    stop = StopFlag(run_dir)
    if install_signals:
        stop.install()
    started = time.perf_counter()
    prepared = prepare(config)
    seed_everything(config.seed)
    method = METHODS[config.method]
    lr, options, lr_source = resolve_lr(config, method.default_lr)
    total_params = sum(p.numel() for p in prepared.base.model.parameters())
    vl, trainable = build_model(prepared, options)
    device = prepared.device
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    pixels = PixelCache(prepared.base.processor)
    pairs = training_pairs(config.task, prepared.train_examples)
    batch_size = config.batch_size * config.grad_accum
    total_steps = planned_steps(config, len(pairs))
    frozen_vision = not vl.adapters[RUN_ADAPTER].touches_vision()
    use_feature_cache = config.cache_features and frozen_vision
    autocast_dtype = None
    if device.type == "cuda":
        autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    validator = None
    if config.validates and total_steps:
        examples = prepared.dataset.split("validation")
        limit = config.resolved_val_limit()
        validator = Validator(config.task, examples[:limit] if limit else examples, pixels, encoder,
                              config.max_new_tokens, config.patience)  # fmt: skip
    resolved = {
        "method": config.method, "family": method.family, "knob": prepared.plan.knob,
        "knob_value": prepared.plan.value, "trainable_params": trainable, "total_params": total_params,
        "trainable_percent": 100 * trainable / total_params, "budget_params": parse_budget(config.budget)
        .resolve(total_params), "lr": lr, "lr_source": lr_source, "method_options": options,
        "total_steps": total_steps, "effective_batch_size": batch_size,
        "val_every": val_every(config, len(pairs)) if validator else None,
        "val_examples": len(validator.examples) if validator else 0,
        "validation_held_out_of_train": prepared.dataset.held_out_validation,
        "device": str(device), "precision": str(autocast_dtype or torch.float32).replace("torch.", ""),
        "base_model": prepared.base.source, "dataset": prepared.dataset.source, "dataset_name": prepared.dataset.name,
        "train_examples": len(prepared.train_examples), "train_pairs": len(pairs),
        "train_split_size": len(prepared.dataset.split("train")), "subset_hash": subset_hash(prepared.train_examples),
        "feature_cache": use_feature_cache,
    }  # fmt: skip
    command = "python -m training train " + " ".join(config.to_cli_args()) + f" --out {run_dir}"
    runs.write_json(run_dir / runs.CONFIG, {
        "config": config.to_dict(), **resolved, "versions": versions(), "command": command,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })  # fmt: skip
    tracker = open_tracker(config.report_to, run_dir, config.to_dict())  # a missing package fails here, early
    try:
        log.info("%s on %s: %s=%s, %s trainable of %s parameters (%.3f%%), %d training examples (%d pairs), "
                 "at most %d steps, lr %g (%s)", config.method, config.task, prepared.plan.knob, prepared.plan.value,
                 f"{trainable:,}", f"{total_params:,}", resolved["trainable_percent"], len(prepared.train_examples),
                 len(pairs), total_steps, lr, lr_source)  # fmt: skip

        features: dict[str, torch.Tensor] = {}
        if use_feature_cache and total_steps:
            log.info("vision tower frozen: computing image features once for %d images", len(prepared.train_examples))
            features = precompute_features(vl, prepared.train_examples, pixels)

        if config.task == "caption" and total_steps and config.score_test:
            from training.metrics.caption import start_meteor

            start_meteor()  # METEOR's Java start-up (~7 s) overlaps training instead of adding to evaluation
        outcome = LoopOutcome(stop_reason="zero-shot")
        if total_steps:
            loop = TrainingLoop(vl, config, pairs, encoder, pixels, features, total_steps, lr, autocast_dtype, run_dir,
                                log, stop, started, validator, tracker)  # fmt: skip
            outcome = loop.run()
        vl.adapters[RUN_ADAPTER].fold()
        save_file(vl.adapters[RUN_ADAPTER].state_dict(), str(run_dir / runs.WEIGHTS))
        if outcome.stopped:
            log.info("stopped on request after the last completed step; weights saved, evaluation skipped")
            runs.write_json(run_dir / runs.PROGRESS, {**progress_snapshot(run_dir), "phase": "stopped"})
            return EXIT_STOPPED
        summary = outcome.summary(validator)
        if not config.score_test:
            runs.write_json(run_dir / runs.EVAL, {"task": config.task, "split": None, "validation": summary,
                                                  "train_s": round(time.perf_counter() - started, 2)})  # fmt: skip
            runs.write_json(run_dir / runs.PROGRESS, {**progress_snapshot(run_dir), "phase": "done"})
            log.info("done (no test split): best validation %s at step %s", summary.get("best"), summary["best_step"])
            return 0

        test = prepared.dataset.split("test")
        if config.eval_limit:
            test = test[: config.eval_limit]
        runs.write_json(run_dir / runs.PROGRESS, {**progress_snapshot(run_dir), "phase": "evaluating"})
        log.info("evaluating on %d test examples", len(test))

        def eval_progress(done: int, total: int) -> None:
            if stop:
                raise StopRequested
            runs.write_json(run_dir / runs.PROGRESS, {**progress_snapshot(run_dir), "phase": "evaluating",
                                                      "eval_done": done, "eval_total": total})  # fmt: skip

        try:
            metrics, records = evaluate(vl, config.task, test, pixels, encoder, max_new_tokens=config.max_new_tokens,
                                        progress=eval_progress)  # fmt: skip
        except StopRequested:
            log.info("stopped on request during evaluation; weights saved, no evaluation written")
            runs.write_json(run_dir / runs.PROGRESS, {**progress_snapshot(run_dir), "phase": "stopped"})
            return EXIT_STOPPED
        for record in records:
            runs.append_jsonl(run_dir / runs.PREDICTIONS, record)
        tracker.log(outcome.steps_run, eval_scalars(metrics, "test"))
        train_s = time.perf_counter() - started - metrics["eval_s"]
        runs.write_json(run_dir / runs.EVAL, {
            "task": config.task, "split": "test", "metrics": metrics, "validation": summary,
            "train_s": round(train_s, 2), "wall_s": round(time.perf_counter() - started, 2),
            "peak_mem_mb": peak_memory_mb(device),
        })  # fmt: skip
        log.info("done: %s", ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
        runs.write_json(run_dir / runs.PROGRESS, {**progress_snapshot(run_dir), "phase": "done"})
        return 0
    finally:
        tracker.close()


@torch.no_grad()
def precompute_features(vl: VLModel, examples: list[Example], pixels: PixelCache,
                        batch_size: int = 64) -> dict[str, torch.Tensor]:  # fmt: skip
    unique = list({e.image_id: e for e in examples}.values())
    was_training = vl.model.training
    vl.model.eval()
    features = {}
    for start in range(0, len(unique), batch_size):
        batch = unique[start : start + batch_size]
        for example, embeds in zip(batch, vl.encode_images(pixels(batch)), strict=True):
            features[example.image_id] = embeds
    vl.model.train(was_training)
    return features


def batch_loss(vl: VLModel, batch: list[tuple[Example, str, str]], encoder: Encoder, pixels: PixelCache,
               features: dict[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
    examples = [example for example, _, _ in batch]
    if features:
        image_embeds = torch.stack([features[e.image_id] for e in examples])
    else:
        image_embeds = vl.encode_images(pixels(examples))
    input_ids, mask, labels = encoder.training_batch([(prompt, target) for _, prompt, target in batch])
    return vl.loss(image_embeds, input_ids, mask, labels)


@dataclass
class LoopOutcome:
    """How the training loop ended."""

    stop_reason: str  # patience | epoch cap | max steps | stopped | zero-shot
    steps_run: int = 0
    epochs_run: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.stop_reason == "stopped"

    def summary(self, validator: Validator | None) -> dict:
        """What eval.json and the results table say about training and validation."""
        return {
            "metric": validator.metric if validator else None, "best": validator.best if validator else None,
            "best_step": validator.best_step if validator else self.steps_run, "steps_run": self.steps_run,
            "epochs_run": round(self.epochs_run, 3), "stop_reason": self.stop_reason,
            "validations": len(validator.curve) if validator else 0,
        }  # fmt: skip


class TrainingLoop:
    """AdamW over the run adapter's parameters with linear warm-up and decay to the step cap, validating every
    `val_every` steps and keeping the best checkpoint (restored at the end)."""

    def __init__(self, vl: VLModel, config: RunConfig, pairs: list, encoder: Encoder, pixels: PixelCache,
                 features: dict, total_steps: int, lr: float, autocast_dtype, run_dir: Path,
                 log: logging.Logger, stop: StopFlag, started: float, validator: Validator | None,
                 tracker: Tracker | None = None) -> None:  # fmt: skip
        self.vl, self.config, self.pairs, self.encoder, self.pixels = vl, config, pairs, encoder, pixels
        self.features, self.total_steps, self.lr, self.autocast_dtype = features, total_steps, lr, autocast_dtype
        self.run_dir, self.log, self.stop, self.started, self.validator = run_dir, log, stop, started, validator
        self.tracker = tracker or NoTracker()
        self.method = vl.adapters[RUN_ADAPTER]
        self.params = list(self.method.train_parameters())
        self.best_state: list[torch.Tensor] | None = None
        self.rng = random.Random(config.seed)
        self.order: list[int] = []
        self.epoch = 0

    def next_batch(self) -> list:
        if len(self.order) < self.config.batch_size:
            fresh = list(range(len(self.pairs)))
            self.rng.shuffle(fresh)
            self.order += fresh
            self.epoch += 1
        batch = [self.pairs[i] for i in self.order[: self.config.batch_size]]
        del self.order[: self.config.batch_size]
        return batch

    def epochs_done(self) -> float:
        return self.epoch - len(self.order) / max(1, len(self.pairs))

    def run(self) -> LoopOutcome:
        config, vl = self.config, self.vl
        optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler(enabled=self.autocast_dtype == torch.float16)
        every = val_every(config, len(self.pairs))
        vl.model.train()
        progress_bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            progress_bar = tqdm(total=self.total_steps, desc="training", unit="step")
        loop_start = time.perf_counter()
        seen = 0
        reason = "max steps" if config.max_steps else "epoch cap"
        step = 0
        for step in range(1, self.total_steps + 1):
            if self.stop:
                return LoopOutcome("stopped", step - 1, self.epochs_done())
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step - 1, self.total_steps, self.lr, config.warmup_ratio)
            step_loss = 0.0
            for _ in range(config.grad_accum):
                batch = self.next_batch()
                with torch.autocast(vl.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    loss = batch_loss(vl, batch, self.encoder, self.pixels, self.features) / config.grad_accum
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
            if step % LOG_EVERY == 0 or step == self.total_steps or step == 1:
                self.log_step(step, step_loss, optimizer.param_groups[0]["lr"], seen, loop_start, progress_bar)
            if self.validator and (step % every == 0 or step == self.total_steps):
                if self.validate(step) and step < self.total_steps:
                    reason = "patience"
                    break
        if progress_bar:
            progress_bar.close()
        if self.best_state is not None:
            with torch.no_grad():
                for param, saved in zip(self.params_to_keep(), self.best_state, strict=True):
                    param.copy_(saved)
        vl.model.eval()
        return LoopOutcome(reason, step, self.epochs_done())

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
        runs.write_json(self.run_dir / runs.PROGRESS, {**progress_snapshot(self.run_dir), "phase": "validating"})
        value, seconds = validator.score(self.vl)
        improved = validator.observe(step, value)
        if improved:
            self.best_state = [p.detach().clone() for p in self.params_to_keep()]
        row = {"step": step, "epoch": round(self.epochs_done(), 3), "metric": validator.metric, "value": value,
               "best": validator.best, "best_step": validator.best_step, "seconds": round(seconds, 2),
               "elapsed_s": round(time.perf_counter() - self.started, 2)}  # fmt: skip
        validator.curve.append(row)
        runs.append_jsonl(self.run_dir / runs.VALIDATION, row)
        self.tracker.log(step, eval_scalars({validator.metric: value}))
        runs.write_json(self.run_dir / runs.PROGRESS, {**progress_snapshot(self.run_dir), "phase": "training"})
        self.log.info("validation at step %d: %s %.4g (best %.4g at step %d)%s", step, validator.metric, value,
                      validator.best, validator.best_step, "" if improved else
                      f", {validator.since_best} of {validator.patience} without improvement")  # fmt: skip
        return validator.exhausted

    def log_step(self, step: int, step_loss: float, lr: float, seen: int, loop_start: float, progress_bar) -> None:
        elapsed = time.perf_counter() - loop_start
        rate = seen / elapsed if elapsed > 0 else 0.0
        steps_per_s = step / elapsed if elapsed > 0 else 0.0
        row = {
            "step": step, "total_steps": self.total_steps, "epoch": round(self.epochs_done(), 3),
            "loss": round(step_loss, 5), "lr": lr, "samples_per_s": round(rate, 2),
            "elapsed_s": round(time.perf_counter() - self.started, 2),
            "eta_s": round((self.total_steps - step) / steps_per_s, 1) if steps_per_s else None,
        }  # fmt: skip
        runs.append_jsonl(self.run_dir / runs.METRICS, row)
        self.tracker.log(step, training_scalars(row))
        runs.write_json(self.run_dir / runs.PROGRESS, {"phase": "training", **row})
        if not progress_bar:
            self.log.info("step %d/%d loss %.4f lr %.2e %.1f samples/s eta %ss", step, self.total_steps, step_loss,
                          lr, rate, row["eta_s"])  # fmt: skip


def progress_snapshot(run_dir: Path) -> dict:
    return runs.read_json(run_dir / runs.PROGRESS) or {}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except ImportError:
        return float("nan")


def load_run(run_dir: str | Path, vl: VLModel | None = None, adapter: str | None = None,
             device: str = "cpu") -> tuple[VLModel, str, dict]:  # fmt: skip
    """Attach a finished run's weights to vl (or a fresh model of the run's base) as `adapter`."""
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.CONFIG)
    weights = run_dir / runs.WEIGHTS
    if info is None or not weights.is_file():
        raise UserError(f"{run_dir} is not a finished run: it needs {runs.CONFIG} and {runs.WEIGHTS}.")
    config = RunConfig.from_dict(info["config"])
    if vl is None:
        vl = VLModel(load_base_model(config.base_model, resolve_device(device)))
    adapter = adapter or run_dir.name
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
    metrics, records = evaluate(vl, config.task, test, PixelCache(vl.base.processor), encoder,
                                max_new_tokens=config.max_new_tokens)  # fmt: skip
    (run_dir / runs.PREDICTIONS).unlink(missing_ok=True)
    for record in records:
        runs.append_jsonl(run_dir / runs.PREDICTIONS, record)
    previous = runs.read_json(run_dir / runs.EVAL) or {}
    runs.write_json(run_dir / runs.EVAL, {**previous, "task": config.task, "split": "test", "metrics": metrics})
    return metrics
