"""`ProcessExecutor`: each run a fresh interpreter, `python -m training train ... --out RUN_DIR`, its output in the
run's log.txt. It dies with its launcher (the parent-death signal), so no run is orphaned."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from training.launch.executor import PollingExecutor, RunHandle, RunSpec
from training.paths import REPO_ROOT
from training.run import runs
from training.run.launch import train_command

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not load libraries
except OSError:
    _LIBC = None


def die_with_parent() -> None:
    """In the child: be killed when the launcher dies, even by SIGKILL (Linux), so no run is orphaned."""
    if _LIBC is not None and sys.platform.startswith("linux"):
        _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def run_environment(threads: int | None, root: Path = REPO_ROOT) -> dict[str, str]:
    """A run process's environment: this one's, with `threads` torch threads (None: as this environment says) and
    the project at `root` (this checkout, or another commit's worktree) first on the path."""
    env = dict(os.environ)
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(max(1, threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class ProcessHandle(RunHandle):
    process: subprocess.Popen | None = None


class ProcessExecutor(PollingExecutor):
    """Runs in new interpreters, `slots` at a time, each with `threads` torch threads unless its spec says, running
    the code at `root` (this checkout by default; the replay bench gives an older commit's worktree)."""

    runs_in = "a new process each"

    def __init__(self, slots: int = 1, threads: int | None = None, root: Path = REPO_ROOT) -> None:
        super().__init__(slots, threads)
        self.root = Path(root)

    def launch(self, spec: RunSpec) -> ProcessHandle:
        run_dir = Path(spec.run_dir).resolve()  # one folder for this process and the run's (its cwd may differ)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / runs.LOG, "a", encoding="utf-8") as log:
            process = subprocess.Popen(
                train_command(spec.train_args, run_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=run_environment(self.threads_of(spec), self.root),
                cwd=spec.cwd,
                preexec_fn=die_with_parent,
            )
        return ProcessHandle(spec, process=process)

    def poll(self, handle: ProcessHandle) -> int | None:
        if handle.returncode is None:
            handle.returncode = handle.process.poll()
        return handle.returncode

    def stop(self, handle: ProcessHandle) -> None:
        """SIGTERM: the trainer stops after its current step."""
        if self.poll(handle) is None:
            handle.process.send_signal(signal.SIGTERM)

    def kill(self, handle: ProcessHandle) -> None:
        if self.poll(handle) is None:
            handle.process.kill()
