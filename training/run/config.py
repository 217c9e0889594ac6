"""The one run configuration that the CLI, the app, the job worker and the sweeps all build.

A `RunConfig` is plain data, validated once at the boundary. `to_cli_args` turns it back into the
`python -m training train` arguments that reproduce it, so a UI run and a CLI run are the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field

from training.budget import parse_budget
from training.catalog import METHOD_NAMES, TASKS
from training.errors import UserError
from training.run.tracking import REPORT_TO

TOWERS = ("vision", "text", "both")
DEFAULT_EPOCHS = {"caption": 1.0, "vqa": 5.0}  # the cap when neither --epochs nor --max-steps is given
# Validation during training: the first N examples of the validation split (None: all of it), scored every
# `val_every` steps (None: half an epoch, clamped to VAL_EVERY_RANGE), for the best checkpoint and early stopping.
DEFAULT_VAL_LIMIT = {"caption": 100, "vqa": None}
VAL_EVERY_RANGE = (10, 100)
DEFAULT_PATIENCE = 3  # validations without improvement before a run stops; 0 turns validation off
# The step cap is soft: a validating run whose best checkpoint is its latest validation when it reaches its cap
# goes on, to at most this many times its planned steps (the hard limit); its learning rate decays to zero at
# that limit, not at the cap, so the steps beyond the cap still train. 1: the cap is hard, as before.
DEFAULT_CAP_LIMIT = 2.0


def parse_fraction(text: str | float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"Data fraction {text!r} is not a number: give a value in (0, 1], e.g. 0.25.") from None
    if not 0 < value <= 1:
        raise UserError(f"Data fraction {text!r} is outside (0, 1]: use e.g. 0.01 for 1 % or 1 for all the data.")
    return value


@dataclass
class RunConfig:
    task: str = "caption"
    method: str = "lora"
    budget: str = "0.5%"
    data_fraction: float = 1.0
    seed: int = 0
    base_model: str | None = None  # None: the embedded default
    dataset: str | None = None  # None: the embedded default dataset of the task
    towers: str = "both"
    epochs: float | None = None
    max_steps: int | None = None
    # At least this many steps whatever the epochs: a small share of the data otherwise ends at its epoch cap
    # before it has learnt (1 % of VQA is 14 steps in 10 epochs); early stopping may end a run only after them.
    min_steps: int | None = None
    cap_limit: float = DEFAULT_CAP_LIMIT  # hard limit on steps, as a multiple of the planned steps (see above)
    batch_size: int = 32
    lr: float | None = None  # None: the method's default learning rate
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_new_tokens: int = 36  # the embedded model's texts are at most 40 tokens with [DEC] and the prompt
    eval_limit: int | None = None  # evaluate on the first N test examples only
    device: str = "auto"
    cache_features: bool = True  # reuse image features when the vision tower is frozen
    patience: int = DEFAULT_PATIENCE
    val_every: int | None = None
    val_limit: int | None = None  # None: DEFAULT_VAL_LIMIT of the task
    method_options: dict = field(default_factory=dict)  # e.g. {"reparam": True} for prefix tuning
    score_test: bool = True  # False: stop after training and validation (learning-rate tuning never sees test)
    report_to: str = "none"  # also log to tensorboard or trackio (training/run/tracking.py)
    extra: dict = field(default_factory=dict)

    def validate(self) -> RunConfig:
        """Cheap checks that need no model; raise UserError with one clear sentence."""
        if self.task not in TASKS:
            raise UserError(f"Unknown task {self.task!r}: choose one of {', '.join(TASKS)}.")
        if self.method not in METHOD_NAMES:
            raise UserError(f"Unknown method {self.method!r}: choose one of {', '.join(METHOD_NAMES)}.")
        if self.towers not in TOWERS:
            raise UserError(f"Unknown towers {self.towers!r}: choose one of {', '.join(TOWERS)}.")
        parse_budget(self.budget)
        self.data_fraction = parse_fraction(self.data_fraction)
        if self.epochs is not None and self.epochs <= 0:
            raise UserError("--epochs must be above 0.")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("--max-steps must be at least 1.")
        if self.min_steps is not None and self.min_steps < 1:
            raise UserError("--min-steps must be at least 1.")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("--batch-size and --grad-accum must be at least 1.")
        if self.cap_limit < 1:
            raise UserError("--cap-limit must be at least 1 (1: the step cap is hard).")
        # Up to 1: prompt tuning's literature trains at 0.3 (Lester et al. 2021), and its tuning grid reaches 1.
        if self.lr is not None and not 0 < self.lr <= 1:
            raise UserError(f"--lr {self.lr} is out of range: use a value in (0, 1], such as 1e-3.")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"Unknown device {self.device!r}: use auto, cpu or cuda.")
        if self.patience < 0:
            raise UserError("--patience must be 0 (no validation) or more.")
        if self.val_every is not None and self.val_every < 1:
            raise UserError("--val-every must be at least 1 step.")
        if self.val_limit is not None and self.val_limit < 1:
            raise UserError("--val-limit must be at least 1 example.")
        if self.report_to not in REPORT_TO:
            raise UserError(f"--report-to {self.report_to!r}: choose one of {', '.join(REPORT_TO)}.")
        if not isinstance(self.method_options, dict):
            raise UserError("method options must be a mapping such as {'reparam': true}.")
        return self

    @property
    def validates(self) -> bool:
        return self.patience > 0 and self.method != "zero-shot"

    def resolved_val_limit(self) -> int | None:
        return self.val_limit if self.val_limit is not None else DEFAULT_VAL_LIMIT[self.task]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"Unknown configuration keys: {', '.join(sorted(unknown))}.")
        return cls(**data)

    def to_cli_args(self) -> list[str]:
        """The `python -m training train` arguments (without --out) that reproduce this config."""
        args = [
            "--task",
            self.task,
            "--method",
            self.method,
            "--budget",
            str(self.budget),
            "--data-fraction",
            f"{self.data_fraction:g}",
            "--seed",
            str(self.seed),
            "--towers",
            self.towers,
            "--batch-size",
            str(self.batch_size),
        ]
        optional = {
            "--base-model": self.base_model,
            "--dataset": self.dataset,
            "--epochs": self.epochs,
            "--max-steps": self.max_steps,
            "--min-steps": self.min_steps,
            "--lr": self.lr,
            "--eval-limit": self.eval_limit,
        }
        for flag, value in optional.items():
            if value is not None:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        defaults = RunConfig()
        if self.grad_accum != defaults.grad_accum:
            args += ["--grad-accum", str(self.grad_accum)]
        if self.device != defaults.device:
            args += ["--device", self.device]
        if self.max_new_tokens != defaults.max_new_tokens:
            args += ["--max-new-tokens", str(self.max_new_tokens)]
        if not self.cache_features:
            args += ["--no-cache-features"]
        if self.patience != defaults.patience:
            args += ["--patience", str(self.patience)]
        if self.cap_limit != defaults.cap_limit:
            args += ["--cap-limit", f"{self.cap_limit:g}"]
        if self.val_every is not None:
            args += ["--val-every", str(self.val_every)]
        if self.val_limit is not None:
            args += ["--val-limit", str(self.val_limit)]
        if not self.score_test:
            args += ["--no-test"]
        if self.report_to != defaults.report_to:
            args += ["--report-to", self.report_to]
        for key, value in sorted(self.method_options.items()):
            args += ["--method-option", f"{key}={json.dumps(value)}"]
        return args


def val_every(config: RunConfig, pairs: int) -> int:
    """Steps between validations: half an epoch, clamped, so small data sets are not validated every step."""
    if config.val_every:
        return config.val_every
    per_epoch = math.ceil(pairs / (config.batch_size * config.grad_accum))
    low, high = VAL_EVERY_RANGE
    return max(low, min(high, math.ceil(per_epoch / 2)))


def parse_method_option(text: str) -> tuple[str, object]:
    """`reparam=true` -> ("reparam", True); values are JSON (true, 3, 0.5, "tanh") or else plain strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--method-option {text!r}: write it as KEY=VALUE, e.g. reparam=true.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def planned_steps(config: RunConfig, pairs: int) -> int:
    """Optimizer steps a run will take on `pairs` training sequences (0 for zero-shot)."""
    if config.method == "zero-shot":
        return 0
    if config.max_steps:
        return config.max_steps
    epochs = config.epochs or DEFAULT_EPOCHS[config.task]
    return max(1, config.min_steps or 1, math.ceil(epochs * pairs / (config.batch_size * config.grad_accum)))


def step_limit(config: RunConfig, planned: int) -> int:
    """The hard limit on steps of a run planned for `planned` steps: a validating run may go on past its epoch cap
    (or step floor) while validation improves, up to `cap_limit` times it; `--max-steps` and a fixed schedule
    (no validation) are hard."""
    if config.max_steps or not config.validates:
        return planned
    return max(planned, math.ceil(planned * config.cap_limit))


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of `train` (and of `submit`, which takes the same)."""
    d = RunConfig()
    parser.add_argument("--task", default=d.task, help="caption or vqa")
    parser.add_argument("--method", default=d.method, help=", ".join(METHOD_NAMES))
    parser.add_argument("--budget", default=d.budget, help="trainable parameters: 20000, 20k, 1.5M or 0.5%%")
    parser.add_argument("--data-fraction", default=d.data_fraction, help="share of the training split, in (0, 1]")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--base-model", default=None, help="Hub id or local path (default: the embedded model)")
    parser.add_argument("--dataset", default=None, help="dataset folder or Hub id (default: the embedded one)")
    parser.add_argument("--towers", default=d.towers, help="vision, text or both")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="train at least this many steps whatever the epochs (a small data share otherwise stops at its epoch "
        "cap before it learns); early stopping may end the run only after them",
    )
    parser.add_argument(
        "--cap-limit",
        type=float,
        default=d.cap_limit,
        help="a run still improving on validation at its step cap goes on, to at most this many times its planned "
        "steps (the learning rate decays to zero there); 1: the cap is hard",
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's own)")
    parser.add_argument("--grad-accum", type=int, default=d.grad_accum)
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test examples")
    parser.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    parser.add_argument(
        "--no-cache-features",
        dest="cache_features",
        action="store_false",
        help="run the frozen vision tower every step instead of caching its features",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after this many validations without improvement (0: no validation, fixed "
        "schedule); the best checkpoint on the validation split is kept",
    )
    parser.add_argument(
        "--val-every",
        type=int,
        default=None,
        help="steps between validations (default: half an epoch, 10 to 100 steps)",
    )
    parser.add_argument(
        "--val-limit",
        type=int,
        default=None,
        help="validate on the first N validation examples (default: 100 images for captions, every question for VQA)",
    )
    parser.add_argument(
        "--report-to",
        default=d.report_to,
        choices=REPORT_TO,
        help="also log loss, learning rate, throughput and validation scores to tensorboard or "
        "trackio (pip install vl-peft-lab[tracking])",
    )
    parser.add_argument(
        "--no-test", dest="score_test", action="store_false", help="skip the test split (used by learning-rate tuning)"
    )
    parser.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method's own option, e.g. reparam=true for prefix tuning (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    names = {f.name for f in dataclasses.fields(RunConfig)} - {"extra", "method_options"}
    options = dict(parse_method_option(text) for text in getattr(args, "method_option", None) or [])
    return RunConfig(**{k: v for k, v in vars(args).items() if k in names}, method_options=options).validate()
