"""The study's protocol for one run, read from the reference grid's sweep file (sweeps/paper.yaml): the settings
every grid run used (towers, batch, patience, step floor, epoch cap, test subset), and where a run's own settings
leave it. A run that follows it can be set beside the grid's curves; one that does not is said not to be, and why.
"""

from __future__ import annotations

import functools
from pathlib import Path

from training.catalog import trained_towers
from training.errors import UserError
from training.paths import PACKAGE_DIR, REPO_ROOT
from training.run.config import DEFAULT_EPOCHS, RunConfig
from training.sweeps.grid import load_spec

# Inside the package when installed from a wheel (pyproject.toml's package-dir), else the checkout's sweeps/.
_INSTALLED_SWEEP = PACKAGE_DIR / "study_sweeps" / "paper.yaml"
STUDY_SWEEP = _INSTALLED_SWEEP if _INSTALLED_SWEEP.is_file() else REPO_ROOT / "sweeps" / "paper.yaml"
# The settings of the grid's runs that a form shows; the rest (learning rate, reparametrisation) come tuned.
PROTOCOL_FIELDS = ("towers", "batch_size", "patience", "min_steps", "epochs", "eval_limit")


@functools.cache
def _settings(sweep: Path) -> dict[str, dict]:
    if not sweep.is_file():
        raise UserError(
            f"The study's schedule is read from {sweep}, which is not here: run from a checkout of the project "
            "(an installed wheel does not carry sweeps/)."
        )
    spec = load_spec(sweep)
    return {task: {**spec.settings, **spec.tasks.get(task, {})} for task in spec.tasks}


def study_settings(task: str, sweep: Path = STUDY_SWEEP) -> dict:
    """The RunConfig values of the study's schedule for `task`: towers, batch_size, patience, min_steps, epochs
    and eval_limit (e.g. caption: text, 32, 3, 300, 3.0, 300)."""
    values = _settings(sweep).get(task, {})
    return {name: values[name] for name in PROTOCOL_FIELDS if name in values}


def departures(config: RunConfig | dict, sweep: Path = STUDY_SWEEP, with_dataset: bool = True) -> list[str]:
    """Where a run's settings leave the study's protocol, one short phrase each ('towers both (study: text)'); []
    when it follows it. Another base model or dataset (`with_dataset`) is a departure too: the grid's curves are
    for the embedded ones."""
    config = RunConfig.from_dict(config) if isinstance(config, dict) else config
    study = study_settings(config.task, sweep)
    said: list[str] = []
    if config.base_model:
        said.append("another base model (the grid used the embedded scene-BLIP)")
    if config.dataset and with_dataset:
        said.append("another dataset (the grid used the embedded scenes)")
    if config.method != "zero-shot":
        towers, expected = trained_towers(config.method, config.towers), trained_towers(config.method, study["towers"])
        if towers != expected:
            said.append(f"towers {towers} (study: {expected})")
        epochs = config.epochs or DEFAULT_EPOCHS[config.task]
        if epochs != study["epochs"]:
            said.append(f"an epoch cap of {epochs:g} (study: {study['epochs']:g})")
        if config.max_steps:
            said.append(f"stopped at {config.max_steps:,} steps (study: early stopping decides)")
        if (config.min_steps or 0) != study.get("min_steps", 0):
            said.append(f"a step floor of {config.min_steps or 0:,} (study: {study.get('min_steps', 0):,})")
        if config.patience != study["patience"]:
            said.append(f"patience {config.patience} (study: {study['patience']})")
        if config.batch_size * config.grad_accum != study["batch_size"]:
            said.append(f"batch size {config.batch_size * config.grad_accum} (study: {study['batch_size']})")
        if config.lr is not None:
            said.append(f"a learning rate of {config.lr:g} set by hand (study: the rate tuned on validation)")
    if config.eval_limit and config.eval_limit < study["eval_limit"]:
        said.append(f"{config.eval_limit:,} test examples scored (study: {study['eval_limit']:,})")
    return said
