"""`submit`, `jobs`, `status`, `cancel` and `worker`: the job queue from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from training.jobs.limits import JobLimits
from training.jobs.status import job_status
from training.jobs.store import STATES, JobStore
from training.jobs.supervisor import Supervisor, live_supervisors
from training.run.config import add_run_options, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser("submit", help="queue a training run (same options as train); prints its id")
    add_run_options(submit)
    submit.add_argument("--submitter", default=_user(), help="who the job counts against (default: you)")
    submit.set_defaults(func=_submit)

    jobs = subparsers.add_parser("jobs", help="list the jobs in the queue and their states")
    jobs.add_argument("--state", action="append", choices=STATES, help="only jobs in this state (repeatable)")
    jobs.add_argument("--submitter", help="only this submitter's jobs")
    jobs.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    jobs.set_defaults(func=_jobs)

    status = subparsers.add_parser("status", help="live status of one job")
    status.add_argument("job_id", metavar="ID", help="job id, a unique prefix, or its last six characters")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--lines", type=int, default=15, help="log lines to show (default 15)")
    status.set_defaults(func=_status)

    cancel = subparsers.add_parser("cancel", help="cancel a queued job or stop a running one")
    cancel.add_argument("job_id", metavar="ID", help="job id, a unique prefix, or its last six characters")
    cancel.add_argument("--by", default=_user(), help="who cancels, shown in the job's reason (default: you)")
    cancel.set_defaults(func=_cancel)

    worker = subparsers.add_parser("worker", help="run queued jobs (the app runs a worker itself)")
    worker.add_argument("--max-concurrent", type=int, help="jobs at once (default: $VLPEFT_MAX_CONCURRENT or 1)")
    worker.add_argument("--exit-when-idle", action="store_true", help="stop when nothing is queued or running")
    worker.add_argument("--poll", type=float, default=0.5, help="seconds between checks")
    worker.set_defaults(func=_worker)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "local"


def _submit(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    # The job runs in its run directory, so a relative local path must be made absolute now.
    for name in ("base_model", "dataset"):
        value = getattr(config, name)
        if value and Path(value).expanduser().exists():
            setattr(config, name, str(Path(value).expanduser().resolve()))
    store = JobStore()
    job_id = store.submit(config, submitter=args.submitter)
    print(job_id)
    position = store.queue_position(job_id)
    note = f"queued #{position}" if position else "queued"
    if not live_supervisors(store):
        note += "; no worker is running: start one with `python -m training worker` (the app runs one itself)"
    print(note, file=sys.stderr)
    return 0


def _jobs(args: argparse.Namespace) -> int:
    store = JobStore()
    rows = [job_status(store, job.id, log_lines=0) for job in store.list_jobs(args.state, args.submitter)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no jobs")
        return 0
    table = [("ID", "STATE", "SUBMITTER", "RUN", "PROGRESS", "LOSS", "ELAPSED", "REASON")]
    for row in rows:
        config = row["config"]
        table.append(
            (
                row["id"],
                row["state"],
                row["submitter"],
                f"{config['task']} {config['method']} {config['budget']}",
                _progress(row),
                _number(row["loss"]),
                _duration(row["elapsed_s"]),
                _clip(row["reason"], 60),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def _status(args: argparse.Namespace) -> int:
    store = JobStore()
    status = job_status(store, store.resolve_id(args.job_id), log_lines=max(args.lines, 0))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"job      {status['id']}  {status['state']}: {status['reason']}")
    print(
        f"progress {_progress(status)}  loss {_number(status['loss'])}  "
        f"{_number(status['samples_per_s'])} samples/s  elapsed {_duration(status['elapsed_s'])}  "
        f"eta {_duration(status['eta_s'])}"
    )
    print(f"run dir  {status['run_dir']}")
    print(f"command  {status['command']}")
    for key in ("error", "hint"):
        if status[key]:
            print(f"{key:<8} {status[key]}")
    if status["log_tail"]:
        print(f"--- last {len(status['log_tail'])} lines of log.txt ---")
        print("\n".join(status["log_tail"]))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    store = JobStore()
    job = store.cancel(store.resolve_id(args.job_id), by=args.by)
    if job.state == "running":
        print(
            f"{job.id}: stop requested; it stops at its next step, or is killed after {store.limits.stop_grace_s:g} s"
        )
        if not live_supervisors(store):
            print("no worker is running: the next worker to start records how the job ended", file=sys.stderr)
    else:
        print(f"{job.id}: {job.state} ({job.reason})")
    return 0


def _worker(args: argparse.Namespace) -> int:
    limits = JobLimits.from_env()
    if args.max_concurrent:
        limits = dataclasses.replace(limits, max_concurrent=max(1, args.max_concurrent))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    store = JobStore(limits=limits)
    supervisor = Supervisor(store, poll_s=args.poll)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"worker {supervisor.id} on {store.path}, up to {limits.max_concurrent} job(s) at once; "
        "Ctrl+C stops the worker, not the jobs",
        file=sys.stderr,
    )
    try:
        supervisor.run_forever(stop, exit_when_idle=args.exit_when_idle)
    except KeyboardInterrupt:
        pass
    left = [job.id for job in store.list_jobs(("running",)) if job.claimed_by == supervisor.id]
    if left:
        print(
            f"{len(left)} job(s) keep running ({', '.join(left)}); the next worker watches them, "
            "`python -m training cancel ID` stops one",
            file=sys.stderr,
        )
    return 0


def _progress(status: dict) -> str:
    if status["state"] == "queued":
        return f"queued #{status['queue_position']}"
    if status["step"] is None:
        return status["phase"] or "-"
    return f"{status['step']}/{status['total_steps']}" + (f" {status['phase']}" if status["phase"] else "")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
