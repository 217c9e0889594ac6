"""How a job ended, from the trainer's exit code (or its run directory when no exit code is known),
with the reason, the log tail and a hint for the failures people can fix themselves."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from training.jobs.status import read_progress
from training.jobs.store import TIME_LIMIT, Job, Outcome
from training.launch.pids import signal_name
from training.run import runs

LOG_TAIL_LINES = 40

# Trainer exit codes (see `python -m training train`).
EXIT_FINISHED, EXIT_USER_ERROR, EXIT_STOPPED = runs.EXIT_FINISHED, runs.EXIT_USER_ERROR, runs.EXIT_STOPPED

OOM_HINT = "The job ran out of memory: try a smaller batch size or a smaller budget."
KILLED_HINT = (
    "The process was killed with SIGKILL, most often by the system when memory runs out: "
    "try a smaller batch size or a smaller budget."
)
JAVA_HINT = (
    "Java is needed for the caption metrics and was not found: install it, "
    "e.g. `apt-get install openjdk-17-jre-headless`."
)
DISK_HINT = "The disk is full: delete old runs or free some space."

_HINTS = (
    (re.compile(r"out of memory|MemoryError|OutOfMemoryError|Cannot allocate memory", re.I), OOM_HINT),
    (
        re.compile(r"No such file or directory: '?java'?|java: (command )?not found|no `?java`? was found", re.I),
        JAVA_HINT,
    ),
    (re.compile(r"No space left on device", re.I), DISK_HINT),
)
_ERROR_LINE = re.compile(r"^error: (.+)$")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b:?.*$")


def from_exit(job: Job, returncode: int, killed_after_grace: bool = False) -> Outcome:
    """The outcome of a job process this worker started and reaped."""
    run_dir = Path(job.run_dir)
    lines = runs.tail(run_dir / runs.LOG, LOG_TAIL_LINES)
    tail = "\n".join(lines)
    if returncode == EXIT_FINISHED:
        return Outcome("finished", f"finished in {_duration(job)}", returncode, log_tail=tail)
    if job.cancel_requested_by is not None and (returncode == EXIT_STOPPED or returncode < 0):
        return _cancelled(job, returncode, tail, killed_after_grace)
    if returncode == EXIT_STOPPED:
        return Outcome(
            "interrupted",
            "stopped from outside the app (SIGTERM or a STOP file); " + _kept(run_dir),
            returncode,
            log_tail=tail,
        )
    error = _error_line(lines)
    if returncode == EXIT_USER_ERROR:  # the trainer's `error: ...` line says what to change
        reason = error or "the trainer stopped on a user error (exit code 2)"
        return Outcome("failed", reason, returncode, error=error, hint=_hint(lines) or error, log_tail=tail)
    if returncode < 0:
        name = signal_name(returncode)
        hint = KILLED_HINT if -returncode == signal.SIGKILL else _hint(lines)
        return Outcome("failed", f"killed by {name}", returncode, error=f"killed by {name}", hint=hint, log_tail=tail)
    reason = f"crashed with exit code {returncode}" + (f": {error}" if error else "")
    return Outcome(
        "failed", reason, returncode, error=error or f"exit code {returncode}", hint=_hint(lines), log_tail=tail
    )


def without_exit_code(job: Job) -> Outcome:
    """The outcome of a job whose process ended while no worker was watching it, read from its run directory."""
    run_dir = Path(job.run_dir)
    lines = runs.tail(run_dir / runs.LOG, LOG_TAIL_LINES)
    tail = "\n".join(lines)
    phase = (read_progress(run_dir) or {}).get("phase")
    unknown = "exit code unknown (the worker that started it had stopped)"
    if (run_dir / runs.EVAL).exists():
        return Outcome("finished", f"finished; {unknown}", log_tail=tail)
    if job.cancel_requested_by is not None:
        return _cancelled(job, None, tail, killed_after_grace=False)
    if phase == "stopped":
        return Outcome("interrupted", "stopped from outside the app; " + _kept(run_dir), log_tail=tail)
    error = _error_line(lines)
    if error:
        return Outcome("failed", f"failed: {error}; {unknown}", error=error, hint=_hint(lines), log_tail=tail)
    if job.pid is None:
        return Outcome("interrupted", "the worker stopped before the job's process started", log_tail=tail)
    return Outcome(
        "interrupted",
        "the job's process is gone and the worker that ran it stopped; see the log tail",
        log_tail=tail,
        hint=_hint(lines),
    )


def _cancelled(job: Job, returncode: int | None, tail: str, killed_after_grace: bool) -> Outcome:
    by = job.cancel_requested_by
    if by == TIME_LIMIT:
        reason = "stopped at the time limit (VLPEFT_MAX_RUNTIME_S)"
        hint = "Use fewer steps, a smaller data fraction or a smaller budget, or raise VLPEFT_MAX_RUNTIME_S."
    else:
        reason, hint = f"cancelled by {by}", None
    if killed_after_grace:
        reason += "; killed after the grace period"
    return Outcome("cancelled", f"{reason}; {_kept(Path(job.run_dir))}", returncode, hint=hint, log_tail=tail)


def _kept(run_dir: Path) -> str:
    if (run_dir / runs.WEIGHTS).exists():
        return "the weights trained so far are kept"
    return "no weights were saved"


def _duration(job: Job) -> str:
    if job.started_at is None:
        return "an unknown time"
    seconds = round((job.finished_at or time.time()) - job.started_at)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _error_line(lines: list[str]) -> str | None:
    """The trainer's `error: ...` line, else the last exception line of a traceback."""
    for line in reversed(lines):
        match = _ERROR_LINE.match(line.strip())
        if match:
            return match.group(1)
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return None


def _hint(lines: list[str]) -> str | None:
    text = "\n".join(lines)
    for pattern, hint in _HINTS:
        if pattern.search(text):
            return hint
    return None
