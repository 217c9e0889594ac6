"""Live status of a job for any process: the store row plus what the trainer wrote in its run directory."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from training.jobs.runfiles import LOG_FILE, PROGRESS_FILE, read_progress, tail_lines
from training.jobs.store import JobStore
from training.jobs.supervisor import train_command


def job_status(store: JobStore, job_id: str, log_lines: int = 40) -> dict:
    """Everything a status view shows about one job, as plain JSON-ready values.

    Keys: id, state, reason, submitter, phase, step, total_steps, loss, samples_per_s, elapsed_s, eta_s,
    queue_position, run_dir, pid, exit_code, error, hint, log_tail (a list of lines), cancel_requested_by,
    created_at, started_at, finished_at, config, command.
    """
    job = store.get(job_id)
    run_dir = Path(job.run_dir)
    progress = read_progress(run_dir) or {}
    now = time.time()

    if job.state == "queued":
        phase = "queued"
    elif job.state == "running":
        phase = progress.get("phase") or "starting"
    else:
        phase = progress.get("phase")

    elapsed = None
    if job.started_at is not None:
        elapsed = round((job.finished_at or now) - job.started_at, 1)
    eta = progress.get("eta_s") if job.state == "running" else None
    if isinstance(eta, int | float):
        # The trainer writes its estimate only every few steps; count down in between.
        eta = round(max(0.0, eta - _age(run_dir / PROGRESS_FILE, now)), 1)

    lines = tail_lines(run_dir / LOG_FILE, log_lines)
    if not lines and job.log_tail and log_lines > 0:
        lines = job.log_tail.splitlines()[-log_lines:]

    return {
        "id": job.id,
        "state": job.state,
        "reason": job.reason,
        "submitter": job.submitter,
        "phase": phase,
        "step": progress.get("step"),
        "total_steps": progress.get("total_steps"),
        "loss": progress.get("loss"),
        "samples_per_s": progress.get("samples_per_s"),
        "elapsed_s": elapsed,
        "eta_s": eta,
        "queue_position": store.queue_position(job.id),
        "run_dir": job.run_dir,
        "pid": job.pid,
        "exit_code": job.exit_code,
        "error": job.error,
        "hint": job.hint,
        "log_tail": lines,
        "cancel_requested_by": job.cancel_requested_by,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "config": job.config,
        "command": shlex.join(["python", *train_command(job.run_config, job.run_dir)[1:]]),
    }


def _age(path: Path, now: float) -> float:
    try:
        return max(0.0, now - path.stat().st_mtime)
    except OSError:
        return 0.0
