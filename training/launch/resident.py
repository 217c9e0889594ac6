"""`ResidentExecutor`: `slots` resident workers, each a process started from the fork server (forked.py) that trains
the runs it is given one after another and keeps the base model (pristine, each run gets a copy), the datasets
and a frozen vision tower's image features loaded between them (training/run/resident.py). A run that stops or
fails ends its worker, so nothing a broken run left behind reaches the next one; the next run starts a new one."""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

from training.launch.executor import STOP_GRACE_S, PollingExecutor, RunHandle, RunSpec
from training.launch.forked import die_with, forkserver, output_to, set_threads
from training.run import runs
from training.run.launch import train_in_process


def _serve_runs(connection: multiprocessing.connection.Connection, launcher_pid: int) -> None:
    """The body of a resident worker: train each job it is sent (`python -m training train ARGS --out RUN_DIR`,
    its output in the run's log.txt) and answer with the run's exit code. It ends after a run that did not finish
    (stopped or failed), so nothing a broken run left behind reaches the next one."""
    from training.run.resident import Resident  # heavy (torch, the model): loaded in the worker, not the launcher

    die_with(launcher_pid)
    resident = Resident()
    idle_output = os.devnull
    while True:
        # Between runs a stop ends the worker; during a run the trainer's own handlers stop the run.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        output_to(idle_output)
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        train_args, run_dir, threads = job
        output_to(Path(run_dir) / runs.LOG)
        set_threads(threads)
        try:
            code = train_in_process([*train_args, "--out", run_dir], resident)
        except SystemExit as exc:  # argparse's way of refusing arguments
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:
            traceback.print_exc()
            code = 1
        output_to(idle_output)
        gc.collect()  # the run's model copy, optimizer and activations go before the next run loads
        connection.send(code)
        if code != runs.EXIT_FINISHED:
            return


class ResidentWorker:
    """One resident worker process; started on its first run, and again after a run that ended it."""

    def __init__(self) -> None:
        self.process: multiprocessing.Process | None = None
        self.connection: multiprocessing.connection.Connection | None = None
        self.busy = False

    def send(self, job: tuple) -> None:
        if self.process is None or not self.process.is_alive():
            self.connection, child = forkserver().Pipe()
            self.process = forkserver().Process(target=_serve_runs, daemon=False, args=(child, os.getpid()))
            self.process.start()
            child.close()
        self.busy = True
        try:
            self.connection.send(job)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker died as it was handed the run: `answer` reports its exit code

    def answer(self) -> int | None:
        """The run's exit code once it has ended (the worker's own if it died: -1 if none), None while it runs."""
        alive = self.process.is_alive()
        try:
            if self.connection.poll():
                code = self.connection.recv()
                if code != runs.EXIT_FINISHED:
                    self.process.join(STOP_GRACE_S)  # the worker ends after such a run
                    if self.process.is_alive():  # it must not be handed the next run: `send` starts a fresh one
                        self.process.kill()
                        self.process.join()
                self.busy = False
                return code
        except (EOFError, OSError):
            pass
        if alive:
            return None
        self.process.join()
        self.busy = False
        return self.process.exitcode if self.process.exitcode else -1

    def close(self) -> None:
        """End the worker between runs (and kill it if it does not end)."""
        if self.process is None or self.process.exitcode is not None:
            return
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(STOP_GRACE_S)
        if self.process.exitcode is None:
            self.process.terminate()
            self.process.join(STOP_GRACE_S)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()


@dataclass
class ResidentHandle(RunHandle):
    worker: ResidentWorker | None = None


class ResidentExecutor(PollingExecutor):
    """`slots` resident workers, one run at a time each, with `threads` torch threads unless a run's spec says
    (None: torch's default, as a fresh process would take)."""

    runs_in = "resident workers"

    def __init__(self, slots: int = 1, threads: int | None = None) -> None:
        super().__init__(slots, threads)
        self.workers = [ResidentWorker() for _ in range(slots)]

    def launch(self, spec: RunSpec) -> ResidentHandle:
        worker = next((w for w in self.workers if not w.busy), None)
        if worker is None:
            raise RuntimeError(f"all {self.slots} resident workers are busy: wait for a run to end first")
        Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
        handle = ResidentHandle(spec, worker=worker)
        worker.send((spec.train_args, spec.run_dir, self.threads_of(spec)))
        return handle

    def poll(self, handle: ResidentHandle) -> int | None:
        if handle.returncode is None:
            handle.returncode = handle.worker.answer()
        return handle.returncode

    def stop(self, handle: ResidentHandle) -> None:
        """SIGTERM: the run stops after its current step, and its worker ends with it."""
        if self.poll(handle) is None:
            handle.worker.process.terminate()

    def kill(self, handle: ResidentHandle) -> None:
        if self.poll(handle) is None:
            handle.worker.process.kill()

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
