"""How a run is launched, for every launcher alike (the job queue's worker and its Ray runner, sweeps, tuning, the
replay bench): the one place that builds `python -m training train ...`, the same command run inside an
already-started process (a sweep's forked runs), and the process and Ray helpers they share."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import UserError
from training.paths import REPO_ROOT
from training.run import runs
from training.run.config import RunConfig, add_run_options, config_from_args
from training.run.rates import LR_TABLE_ENV

if TYPE_CHECKING:
    from training.run.resident import Resident

STOP_GRACE_S = 30  # a stopped run gets this long to finish its step before it is killed
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not load libraries
except OSError:
    _LIBC = None


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


def die_with_parent() -> None:
    """In the child: be killed when the sweep process dies, even by SIGKILL (Linux), so no run is orphaned."""
    if _LIBC is not None and sys.platform.startswith("linux"):
        _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def run_environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(max(1, threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def stop_process(process: subprocess.Popen) -> None:
    """Ask the trainer to stop (it ends after the current step), then kill it if it does not."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect_ray(address: str | None) -> bool:
    """Join the Ray cluster at `address` (None: start a local instance) unless this process already has;
    True if this call connected (and so should disconnect when done)."""
    import ray  # optional and heavy: requirements-ray.txt, loaded only by the Ray executors

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def ray_task_options(num_cpus: float, num_gpus: float) -> dict:
    """Options of a run's Ray task: its resource request, no retry (a run is not idempotent), and the
    project root on the worker's path, since workers import this package to run the task. A learning-rate
    table of its own ($VLPEFT_LR_TABLE, e.g. a sweep on another base model) goes along by its absolute path,
    which holds on every node (each has the project at the same path)."""
    env = {"PYTHONPATH": str(REPO_ROOT)}
    if os.environ.get(LR_TABLE_ENV):
        env[LR_TABLE_ENV] = str(Path(os.environ[LR_TABLE_ENV]).resolve())
    return {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 0, "runtime_env": {"env_vars": env}}
