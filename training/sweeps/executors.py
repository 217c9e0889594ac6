"""Executors: where the runs of a sweep execute. Each run is `python -m training train ... --out RUN_DIR`,
run by a local pool or by a Ray task.

The local pool's default is a resident worker per slot (`ResidentWorker`): one process, started from a fork server
that has imported torch and the trainer once, trains its runs one after another and keeps the base model (pristine,
each run gets a copy), the datasets and a frozen vision tower's image features loaded between them
(training/run/resident.py); a run that stops or fails ends its worker, and the next run starts in a fresh one.
With `fresh_process`, each run is forked from the fork server instead (`ForkedRun`: isolation, memory freed at
exit, but the model and data loaded again every run); a Ray task starts a fresh interpreter.

An executor takes an iterator of jobs and yields results as runs finish; it pulls the next job only when a
slot is free, so the runner can stop handing out jobs (time limit, Ctrl-C) without cancelling any.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from training.errors import UserError
from training.run import runs
from training.run.launch import (
    STOP_GRACE_S,
    connect_ray,
    die_with_parent,
    ray_task_options,
    run_environment,
    stop_process,
    train_command,
    train_in_process,
)


@dataclass
class RunJob:
    name: str
    run_dir: str
    train_args: list[str]  # `python -m training train` arguments, without --out
    threads: int | None = 1  # torch threads; None: torch's default for this environment, as a fresh process has
    cwd: str | None = None  # where relative dataset paths resolve: the sweep's folder, on a Ray node too


@dataclass
class RunResult:
    name: str
    returncode: int
    wall_s: float
    error: str = ""  # for a failed run: the last lines of its log

    @property
    def finished(self) -> bool:
        return self.returncode == runs.EXIT_FINISHED


def run_train_process(job: RunJob) -> RunResult:
    """Run one training process (a fresh interpreter) to its end; its output goes to the run's log.txt."""
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(job.train_args, run_dir)
    started = time.perf_counter()
    with open(run_dir / runs.LOG, "a", encoding="utf-8") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=run_environment(job.threads),
            cwd=job.cwd,
            preexec_fn=die_with_parent,
        )
        try:
            returncode = process.wait()
        except BaseException:
            stop_process(process)
            raise
    wall = time.perf_counter() - started
    error = "" if returncode == runs.EXIT_FINISHED else "\n".join(runs.tail(run_dir / runs.LOG, 5))
    return RunResult(job.name, returncode, round(wall, 2), error)


def _die_with(pid: int) -> None:
    """In a forked run: kill this process as soon as process `pid` (the sweep) ends, however it ends.

    The fork server is the run's parent and outlives the sweep while runs hold it open, so the parent-death
    signal cannot do this here; a thread waits on a pidfd of the sweep instead (polling where there is none).
    """

    def watch() -> None:
        try:
            handle = os.pidfd_open(pid)
            select.select([handle], [], [])
        except (AttributeError, OSError):
            while True:
                time.sleep(1)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def _output_to(path: str | Path) -> None:
    """Send this process's stdout and stderr (the file descriptors, so C code's output too) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    os.close(handle)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch  # torch: only a worker process loads it, never the sweep's own

        torch.set_num_threads(threads)


def _train_in_child(train_args: list[str], run_dir: str, threads: int | None, sweep_pid: int) -> None:
    """The body of a forked run: `python -m training train ARGS --out RUN_DIR`, its output in log.txt."""
    _die_with(sweep_pid)
    _output_to(Path(run_dir) / runs.LOG)
    _set_threads(threads)
    sys.exit(train_in_process([*train_args, "--out", run_dir]))


_FORKSERVER = None


def _forkserver() -> multiprocessing.context.BaseContext:
    """The fork server runs and workers start from, having imported torch and the trainer once."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["training.sweeps.executors", "training.run.trainer"])
    return _FORKSERVER


class ForkedRun:
    """One run in a process forked from the preloaded fork server (it keeps its own exit code)."""

    def __init__(self, job: RunJob) -> None:
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        self.process = _forkserver().Process(
            target=_train_in_child, daemon=False, args=(job.train_args, job.run_dir, job.threads, os.getpid())
        )

    def run(self, job: RunJob, running: set) -> RunResult:
        started = time.perf_counter()
        self.process.start()
        running.add(self)
        try:
            self.process.join()
        finally:
            running.discard(self)
        code = self.process.exitcode
        error = "" if code == runs.EXIT_FINISHED else "\n".join(runs.tail(Path(job.run_dir) / runs.LOG, 5))
        return RunResult(job.name, code if code is not None else -1, round(time.perf_counter() - started, 2), error)

    def stop(self) -> None:
        """Ask the trainer to stop (it ends after the current step), then kill it if it does not."""
        if self.process.exitcode is not None:
            return
        self.process.terminate()
        self.process.join(STOP_GRACE_S)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()


def _run_forked(job: RunJob, running: set) -> RunResult:
    return ForkedRun(job).run(job, running)


def _serve_runs(connection: multiprocessing.connection.Connection, sweep_pid: int) -> None:
    """The body of a resident worker: train each job it is sent (`python -m training train ARGS --out RUN_DIR`,
    its output in the run's log.txt) and answer with the run's exit code. It ends after a run that did not finish
    (stopped or failed), so nothing a broken run left behind reaches the next one."""
    from training.run.resident import Resident  # torch: only a worker process loads it, never the sweep's own

    _die_with(sweep_pid)
    resident = Resident()
    idle_output = os.devnull
    while True:
        # Between runs a stop ends the worker; during a run the trainer's own handlers stop the run.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _output_to(idle_output)
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        train_args, run_dir, threads = job
        _output_to(Path(run_dir) / runs.LOG)
        _set_threads(threads)
        try:
            code = train_in_process([*train_args, "--out", run_dir], resident)
        except SystemExit as exc:  # argparse's way of refusing arguments
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:
            traceback.print_exc()
            code = 1
        _output_to(idle_output)
        gc.collect()  # the run's model copy, optimizer and activations go before the next run loads
        connection.send(code)
        if code != runs.EXIT_FINISHED:
            return


class ResidentWorker:
    """A process that trains the runs it is given one after another, keeping the base model, the datasets and
    frozen image features loaded between them (training/run/resident.py); started on its first run, and again
    after a run that ended it."""

    def __init__(self) -> None:
        self.process = None
        self.connection: multiprocessing.connection.Connection | None = None

    def run(self, job: RunJob, running: set) -> RunResult:
        started = time.perf_counter()
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        if self.process is None or not self.process.is_alive():
            self.start()
        running.add(self)
        try:
            code = self.exchange((job.train_args, job.run_dir, job.threads))
        finally:
            running.discard(self)
        if code != runs.EXIT_FINISHED:
            self.process.join(STOP_GRACE_S)  # the worker ends after such a run
        error = "" if code == runs.EXIT_FINISHED else "\n".join(runs.tail(Path(job.run_dir) / runs.LOG, 5))
        return RunResult(job.name, code, round(time.perf_counter() - started, 2), error)

    def start(self) -> None:
        self.connection, child = _forkserver().Pipe()
        self.process = _forkserver().Process(target=_serve_runs, daemon=False, args=(child, os.getpid()))
        self.process.start()
        child.close()

    def exchange(self, job: tuple) -> int:
        """Send a job and wait for its exit code, or for the worker to die (its exit code then, -1 if none)."""
        try:
            self.connection.send(job)
            multiprocessing.connection.wait([self.connection, self.process.sentinel])
            if self.connection.poll():
                return self.connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass
        self.process.join()
        return self.process.exitcode if self.process.exitcode else -1

    def stop(self) -> None:
        """Ask the run in progress to stop (it ends after the current step, and the worker with it), then kill the
        worker if it does not end."""
        if self.process is None or self.process.exitcode is not None:
            return
        self.process.terminate()
        self.process.join(STOP_GRACE_S)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()

    def close(self) -> None:
        """End the worker between runs."""
        if self.process is None or self.process.exitcode is not None:
            return
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(STOP_GRACE_S)
        self.stop()


def _run_resident(job: RunJob, running: set, idle: queue.SimpleQueue) -> RunResult:
    worker = idle.get()
    try:
        return worker.run(job, running)
    finally:
        idle.put(worker)


class LocalExecutor:
    """A pool of `jobs` runs at a time on this machine, each with cores // jobs threads: each slot a resident
    worker, or with `fresh_process` each run a process of its own."""

    def __init__(self, jobs: int = 1, fresh_process: bool = False) -> None:
        if jobs < 1:
            raise UserError("--jobs must be at least 1.")
        self.jobs = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.fresh_process = fresh_process

    def describe(self) -> dict:
        return {
            "executor": "local",
            "jobs": self.jobs,
            "threads_per_run": self.threads,
            "runs_in": "a fresh process each" if self.fresh_process else "resident workers",
        }

    def run(self, jobs: Iterable[RunJob]) -> Iterator[RunResult]:
        pending = iter(jobs)
        in_flight: set[Future] = set()
        running: set = set()  # ForkedRun or ResidentWorker: what `stop` reaches
        workers = [ResidentWorker() for _ in range(0 if self.fresh_process else self.jobs)]
        idle: queue.SimpleQueue = queue.SimpleQueue()
        for worker in workers:
            idle.put(worker)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            try:
                while True:
                    while len(in_flight) < self.jobs:
                        job = next(pending, None)
                        if job is None:
                            break
                        job.threads = self.threads
                        if self.fresh_process:
                            in_flight.add(pool.submit(_run_forked, job, running))
                        else:
                            in_flight.add(pool.submit(_run_resident, job, running, idle))
                    if not in_flight:
                        return
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM, or the consumer stopped): stop the runs in flight before leaving.
                for run in list(running):
                    run.stop()
                raise
            finally:
                for worker in workers:
                    worker.close()


class RayExecutor:
    """Each run a Ray task asking for num_cpus/num_gpus; a local Ray instance unless an address is given.

    On a cluster, every node needs the project at the same path and the sweep's out folder on shared storage.
    """

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0) -> None:
        try:
            # optional dependency (requirements-ray.txt): its absence is said before any run starts
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def run(self, jobs: Iterable[RunJob]) -> Iterator[RunResult]:
        import ray  # optional dependency: requirements-ray.txt

        started_here = connect_ray(self.address)
        remote = ray.remote(run_train_process).options(**ray_task_options(self.num_cpus, self.num_gpus))
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
