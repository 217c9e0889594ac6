"""The worker loop: takes queued jobs in order and runs each in its own process, never in the caller's.

A `Supervisor` can live in a background thread of the app (`start_in_thread`) or on its own
(`python -m training worker`); several may share one store. Job processes run in their own session, so
they outlive the supervisor: one that starts later adopts the jobs still running and records how the
others ended. With `VLPEFT_RAY_ADDRESS` set, each job runs as a Ray task on that cluster instead
(training/jobs/ray_runner.py; a `command` given to the supervisor does not apply there).
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.jobs import outcome
from training.jobs.limits import JobLimits
from training.jobs.process import is_alive, process_start_time, signal_group
from training.jobs.ray_runner import RayJobRunner
from training.jobs.store import TIME_LIMIT, Job, JobStore, Outcome
from training.paths import REPO_ROOT
from training.run import runs

log = logging.getLogger(__name__)

HEARTBEAT_S = 5
HEARTBEAT_STALE_S = 60  # a worker on another host that has not written for this long is gone


def live_supervisors(store: JobStore) -> list[str]:
    """Ids of the workers on this store that are still alive."""
    host, now = socket.gethostname(), time.time()
    alive = []
    for row in store.supervisors():
        if row["host"] == host:
            ok = is_alive(row["pid"], row["pid_start"])
        else:
            ok = now - row["heartbeat_at"] < HEARTBEAT_STALE_S
        if ok:
            alive.append(row["id"])
    return alive


@dataclass
class _Watched:
    job_id: str
    pid: int  # also the process group id: the job runs in its own session
    pid_start: str | None
    proc: subprocess.Popen | None  # None for a job adopted from a worker that is gone
    killed: bool = False


class Supervisor:
    """Runs queued jobs as subprocesses, watches them, and records how each one ended."""

    def __init__(
        self,
        store: JobStore | None = None,
        *,
        limits: JobLimits | None = None,
        poll_s: float = 0.5,
        command: Callable[[Job], list[str]] | None = None,
        ray: RayJobRunner | None = None,
    ) -> None:
        self.store = store or JobStore()
        self.limits = limits or self.store.limits
        self.poll_s = poll_s
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._command = command or (lambda job: job.command)
        # With VLPEFT_RAY_ADDRESS set, jobs run as Ray tasks on that cluster instead of local processes.
        self._ray = ray if ray is not None else RayJobRunner.from_env()
        self._watched: dict[str, _Watched] = {}
        self._started = False
        self._last_heartbeat = 0.0
        self._last_checkpoint = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()

    def start(self) -> None:
        """Register with the store and recover what earlier workers left behind."""
        if self._started:
            return
        self.store.register_supervisor(self.id, socket.gethostname(), os.getpid(), process_start_time(os.getpid()))
        self._started = True
        self._recover()

    def run_once(self) -> None:
        """One pass: record ended jobs, deliver stops and kills, recover orphans, start queued jobs."""
        self.start()
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_S:
            self.store.heartbeat(self.id)
            self._last_heartbeat = time.monotonic()
        self._reap()
        if self._ray is not None:
            self._ray.poll(self.store, self.id, self.limits)
        self._enforce_stops()
        self._publish_checkpoints()
        self._recover()
        self._start_queued()

    def run_forever(self, stop_event: threading.Event, exit_when_idle: bool = False) -> None:
        """Loop until `stop_event` is set (or, with `exit_when_idle`, until nothing is queued or running).

        Running jobs are left running when the loop ends; the next worker adopts them.
        """
        try:
            while not stop_event.is_set():
                try:
                    self.run_once()
                except Exception:  # a worker in the app must outlive a bad pass (a locked file, a full disk)
                    log.exception("job supervisor pass failed; retrying")
                if exit_when_idle and not self._watched and not self.store.count(("queued", "running")):
                    break
                stop_event.wait(self.poll_s)
        finally:
            self.close()

    def start_in_thread(self) -> threading.Thread:
        """Run `run_forever` in a daemon thread (for the app); `stop()` ends it."""
        self._stop_event.clear()
        self._thread = threading.Thread(
            target=self.run_forever, args=(self._stop_event,), name="vlpeft-job-supervisor", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = 10) -> None:
        """End the thread started by `start_in_thread`; jobs keep running."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self, stop_jobs: bool = False, timeout: float | None = None) -> None:
        """Unregister; with `stop_jobs`, first cancel this worker's jobs and wait until they are gone."""
        if stop_jobs and self._watched:
            for job_id in list(self._watched):
                # Stopped, not cancelled: a job that saved its state goes back to the queue and resumes.
                self.store.send_stop(job_id)
            deadline = time.monotonic() + (timeout if timeout is not None else self.limits.stop_grace_s + 10)
            while self._watched and time.monotonic() < deadline:
                self._reap()
                self._enforce_stops()
                time.sleep(0.1)
            for watched in list(self._watched.values()):
                signal_group(watched.pid, signal.SIGKILL)
        if self._ray is not None and self._ray.jobs:
            self._ray.close(self.store, self.id, self.limits)
        if self._started:
            self.store.unregister_supervisor(self.id)
            self._started = False

    # --- one pass ------------------------------------------------------------------------------

    def _start_queued(self) -> None:
        while len(self._watched) + len(self._ray.jobs if self._ray else ()) < self.limits.max_concurrent:
            job = self.store.claim_next(self.id, self.limits.max_concurrent)
            if job is None:
                return
            self._spawn(job)

    def _spawn(self, job: Job) -> None:
        run_dir = Path(job.run_dir)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        try:
            command = self._command(job)
            run_dir.mkdir(parents=True, exist_ok=True)
            # Append mode, and the child gets the file itself: no pipe that fills up when nobody reads it.
            with open(run_dir / runs.LOG, "ab") as log_file:
                started = time.strftime("%Y-%m-%d %H:%M:%S")
                where = f" on the {self._ray.describe()}" if self._ray else ""
                log_file.write(f"[worker] {started} job {job.id}{where}: {shlex.join(command)}\n".encode())
                log_file.flush()
                if self._ray is not None:
                    self._ray.start(self.store, job)
                    return
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=run_dir,
                    env=env,
                )
        except Exception as exc:  # a broken config or an unwritable disk fails this job, not the worker
            self.store.finish(job.id, self.id, Outcome("failed", f"could not start the job: {exc}", error=str(exc)))
            return
        pid_start = process_start_time(proc.pid)
        self._watched[job.id] = _Watched(job.id, proc.pid, pid_start, proc)
        self.store.set_process(job.id, self.id, proc.pid, pid_start)
        self.store.record_started(job.id)
        log.info("job %s started (pid %d), log in %s", job.id, proc.pid, run_dir / runs.LOG)

    def _reap(self) -> None:
        for watched in list(self._watched.values()):
            if watched.proc is not None:
                returncode = watched.proc.poll()
                if returncode is None:
                    continue
            elif is_alive(watched.pid, watched.pid_start):
                continue
            # The trainer is gone; what it started in its group (data loaders) must not keep the memory.
            signal_group(watched.pid, signal.SIGKILL)
            job = self.store.get(watched.job_id)
            if watched.proc is not None:
                ended = outcome.from_exit(job, returncode, killed_after_grace=watched.killed)
            else:
                ended = outcome.without_exit_code(job)
            self._record_end(job, self.id, ended)
            del self._watched[watched.job_id]

    def _enforce_stops(self) -> None:
        now = time.time()
        for watched in list(self._watched.values()):
            job = self.store.get(watched.job_id)
            if job.state != "running":
                continue
            if job.cancel_requested_by is None and self.limits.past_runtime(job.started_at, now):
                self.store.cancel(job.id, by=TIME_LIMIT)
            elif job.cancel_requested_by is not None and job.stop_signalled_at is None:
                self.store.send_stop(job.id)  # the request came before the process had a pid
            elif job.stop_signalled_at is not None and not watched.killed:
                if now - job.stop_signalled_at >= self.limits.stop_grace_s and self._owns_process(watched):
                    signal_group(watched.pid, signal.SIGKILL)
                    watched.killed = True
                    self.store.note(job.id, f"still running {self.limits.stop_grace_s:g} s after the stop: killed")

    def _publish_checkpoints(self) -> None:
        """Every `checkpoint_s`, publish each running job's newest saved state to the durable location, so that a
        restart on an empty local disk (a Space) resumes it from there."""
        if self.store.durable is None or not self.limits.checkpoint_s:
            return
        if time.monotonic() - self._last_checkpoint < self.limits.checkpoint_s:
            return
        self._last_checkpoint = time.monotonic()
        for job_id in list(self._watched):
            step = self.store.publish_checkpoint(job_id)
            if step is not None:
                log.info("job %s: its state after step %d published to %s", job_id, step, self.store.durable.root)

    def _owns_process(self, watched: _Watched) -> bool:
        if watched.proc is not None:
            return watched.proc.poll() is None  # our unreaped child: its pid cannot have been reused
        return is_alive(watched.pid, watched.pid_start)

    def _recover(self) -> None:
        """Adopt running jobs whose worker is gone but whose process lives; close those whose process is gone."""
        live = set(live_supervisors(self.store)) | {self.id}
        for job in self.store.list_jobs(states=("running",)):
            if job.claimed_by in live or job.id in self._watched:
                continue
            if is_alive(job.pid, job.pid_start):
                if self.store.adopt(job.id, job.claimed_by, self.id):
                    self._watched[job.id] = _Watched(job.id, job.pid, job.pid_start, None)
                    log.info("job %s adopted (pid %d still runs)", job.id, job.pid)
            else:
                self._record_end(job, job.claimed_by, outcome.without_exit_code(job))

    def _record_end(self, job: Job, claimed_by: str | None, ended: Outcome) -> None:
        """Record how a job's process ended; an interrupted job whose run saved its state (training/run/resume.py)
        goes back to the queue instead, to resume from there."""
        step = runs.saved_step(job.run_dir) if ended.state == "interrupted" else None
        if step is not None and self.store.requeue_to_resume(job.id, claimed_by, step, f"interrupted ({ended.reason})"):
            log.info("job %s interrupted: queued to resume at step %d", job.id, step)
        elif self.store.finish(job.id, claimed_by, ended):
            log.info("job %s %s: %s", job.id, ended.state, ended.reason)
