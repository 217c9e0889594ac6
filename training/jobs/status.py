"""Live status of a job for any process: the store row plus what the trainer wrote in its run directory."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from training.jobs.store import JobStore
from training.run import runs


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
        eta = steady_eta(run_dir, progress)
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


def steady_eta(run_dir: Path, progress: dict) -> float | None:
    """Seconds left in training: the steps left to the target (the cap, or the hard limit once the run goes on past
    it) at the run's own training pace, plus the validations still due at their measured length.

    The pace is measured over the whole run since its first step (model warm-up, the feature cache), with the
    validation pauses taken out and counted apart: a window of the last few rows jumped each time a validation
    fell into it (1:45 -> 2:34 -> 1:37). The trainer's own estimate until two rows after the first are logged."""
    rows: list[dict] = []
    for row in runs.read_jsonl(run_dir / runs.METRICS):
        if not (isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > 1 and "elapsed_s" in row):
            continue
        if rows and (row["step"] <= rows[-1]["step"] or row["elapsed_s"] < rows[-1]["elapsed_s"]):
            rows = []  # a resumed run starts its clock again
        rows.append(row)
    total = progress.get("total_steps")
    if len(rows) < 2 or not total:
        return progress.get("eta_s")
    first, last = rows[0], rows[-1]
    validations = [v for v in runs.read_jsonl(run_dir / runs.VALIDATION) if isinstance(v.get("seconds"), int | float)]
    # A validation at step s runs after row s is logged: those between the two rows paused the clock.
    paused = sum(v["seconds"] for v in validations if first["step"] <= v.get("step", -1) < last["step"])
    pace = max(0.0, last["elapsed_s"] - first["elapsed_s"] - paused) / (last["step"] - first["step"])
    every = (runs.read_json(run_dir / runs.CONFIG) or {}).get("val_every")
    due = 0
    if validations and isinstance(every, int) and every > 0:
        due = total // every - last["step"] // every + (total % every != 0)  # the target itself is validated too
    each = sum(v["seconds"] for v in validations) / len(validations) if validations else 0.0
    return round(max(0, total - last["step"]) * pace + max(0, due) * each, 1)


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
