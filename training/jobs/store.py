"""The durable job queue: one SQLite file in the data directory, shared by the app, workers and the CLI.

Every state change is one `BEGIN IMMEDIATE` transaction that also writes a `job_events` row with its
reason, so the history survives restarts and concurrent writers never interleave. Taking a job off the
queue is a conditional update on `state='queued'`, so two workers on one store never run the same job.

With a durable location (`training.jobs.durable`), the store stays on local disk with the runs in progress;
an ended job's files are published there and its `run_dir` then points at the published copy. A store that
starts without them (a new local disk) refills its list from the published runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from training.errors import UserError
from training.jobs.durable import CHECKPOINTS, DurableRuns, copy_back
from training.jobs.limits import JobLimits
from training.launch.pids import is_alive, signal_group
from training.paths import data_home, durable_home
from training.run import runs
from training.run.config import RunConfig
from training.run.launch import config_command

log = logging.getLogger(__name__)

STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("finished", "failed", "cancelled", "interrupted")
TIME_LIMIT = "time limit"  # who stops a job that runs past VLPEFT_MAX_RUNTIME_S

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order, the queue order
    id TEXT NOT NULL UNIQUE,
    submitter TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    claimed_by TEXT,
    pid INTEGER,
    pid_start TEXT,
    exit_code INTEGER,
    error TEXT,
    hint TEXT,
    log_tail TEXT,
    cancel_requested_by TEXT,
    cancel_requested_at REAL,
    stop_signalled_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events(job_id, id);
CREATE TABLE IF NOT EXISTS supervisors (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start TEXT,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    """One row of the store, as it was when read."""

    id: str
    seq: int
    submitter: str
    config: dict
    state: str
    reason: str
    run_dir: str
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    claimed_by: str | None
    pid: int | None
    pid_start: str | None
    exit_code: int | None
    error: str | None
    hint: str | None
    log_tail: str | None
    cancel_requested_by: str | None
    cancel_requested_at: float | None
    stop_signalled_at: float | None

    @property
    def run_config(self) -> RunConfig:
        return RunConfig.from_dict(self.config)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def command(self) -> list[str]:
        """The process that runs this job: the same `train` command a person would type (with `--resume` once
        its run directory holds a saved state: a job interrupted mid-run goes on from there)."""
        extra = ["--resume"] if runs.saved_step(self.run_dir) is not None else []
        return config_command(self.run_config, self.run_dir, *extra)


class PersonalLimitReached(UserError):
    """A submitter already has as many jobs queued or running as one person may (the app words it for "you")."""

    def __init__(self, submitter: str, active: int, limit: int, adding: int = 1) -> None:
        self.active, self.limit, self.adding = active, limit, adding
        super().__init__(f"{submitter} {self.sentence('already has')}")

    def sentence(self, verb: str) -> str:
        jobs = "1 job" if self.active == 1 else f"{self.active} jobs"
        if self.adding > 1:  # a sweep: each of its runs is a job of its own
            room = max(0, self.limit - self.active)
            return (
                f"{verb} {jobs} queued or running and may have {self.limit} at most "
                f"(VLPEFT_MAX_QUEUED_PER_USER={self.limit}): these {self.adding} runs do not fit, "
                f"{room} would. Make the sweep smaller, or wait for jobs to finish."
            )
        return (
            f"{verb} {jobs} queued or running, the most allowed per person "
            f"(VLPEFT_MAX_QUEUED_PER_USER={self.limit}): wait for one to finish or cancel one."
        )


@dataclass(frozen=True)
class Outcome:
    """How a running job ended: its final state, why, and what to show about a failure."""

    state: str
    reason: str
    exit_code: int | None = None
    error: str | None = None
    hint: str | None = None
    log_tail: str | None = None


def new_job_id() -> str:
    """Short, sortable by submission second (UTC), unique by its random tail: `20261129-103501-ab12cd`."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class JobStore:
    """The job queue in `<data home>/jobs.sqlite3`; run directories in `<data home>/runs/<job id>/`.

    One instance may be shared by threads (each thread gets its own connection) and any number of
    processes may open the same file at once. `durable`: where ended runs are published (by default, for the
    default path, `training.paths.durable_home()`); None keeps them in the data home.
    """

    def __init__(
        self, path: str | Path | None = None, limits: JobLimits | None = None, durable: str | Path | None = None
    ) -> None:
        self.path = Path(path) if path else data_home() / "jobs.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.runs_dir = self.path.parent / "runs"
        self.limits = limits or JobLimits.from_env()
        if durable is None and path is None:
            durable = durable_home()
        self.durable = DurableRuns(durable) if durable is not None else None
        self._local = threading.local()
        self._create_schema()
        if self.durable is not None:
            self._restore()

    # --- connection and transactions -------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=FULL")  # a committed state change survives a power cut too
            self._local.conn = conn
        return conn

    def _create_schema(self) -> None:
        conn = self._conn()
        # Switching to WAL needs a moment alone with the file; many processes opening a new store at once
        # can get SQLITE_BUSY here without the busy handler being consulted.
        for attempt in range(100):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                with self._tx() as tx:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            tx.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @staticmethod
    def _event(conn: sqlite3.Connection, job_id: str, from_state: str | None, to_state: str, reason: str) -> None:
        conn.execute(
            "INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
            (job_id, time.time(), from_state, to_state, reason),
        )

    def _move(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        from_states: Iterable[str],
        to_state: str,
        reason: str,
        **columns: object,
    ) -> bool:
        """Change the state inside an open transaction, if the job is in one of `from_states`."""
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row["state"] not in tuple(from_states):
            return False
        now = time.time()
        values = {"state": to_state, "reason": reason, "updated_at": now, **columns}
        if to_state in FINAL_STATES:
            values.setdefault("finished_at", now)
        assignments = ", ".join(f"{name} = ?" for name in values)
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))
        self._event(conn, job_id, row["state"], to_state, reason)
        return True

    # --- the app's and the CLI's API -------------------------------------------------------------

    def submit(self, config: RunConfig, submitter: str = "local") -> str:
        """Queue a run; return its job id. Raises UserError when the config or a queue limit refuses it."""
        return self.submit_many([config], submitter)[0]

    def submit_many(self, configs: list[RunConfig], submitter: str = "local") -> list[str]:
        """Queue several runs at once (a sweep), in order, or none of them: each counts as one job against the
        queue limits, so a sweep that does not fit is refused whole."""
        for config in configs:
            config.validate()
        submitter = submitter.strip() or "anonymous"
        payloads = [json.dumps(config.to_dict(), sort_keys=True) for config in configs]
        limits = self.limits
        adding = len(payloads)
        with self._tx() as conn:
            active = ", ".join("?" * len(ACTIVE_STATES))
            total = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({active})", ACTIVE_STATES).fetchone()[0]
            mine = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE state IN ({active}) AND submitter = ?", (*ACTIVE_STATES, submitter)
            ).fetchone()[0]
            if limits.max_queued_per_submitter and mine + adding > limits.max_queued_per_submitter:
                raise PersonalLimitReached(submitter, mine, limits.max_queued_per_submitter, adding)
            if limits.max_queued and total + adding > limits.max_queued:
                runs = "" if adding == 1 else f" for {adding} more runs"
                raise UserError(
                    f"The queue is full{runs} ({total} jobs queued or running, VLPEFT_MAX_QUEUED={limits.max_queued}): "
                    "try again when a job has finished."
                )
            now, reason = time.time(), f"submitted by {submitter}"
            job_ids = []
            for payload in payloads:
                while True:
                    job_id = new_job_id()
                    try:
                        conn.execute(
                            "INSERT INTO jobs (id, submitter, config, state, reason, run_dir, created_at, updated_at) "
                            "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                            (job_id, submitter, payload, reason, str(self.runs_dir / job_id), now, now),
                        )
                        break
                    except sqlite3.IntegrityError:  # the same id in the same second: draw again
                        continue
                self._event(conn, job_id, None, "queued", reason)
                job_ids.append(job_id)
        return job_ids

    def get(self, job_id: str) -> Job:
        """The job with this id; UserError if there is none."""
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UserError(f"There is no job {job_id!r}: `python -m training jobs` lists them.")
        return _job(row)

    def resolve_id(self, text: str) -> str:
        """A full job id from the id itself, a unique prefix, or its unique random tail (`ab12cd`)."""
        text = text.strip()
        query = "SELECT id FROM jobs WHERE id = ? OR id LIKE ? ESCAPE '\\' OR id LIKE ? ESCAPE '\\'"
        rows = self._conn().execute(query, (text, _like(text) + "%", "%-" + _like(text)))
        ids = [row["id"] for row in rows]
        if text in ids:
            return text
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise UserError(f"There is no job {text!r}: `python -m training jobs` lists them.")
        raise UserError(f"{text!r} matches {len(ids)} jobs ({', '.join(ids[:3])}, ...): give more of the id.")

    def list_jobs(self, states: Iterable[str] | None = None, submitter: str | None = None) -> list[Job]:
        """Jobs in submission order, optionally only those in `states` or from one submitter."""
        query, params = "SELECT * FROM jobs WHERE 1 = 1", []
        if states is not None:
            states = tuple(states)
            query += f" AND state IN ({', '.join('?' * len(states))})"
            params += states
        if submitter is not None:
            query += " AND submitter = ?"
            params.append(submitter)
        return [_job(row) for row in self._conn().execute(query + " ORDER BY seq", params)]

    def events(self, job_id: str) -> list[dict]:
        """The job's history: every state change (and cancel request) with its time and reason."""
        rows = self._conn().execute(
            "SELECT at, from_state, to_state, reason FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [dict(row) for row in rows]

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start, 2 for the one after, ...; None when the job is not queued."""
        query = (
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' "
            "AND seq <= (SELECT seq FROM jobs WHERE id = ? AND state = 'queued')"
        )
        return self._conn().execute(query, (job_id,)).fetchone()[0] or None

    def cancel(self, job_id: str, by: str = "user") -> Job:
        """Cancel a job: a queued one at once, a running one by asking it to stop (see `send_stop`).

        The worker that runs the job kills its process group if it has not stopped after the grace
        period, and records the final state; this call does not wait for that.
        """
        with self._tx() as conn:
            job = self.get(job_id)
            if job.state == "queued":
                self._move(conn, job_id, ("queued",), "cancelled", f"cancelled by {by} while queued")
            elif job.state == "running" and job.cancel_requested_by is None:
                conn.execute(
                    "UPDATE jobs SET cancel_requested_by = ?, cancel_requested_at = ?, updated_at = ? WHERE id = ?",
                    (by, time.time(), time.time(), job_id),
                )
                reason = "time limit reached, stop requested" if by == TIME_LIMIT else f"stop requested by {by}"
                self._event(conn, job_id, "running", "running", reason)
            elif job.is_final and job.state != "cancelled":
                raise UserError(f"Job {job_id} has already ended ({job.state}): there is nothing to cancel.")
        if job.state == "running":
            self.send_stop(job_id)
        return self.get(job_id)

    def send_stop(self, job_id: str) -> bool:
        """Ask a running job's trainer to stop at its next step: the STOP file and one SIGTERM to its group.

        Whoever gets here first after the process has a pid sends the signal, exactly once; True if this
        call sent it.
        """
        job = self.get(job_id)
        if job.state != "running":
            return False
        stop_file = Path(job.run_dir) / runs.STOP
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        if not is_alive(job.pid, job.pid_start):
            stop_file.touch()
            return False  # not started yet: the worker signals once it has the pid
        with self._tx() as conn:
            taken = conn.execute(
                "UPDATE jobs SET stop_signalled_at = ? WHERE id = ? AND state = 'running' AND pid = ? "
                "AND stop_signalled_at IS NULL",
                (time.time(), job_id, job.pid),
            ).rowcount
        # The signal before the file: a trainer that saw the file first could be exiting when the signal comes,
        # and Python's shutdown has no handler left (the job would end killed by SIGTERM, -15).
        sent = bool(taken) and signal_group(job.pid, signal.SIGTERM)
        stop_file.touch()
        return sent

    def delete(self, job_id: str, remove_files: bool = True) -> None:
        """Forget a job that has ended, and remove its run directory unless `remove_files` is False."""
        with self._tx() as conn:
            job = self.get(job_id)
            if not job.is_final:
                raise UserError(f"Job {job_id} is {job.state}: cancel it before deleting it.")
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            conn.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
        run_dir = Path(job.run_dir)
        if remove_files and run_dir.parent == self.runs_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        if remove_files and self.durable is not None:
            self.durable.remove(job_id)

    # --- the supervisor's side -------------------------------------------------------------------

    def claim_next(self, supervisor_id: str, max_concurrent: int) -> Job | None:
        """Take the oldest queued job for `supervisor_id`, unless `max_concurrent` jobs already run."""
        with self._tx() as conn:
            running = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'running'").fetchone()[0]
            if running >= max_concurrent:
                return None
            row = conn.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            self._move(
                conn,
                row["id"],
                ("queued",),
                "running",
                f"started by worker {supervisor_id}",
                claimed_by=supervisor_id,
                started_at=time.time(),
            )
        return self.get(row["id"])

    def set_process(self, job_id: str, supervisor_id: str, pid: int, pid_start: str | None) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET pid = ?, pid_start = ?, updated_at = ? WHERE id = ? AND claimed_by = ?",
                (pid, pid_start, time.time(), job_id, supervisor_id),
            )

    def finish(self, job_id: str, supervisor_id: str | None, outcome: Outcome) -> bool:
        """Record how a running job ended; False if it is no longer running under `supervisor_id`."""
        with self._tx() as conn:
            row = conn.execute("SELECT claimed_by FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["claimed_by"] != supervisor_id:
                return False
            moved = self._move(
                conn,
                job_id,
                ("running",),
                outcome.state,
                outcome.reason,
                exit_code=outcome.exit_code,
                error=outcome.error,
                hint=outcome.hint,
                log_tail=outcome.log_tail,
            )
        if moved:
            self._publish(job_id)
        return moved

    def requeue_to_resume(self, job_id: str, supervisor_id: str | None, step: int, why: str) -> bool:
        """Put an interrupted running job back in the queue, first in line, to go on from its saved state after
        `step`; False if it is no longer running under `supervisor_id`."""
        with self._tx() as conn:
            row = conn.execute("SELECT claimed_by FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["claimed_by"] != supervisor_id:
                return False
            (Path(self.get(job_id).run_dir) / runs.STOP).unlink(missing_ok=True)  # the stop that ended it
            return self._move(
                conn,
                job_id,
                ("running",),
                "queued",
                f"{why}; resumes at step {step}",
                claimed_by=None,
                pid=None,
                pid_start=None,
                stop_signalled_at=None,
            )

    # --- the durable location --------------------------------------------------------------------

    def record_started(self, job_id: str) -> None:
        """Publish that a job's process started, so that it is still known if the local disk is lost."""
        if self.durable is None:
            return
        try:
            self.durable.started(dataclasses.asdict(self.get(job_id)))
        except OSError as exc:
            log.warning("job %s: could not record its start in %s: %s", job_id, self.durable.root, exc)

    def publish_checkpoint(self, job_id: str) -> int | None:
        """Publish a running job's newest saved state, if newer than its last checkpoint; the step, or None."""
        if self.durable is None:
            return None
        try:
            return self.durable.checkpoint(job_id, Path(self.get(job_id).run_dir))
        except OSError as exc:
            log.warning("job %s: could not publish a checkpoint to %s: %s", job_id, self.durable.root, exc)
            return None

    def _publish(self, job_id: str) -> None:
        """Publish an ended job's files; its run_dir then names the published copy and the local one goes."""
        if self.durable is None:
            return
        job = self.get(job_id)
        local = Path(job.run_dir)
        try:
            published = self.durable.publish(dataclasses.asdict(job), self.events(job_id), local)
        except OSError as exc:  # the run stays usable from the local disk; the reason is in its history
            self.note(job_id, f"could not publish the run to {self.durable.root}: {exc}")
            log.warning("job %s: could not publish to %s: %s", job_id, self.durable.root, exc)
            return
        with self._tx() as conn:
            conn.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (str(published), job_id))
        shutil.rmtree(published / CHECKPOINTS, ignore_errors=True)  # the job has ended: nothing resumes it
        if local.parent == self.runs_dir:
            shutil.rmtree(local, ignore_errors=True)

    def _restore(self) -> None:
        """Add the published runs this store does not know (after a restart on an empty local disk)."""
        known = {row["id"] for row in self._conn().execute("SELECT id FROM jobs")}
        records = self.durable.records(skip=known)
        columns = [name for name in _JOB_FIELDS if name != "seq"]
        with self._tx() as conn:
            known = {row["id"] for row in conn.execute("SELECT id FROM jobs")}  # another process may have added
            for job, events in records:
                if job["id"] in known or job["state"] not in (*FINAL_STATES, "queued"):
                    continue
                if job["state"] == "queued":  # its newest checkpoint back on the local disk, to resume from
                    local = self.runs_dir / job["id"]
                    copy_back(self.durable.newest_checkpoint(job["id"])[1], local)
                    job = {**job, "run_dir": str(local), "claimed_by": None, "pid": None, "started_at": None}
                values = {name: job.get(name) for name in columns}
                values.update(
                    config=json.dumps(values["config"], sort_keys=True), claimed_by=None, pid=None, pid_start=None
                )
                conn.execute(
                    f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    tuple(values.values()),
                )
                for event in events:
                    conn.execute(
                        "INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                        (job["id"], event["at"], event["from_state"], event["to_state"], event["reason"]),
                    )
                self._event(conn, job["id"], job["state"], job["state"], f"restored from {job['run_dir']}")

    def adopt(self, job_id: str, old_supervisor: str | None, new_supervisor: str) -> bool:
        """Take over a running job whose worker is gone but whose process still runs."""
        with self._tx() as conn:
            taken = conn.execute(
                "UPDATE jobs SET claimed_by = ?, updated_at = ? WHERE id = ? AND state = 'running' AND claimed_by IS ?",
                (new_supervisor, time.time(), job_id, old_supervisor),
            ).rowcount
            if taken:
                self._event(
                    conn,
                    job_id,
                    "running",
                    "running",
                    f"worker {old_supervisor} is gone; worker {new_supervisor} watches the job now",
                )
        return bool(taken)

    def note(self, job_id: str, reason: str) -> None:
        """Record something that happened to a job without changing its state."""
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                self._event(conn, job_id, row["state"], row["state"], reason)

    def count(self, states: Iterable[str]) -> int:
        states = tuple(states)
        query = f"SELECT COUNT(*) FROM jobs WHERE state IN ({', '.join('?' * len(states))})"
        return self._conn().execute(query, states).fetchone()[0]

    def register_supervisor(self, supervisor_id: str, host: str, pid: int, pid_start: str | None) -> None:
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO supervisors (id, host, pid, pid_start, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (supervisor_id, host, pid, pid_start, now, now),
            )

    def heartbeat(self, supervisor_id: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE supervisors SET heartbeat_at = ? WHERE id = ?", (time.time(), supervisor_id))

    def unregister_supervisor(self, supervisor_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM supervisors WHERE id = ?", (supervisor_id,))

    def supervisors(self) -> list[dict]:
        return [dict(row) for row in self._conn().execute("SELECT * FROM supervisors ORDER BY started_at")]


_JOB_FIELDS = tuple(f.name for f in fields(Job))


def _job(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in _JOB_FIELDS}
    values["config"] = json.loads(values["config"])
    return Job(**values)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
