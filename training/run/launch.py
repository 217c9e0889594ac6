"""The train command, for every launcher alike (the job queue's worker and its Ray runner, sweeps, tuning, the
replay bench): the one place that builds `python -m training train ...`, and the same command run inside an
already-started process (a forked run, a resident worker's runs). Where runs execute is training/launch/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import UserError
from training.run import runs
from training.run.config import RunConfig, add_run_options, config_from_args

if TYPE_CHECKING:
    from training.run.resident import Resident


def train_command(train_args: list[str], out: str | Path) -> list[str]:
    """`python -m training train ARGS --out OUT` with this interpreter: the one builder of the train command."""
    return [sys.executable, "-m", "training", "train", *train_args, "--out", str(out)]


def config_command(config: RunConfig, out: str | Path, *extra: str) -> list[str]:
    """The train command of a config (and extra flags such as `--no-test`)."""
    return train_command([*config.to_cli_args(), *extra], out)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The train command's options: the run config's and the run directory."""
    add_run_options(parser)
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument(
        "--resume", action="store_true", help="go on from the run directory's saved state, if it has one"
    )


def train_from_args(args: argparse.Namespace, resident: Resident | None = None) -> int:
    """Run `train` for parsed arguments; what the command does, in this process (with `resident`: a worker's
    store of loaded models and data, training/run/resident.py)."""
    config = config_from_args(args)  # wrong arguments are said before torch is imported (seconds)
    out = Path(args.out)
    if (out / runs.EVAL).exists():
        raise UserError(f"{out} already holds a finished run: choose another --out.")
    from training.run.trainer import train  # torch: only once the arguments are known to be good

    return train(config, out, resume=args.resume, resident=resident)


def train_in_process(argv: list[str], resident: Resident | None = None) -> int:
    """`python -m training train ARGV` inside this process (a forked run of a sweep, or one of a resident
    worker's runs), with the command's exit codes: 2 and one line on stderr for a user error."""
    parser = argparse.ArgumentParser(prog="python -m training train")
    add_train_options(parser)
    try:
        return train_from_args(parser.parse_args(argv), resident) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
