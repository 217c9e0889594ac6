"""Live status of a job for any process: the store row plus what the trainer wrote in its run directory."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from training.jobs.store import JobStore
from training.run import runs

RECENT_ROWS = 6  # metrics rows (logged every few steps) the time left is measured on


def job_status(store: JobStore, job_id: str, log_lines: int = 40) -> dict:
    """Everything a status view shows about one job, as plain JSON-ready values.

    Keys: id, state, reason, submitter, phase, step, total_steps, loss, samples_per_s, eval_done, eval_total
    (test examples answered so far while scoring), elapsed_s, eta_s (only while training),
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
    eta = None
    if job.state == "running" and phase == "training":
        eta = recent_eta(run_dir, progress)
    if isinstance(eta, int | float):
        # The trainer writes its progress only every few steps; count down in between.
        eta = round(max(0.0, eta - _age(run_dir / runs.PROGRESS, now)), 1)

    lines = runs.tail(run_dir / runs.LOG, log_lines) if log_lines > 0 else []
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
        "eval_done": progress.get("eval_done") if phase == "evaluating" else None,
        "eval_total": progress.get("eval_total") if phase == "evaluating" else None,
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
        "command": shlex.join(["python", *job.command[1:]]),
    }


def recent_eta(run_dir: Path, progress: dict, window: int = RECENT_ROWS) -> float | None:
    """Seconds left in training at the pace of the last few logged steps: the first step (model warm-up, the
    feature cache) would keep an average from the start too high for minutes. The trainer's own estimate
    until two rows after the first are logged."""
    rows = []
    for line in runs.tail(run_dir / runs.METRICS, window + 1):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the line being written
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > 1 and "elapsed_s" in row:
            rows.append(row)
    total = progress.get("total_steps")
    if len(rows) < 2 or not total or rows[-1]["step"] <= rows[0]["step"]:
        return progress.get("eta_s")
    per_step = (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (rows[-1]["step"] - rows[0]["step"])
    return round(max(0, total - rows[-1]["step"]) * per_step, 1)


def read_progress(run_dir: Path) -> dict | None:
    """progress.json, else the last complete line of metrics.jsonl; None before the trainer wrote either."""
    progress = runs.read_json(run_dir / runs.PROGRESS)
    if isinstance(progress, dict):
        return progress
    for line in reversed(runs.tail(run_dir / runs.METRICS, 2)):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the line being written
        if isinstance(row, dict):
            return row
    return None


def _age(path: Path, now: float) -> float:
    try:
        return max(0.0, now - path.stat().st_mtime)
    except OSError:
        return 0.0
