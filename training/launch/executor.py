"""The executor interface (see the package's docstring) and the two loops every launcher runs on it: `run_all`
(a stream of runs, `slots` at a time) and `run_one` (one run, waited for)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from training.run import runs

STOP_GRACE_S = 30  # a stopped run gets this long to finish its step before it is killed
ERROR_TAIL_LINES = 5  # a failed run's error: the last lines of its log
POLL_S = 0.05  # how often an executor without a way to wait on its runs looks at them


@dataclass
class RunSpec:
    """One run to launch: `python -m training train TRAIN_ARGS --out RUN_DIR`."""

    name: str
    run_dir: str
    train_args: list[str]  # without --out
    threads: int | None = None  # torch threads; None: the executor's own (its `threads`)
    cwd: str | None = None  # where relative dataset paths resolve: the launcher's folder, on a Ray node too


@dataclass
class RunResult:
    name: str
    returncode: int
    wall_s: float
    error: str = ""  # for a failed run: the last lines of its log, or why the executor lost it

    @property
    def finished(self) -> bool:
        return self.returncode == runs.EXIT_FINISHED


@dataclass
class RunHandle:
    """A launched run; each executor keeps what it needs to reach the run in a subclass."""

    spec: RunSpec
    started: float = field(default_factory=time.perf_counter)
    returncode: int | None = None  # set by `poll` once the run has ended
    error: str = ""  # why the executor lost the run, where its exit code cannot say (a Ray task that died)


class RunExecutor(Protocol):
    """Where runs execute: a local process, a forked one, a resident worker, a Ray task."""

    slots: int  # how many runs it trains at once
    threads: int | None  # torch threads of a run whose spec names none (None: torch's default)

    def describe(self) -> dict: ...

    def launch(self, spec: RunSpec) -> RunHandle: ...

    def poll(self, handle: RunHandle) -> int | None: ...

    def wait(self, handles: list[RunHandle], timeout: float | None = None) -> list[RunHandle]: ...

    def stop(self, handle: RunHandle) -> None: ...

    def kill(self, handle: RunHandle) -> None: ...

    def close(self) -> None: ...


class PollingExecutor:
    """What the local executors share: waiting by polling, their threads, and closing as a context manager."""

    slots: int = 1
    threads: int | None = None
    runs_in = ""  # where its runs execute, in words, for describe()

    def __init__(self, slots: int = 1, threads: int | None = None) -> None:
        self.slots = slots
        self.threads = threads

    def describe(self) -> dict:
        return {"executor": "local", "jobs": self.slots, "threads_per_run": self.threads, "runs_in": self.runs_in}

    def poll(self, handle: RunHandle) -> int | None:
        raise NotImplementedError

    def threads_of(self, spec: RunSpec) -> int | None:
        return spec.threads if spec.threads is not None else self.threads

    def wait(self, handles: list[RunHandle], timeout: float | None = None) -> list[RunHandle]:
        """The runs of `handles` that have ended, once at least one has (or `timeout` seconds have passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ended = [h for h in handles if self.poll(h) is not None]
            if ended or (deadline is not None and time.monotonic() >= deadline):
                return ended
            time.sleep(POLL_S)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def result(handle: RunHandle) -> RunResult:
    """What a run that ended comes to: its exit code, wall time and, if it failed, why."""
    code = handle.returncode if handle.returncode is not None else -1
    error = handle.error
    if not error and code != runs.EXIT_FINISHED:
        error = "\n".join(runs.tail(Path(handle.spec.run_dir) / runs.LOG, ERROR_TAIL_LINES))
    return RunResult(handle.spec.name, code, round(time.perf_counter() - handle.started, 2), error)


def stop_all(executor: RunExecutor, handles: list[RunHandle], grace_s: float = STOP_GRACE_S) -> None:
    """Ask each run to stop after its step, give them `grace_s` seconds together, then kill those left."""
    for handle in handles:
        executor.stop(handle)
    deadline = time.monotonic() + grace_s
    left = [h for h in handles if executor.poll(h) is None]
    while left and time.monotonic() < deadline:
        executor.wait(left, min(1.0, max(0.0, deadline - time.monotonic())))
        left = [h for h in left if executor.poll(h) is None]
    for handle in left:
        executor.kill(handle)
    if left:
        executor.wait(left, grace_s)  # reap them: a killed run ends at once


def run_all(executor: RunExecutor, specs: Iterable[RunSpec]) -> Iterator[RunResult]:
    """Run `specs`, `executor.slots` at a time, yielding each result as its run ends. The next spec is taken only
    when a slot is free, so the caller can stop handing them out (a time limit) without cancelling any run; an
    interrupt (Ctrl-C, SIGTERM, the caller stopping) stops the runs in flight before it goes on."""
    pending = iter(specs)
    running: list[RunHandle] = []
    try:
        while True:
            while len(running) < executor.slots:
                spec = next(pending, None)
                if spec is None:
                    break
                running.append(executor.launch(spec))
            if not running:
                return
            for handle in executor.wait(running):
                running.remove(handle)
                yield result(handle)
    except BaseException:
        stop_all(executor, running)
        raise


def run_one(executor: RunExecutor, spec: RunSpec) -> RunResult:
    """Run one spec to its end; interrupted, the run stops after its step (as a fresh process would)."""
    handle = executor.launch(spec)
    try:
        while not executor.wait([handle]):
            pass
    except BaseException:
        stop_all(executor, [handle])
        raise
    return result(handle)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_stops_runs() -> Iterator[None]:
    """Within the block, SIGTERM (a `kill`, a container stopping) acts as Ctrl-C does: `run_all` and `run_one` stop
    the runs in flight after their step before the launcher ends. Only the main thread can install the handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
