"""Executors: where the runs of a sweep execute. Each run is `python -m training train ... --out RUN_DIR`
in its own process (isolation, memory freed at exit), launched by a local pool or by a Ray task.

An executor takes an iterator of jobs and yields results as runs finish; it pulls the next job only when a
slot is free, so the runner can stop handing out jobs (time limit, Ctrl-C) without cancelling any.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from training import runs
from training.errors import UserError
from training.paths import REPO_ROOT

STOP_GRACE_S = 30  # a stopped run gets this long to finish its step before it is killed
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child must not load libraries
except OSError:
    _LIBC = None


@dataclass
class RunJob:
    name: str
    run_dir: str
    train_args: list[str]  # `python -m training train` arguments, without --out
    threads: int = 1


@dataclass
class RunResult:
    name: str
    returncode: int
    wall_s: float
    error: str = ""  # for a failed run: the last lines of its log

    @property
    def finished(self) -> bool:
        return self.returncode == runs.EXIT_FINISHED


def _die_with_parent() -> None:
    """In the child: be killed when the sweep process dies, even by SIGKILL (Linux), so no run is orphaned."""
    if _LIBC is not None and sys.platform.startswith("linux"):
        _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def run_environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(max(1, threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_train_process(job: RunJob, running: set | None = None) -> RunResult:
    """Run one training process to its end; its output goes to the run's log.txt.

    `running`, when given, holds the process while it runs, so that the caller can stop it.
    """
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "training", "train", *job.train_args, "--out", str(run_dir)]
    started = time.perf_counter()
    with open(run_dir / runs.LOG, "a", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   env=run_environment(job.threads), preexec_fn=_die_with_parent)  # fmt: skip
        if running is not None:
            running.add(process)
        try:
            returncode = process.wait()
        except BaseException:
            stop_process(process)
            raise
        finally:
            if running is not None:
                running.discard(process)
    wall = time.perf_counter() - started
    error = "" if returncode == runs.EXIT_FINISHED else "\n".join(runs.tail(run_dir / runs.LOG, 5))
    return RunResult(job.name, returncode, round(wall, 2), error)


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


class LocalExecutor:
    """A pool of `jobs` runs at a time on this machine, each with cores // jobs threads."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise UserError("--jobs must be at least 1.")
        self.jobs = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def describe(self) -> dict:
        return {"executor": "local", "jobs": self.jobs, "threads_per_run": self.threads}

    def run(self, jobs: Iterable[RunJob]) -> Iterator[RunResult]:
        pending = iter(jobs)
        in_flight: set[Future] = set()
        running: set[subprocess.Popen] = set()
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            try:
                while True:
                    while len(in_flight) < self.jobs:
                        job = next(pending, None)
                        if job is None:
                            break
                        job.threads = self.threads
                        in_flight.add(pool.submit(run_train_process, job, running))
                    if not in_flight:
                        return
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM, or the consumer stopped): stop the runs in flight before leaving.
                for process in list(running):
                    stop_process(process)
                raise


class RayExecutor:
    """Each run a Ray task asking for num_cpus/num_gpus; a local Ray instance unless an address is given.

    On a cluster, every node needs the project at the same path and the sweep's out folder on shared storage.
    """

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def run(self, jobs: Iterable[RunJob]) -> Iterator[RunResult]:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        # Workers import this module to run the task; the project root must be on their path.
        remote = ray.remote(run_train_process).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
        )  # fmt: skip
        capacity = max(1, int(ray.cluster_resources().get("CPU", 1) // max(self.num_cpus, 1e-9)))
        if self.num_gpus:
            capacity = min(capacity, max(1, int(ray.cluster_resources().get("GPU", 0) // self.num_gpus)))
        pending = iter(jobs)
        in_flight: dict = {}
        try:
            while True:
                while len(in_flight) < capacity:
                    job = next(pending, None)
                    if job is None:
                        break
                    job.threads = max(1, int(self.num_cpus))
                    in_flight[remote.remote(job)] = job
                if not in_flight:
                    return
                done, _ = ray.wait(list(in_flight), num_returns=1)
                job = in_flight.pop(done[0])
                try:
                    yield ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    yield RunResult(job.name, -1, 0.0, f"Ray task failed: {str(exc).splitlines()[0][:300]}")
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()
