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


def option(help: str = "", *, always: bool = False, flag: str | None = None, text: bool = False, choices=None) -> dict:
    """A RunConfig field's command-line option, as field metadata: `add_run_options` and `to_cli_args` are made
    from it, so a new option is one field. `always`: written by `to_cli_args` even at its default; `flag`: the
    option's name when it is not `--field-name` (a True-default bool's is `--no-...`); `text`: parsed by the
    config's validation, not by argparse (a data fraction may be written `0.25`)."""
    return {"cli": {"help": help, "always": always, "flag": flag, "text": text, "choices": choices}}


@dataclass
class RunConfig:
    task: str = field(default="caption", metadata=option("caption or vqa", always=True))
    method: str = field(default="lora", metadata=option(", ".join(METHOD_NAMES), always=True))
    budget: str = field(default="0.5%", metadata=option("trainable parameters: 20000, 20k, 1.5M or 0.5%%", always=True))
    data_fraction: float = field(
        default=1.0, metadata=option("share of the training split, in (0, 1]", always=True, text=True)
    )
    seed: int = field(default=0, metadata=option(always=True))
    base_model: str | None = field(  # None: the embedded default
        default=None, metadata=option("Hub id or local path (default: the embedded model)")
    )
    dataset: str | None = field(  # None: the embedded default dataset of the task
        default=None, metadata=option("dataset folder or Hub id (default: the embedded one)")
    )
    towers: str = field(default="both", metadata=option("vision, text or both", always=True))
    epochs: float | None = field(default=None, metadata=option())
    max_steps: int | None = field(default=None, metadata=option())
    # At least this many steps whatever the epochs: a small share of the data otherwise ends at its epoch cap
    # before it has learnt (1 % of VQA is 14 steps in 10 epochs); early stopping may end a run only after them.
    min_steps: int | None = field(
        default=None,
        metadata=option(
            "train at least this many steps whatever the epochs (a small data share otherwise stops at its epoch "
            "cap before it learns); early stopping may end the run only after them"
        ),
    )
    cap_limit: float = field(  # hard limit on steps, as a multiple of the planned steps (see above)
        default=DEFAULT_CAP_LIMIT,
        metadata=option(
            "a run still improving on validation at its step cap goes on, to at most this many times its planned "
            "steps (the learning rate decays to zero there); 1: the cap is hard"
        ),
    )
    batch_size: int = field(default=32, metadata=option(always=True))
    lr: float | None = field(  # None: the tuned rate (results/lr.csv), else the method's default
        default=None, metadata=option("learning rate (default: the tuned one, else the method's own)")
    )
    grad_accum: int = field(default=1, metadata=option())
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_new_tokens: int = field(  # the embedded model's texts are at most 40 tokens with [DEC] and the prompt
        default=36, metadata=option()
    )
    eval_limit: int | None = field(default=None, metadata=option("evaluate on the first N test examples"))
    device: str = field(default="auto", metadata=option("auto, cpu or cuda"))
    cache_features: bool = field(
        default=True, metadata=option("run the frozen vision tower every step instead of caching its features")
    )
    patience: int = field(
        default=DEFAULT_PATIENCE,
        metadata=option(
            "stop after this many validations without improvement (0: no validation, fixed "
            "schedule); the best checkpoint on the validation split is kept"
        ),
    )
    val_every: int | None = field(
        default=None, metadata=option("steps between validations (default: half an epoch, 10 to 100 steps)")
    )
    val_limit: int | None = field(
        default=None,
        metadata=option(
            "validate on the first N validation examples (default: 100 images for captions, every question for VQA)"
        ),
    )
    method_options: dict = field(  # e.g. {"reparam": True} for prefix tuning
        default_factory=dict,
        metadata=option(
            "a method's own option, e.g. reparam=true for prefix tuning (repeatable)", flag="--method-option"
        ),
    )
    score_test: bool = field(  # False: stop after training and validation (learning-rate tuning never sees test)
        default=True, metadata=option("skip the test split (used by learning-rate tuning)", flag="--no-test")
    )
    report_to: str = field(
        default="none",
        metadata=option(
            "also log loss, learning rate, throughput and validation scores to tensorboard or "
            "trackio (pip install vl-peft-lab[tracking])",
            choices=REPORT_TO,
        ),
    )
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
        """The `python -m training train` arguments (without --out) that reproduce this config: every option
        field that is always written or differs from its default, in field order."""
        args: list[str] = []
        for item in cli_fields():
            value, spec = getattr(self, item.name), item.metadata["cli"]
            if isinstance(value, dict):
                for key, option_value in sorted(value.items()):
                    args += [flag_of(item), f"{key}={json.dumps(option_value)}"]
            elif isinstance(value, bool):
                if value != item.default:
                    args.append(flag_of(item))
            elif spec["always"] or value != item.default:
                args += [flag_of(item), f"{value:g}" if isinstance(value, float) else str(value)]
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


def cli_fields() -> list[dataclasses.Field]:
    """The RunConfig fields that are command-line options."""
    return [item for item in dataclasses.fields(RunConfig) if "cli" in item.metadata]


def flag_of(item: dataclasses.Field) -> str:
    spec = item.metadata["cli"]
    if spec["flag"]:
        return spec["flag"]
    prefix = "--no-" if item.type == "bool" else "--"
    return prefix + item.name.replace("_", "-")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of `train` (and of `submit`, which takes the same), made from RunConfig's fields."""
    types = {"int": int, "float": float}
    for item in cli_fields():
        spec, flag = item.metadata["cli"], flag_of(item)
        kwargs: dict = {"help": spec["help"] or None}
        if item.type == "bool":  # a True default turned off by its flag
            kwargs.update(dest=item.name, action="store_false")
        elif item.type == "dict":
            kwargs.update(dest=item.name, action="append", default=[], metavar="KEY=VALUE")
        else:
            kwargs.update(default=item.default, choices=spec["choices"])
            kind = types.get(item.type.split(" | ")[0])
            if kind is not None and not spec["text"]:
                kwargs["type"] = kind
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated config of parsed `add_run_options` arguments."""
    values = {item.name: getattr(args, item.name) for item in cli_fields() if hasattr(args, item.name)}
    values["method_options"] = dict(parse_method_option(text) for text in values.get("method_options") or [])
    return RunConfig(**values).validate()
