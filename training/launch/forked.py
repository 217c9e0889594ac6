"""`ForkedExecutor`: each run a process forked from a fork server that has imported torch and the trainer once
(isolation and memory freed at exit, without an interpreter's start-up; the model and data are loaded every run).
The fork server and what a forked child does first (die with its launcher, write to the run's log, set its
threads) are shared with the resident workers (resident.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from training.launch.executor import PollingExecutor, RunHandle, RunSpec
from training.run import runs
from training.run.launch import train_in_process

_FORKSERVER = None


def forkserver() -> multiprocessing.context.BaseContext:
    """The fork server runs and workers start from, having imported torch and the trainer once."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(
            ["training.launch.forked", "training.launch.resident", "training.run.trainer"]
        )
    return _FORKSERVER


def die_with(pid: int) -> None:
    """In a forked run: kill this process as soon as process `pid` (the launcher) ends, however it ends.

    The fork server is the run's parent and outlives the launcher while runs hold it open, so the parent-death
    signal cannot do this here; a thread waits on a pidfd of the launcher instead (polling where there is none).
    """

    def watch() -> None:
        try:
            import select  # used only in this watcher thread of a forked child

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


def output_to(path: str | Path) -> None:
    """Send this process's stdout and stderr (the file descriptors, so C code's output too) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    os.close(handle)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch  # heavy: this module is imported by the sweep and jobs command lines, torch only in a run

        torch.set_num_threads(threads)


def _train_in_child(train_args: list[str], run_dir: str, threads: int | None, launcher_pid: int) -> None:
    """The body of a forked run: `python -m training train ARGS --out RUN_DIR`, its output in log.txt."""
    die_with(launcher_pid)
    output_to(Path(run_dir) / runs.LOG)
    set_threads(threads)
    sys.exit(train_in_process([*train_args, "--out", run_dir]))


@dataclass
class ForkedHandle(RunHandle):
    process: multiprocessing.Process | None = None


class ForkedExecutor(PollingExecutor):
    """Runs forked from the fork server, `slots` at a time, each with `threads` torch threads unless its spec says."""

    runs_in = "a fresh process each"

    def launch(self, spec: RunSpec) -> ForkedHandle:
        Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
        process = forkserver().Process(
            target=_train_in_child,
            daemon=False,
            args=(spec.train_args, spec.run_dir, self.threads_of(spec), os.getpid()),
        )
        handle = ForkedHandle(spec, process=process)
        process.start()
        return handle

    def poll(self, handle: ForkedHandle) -> int | None:
        if handle.returncode is None and handle.process.exitcode is not None:
            handle.returncode = handle.process.exitcode
        return handle.returncode

    def stop(self, handle: ForkedHandle) -> None:
        """SIGTERM: the trainer stops after its current step."""
        if self.poll(handle) is None:
            handle.process.terminate()

    def kill(self, handle: ForkedHandle) -> None:
        if self.poll(handle) is None:
            handle.process.kill()
