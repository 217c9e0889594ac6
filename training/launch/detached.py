"""`DetachedExecutor`: each run a new interpreter in a session of its own, so that it outlives its launcher (the job
queue's runs: an app that restarts keeps its jobs). A launcher that starts later adopts such a run by its pid and
the kernel's start time of that pid (pids.py); an adopted run's exit code is unknown, only that it ended."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from training.launch.executor import PollingExecutor, RunHandle, RunSpec
from training.launch.pids import is_alive, process_start_time, signal_group
from training.launch.process import run_environment
from training.run import runs
from training.run.launch import train_command


@dataclass
class DetachedHandle(RunHandle):
    pid: int = 0  # also the run's process group: it has its own session
    pid_start: str | None = None
    process: subprocess.Popen | None = None  # None: adopted, not this process's child

    @property
    def exit_known(self) -> bool:
        """Whether `returncode` is the run's exit code: only a child's can be read."""
        return self.process is not None


class DetachedExecutor(PollingExecutor):
    """Runs in their own sessions, in their run directories, output appended to log.txt, unbuffered."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots

    def describe(self) -> dict:
        return {"executor": "local", "jobs": self.slots, "runs_in": "a new process each, in its own session"}

    def launch(self, spec: RunSpec, command: list[str] | None = None) -> DetachedHandle:
        """Start `spec`'s train command (or `command`: a job's own, a stand-in trainer in tests)."""
        run_dir = Path(spec.run_dir).resolve()  # one folder for this process and the run's (its cwd may differ)
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(run_environment(spec.threads), PYTHONUNBUFFERED="1")
        # Append mode, and the child gets the file itself: no pipe that fills up when nobody reads it.
        with open(run_dir / runs.LOG, "ab") as log:
            process = subprocess.Popen(
                command or train_command(spec.train_args, run_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=run_dir,
                env=env,
            )
        return DetachedHandle(spec, pid=process.pid, pid_start=process_start_time(process.pid), process=process)

    def adopt(self, spec: RunSpec, pid: int, pid_start: str | None) -> DetachedHandle:
        """A handle on a run another launcher started (its pid and that pid's start time, as it recorded them)."""
        return DetachedHandle(spec, pid=pid, pid_start=pid_start)

    def poll(self, handle: DetachedHandle) -> int | None:
        """The run's exit code once it has ended (-1 for an adopted run, whose code is unknown); what the run
        started in its group (data loaders) is killed then, so that it does not keep the memory."""
        if handle.returncode is not None:
            return handle.returncode
        if handle.process is not None:
            code = handle.process.poll()
            if code is None:
                return None
        elif is_alive(handle.pid, handle.pid_start):
            return None
        else:
            code = -1
        signal_group(handle.pid, signal.SIGKILL)
        handle.returncode = code
        return code

    def stop(self, handle: DetachedHandle) -> None:
        """SIGTERM to the run's group: the trainer stops after its current step."""
        if self.poll(handle) is None:
            signal_group(handle.pid, signal.SIGTERM)

    def kill(self, handle: DetachedHandle) -> None:
        """SIGKILL to the run's group, while it is still the run (a pid reused since is left alone)."""
        if self.poll(handle) is None:
            signal_group(handle.pid, signal.SIGKILL)
