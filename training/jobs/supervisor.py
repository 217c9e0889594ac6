"""The worker loop: takes queued jobs in order and runs each in its own process, never in the caller's.

A `Supervisor` can live in a background thread of the app (`start_in_thread`) or on its own
(`python -m training worker`); several may share one store. Job processes run in their own session, so
they outlive the supervisor: one that starts later adopts the jobs still running and records how the
others ended. Jobs run through the executor interface of training/launch/ (launch, poll, stop, kill): a
`DetachedExecutor` here, or with `VLPEFT_RAY_ADDRESS` set, a Ray task on that cluster per job
(training/jobs/ray_runner.py; a `command` given to the supervisor does not apply there).
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.jobs import outcome
from training.jobs.limits import JobLimits
from training.jobs.ray_runner import RayJobHandle, RayJobRunner, failure_outcome
from training.jobs.store import TIME_LIMIT, Job, JobStore, Outcome
from training.launch.detached import DetachedExecutor, DetachedHandle
from training.launch.executor import RunSpec
from training.launch.pids import is_alive, process_start_time
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
    executor: DetachedExecutor | RayJobRunner
    run: DetachedHandle | RayJobHandle  # a local one adopted (no exit code) for a job whose worker is gone
    killed: bool = False
    stop_sent_at: float | None = None  # a Ray job's stop (a local job's is the store's stop_signalled_at)


class Supervisor:
    """Runs queued jobs through an executor (training/launch/: a local process in its own session, or a Ray task),
    watches them, delivers stops and kills, and records how each one ended."""

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
        self._local = DetachedExecutor()
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
        """Unregister; with `stop_jobs`, first stop this worker's jobs and wait until they are gone. Ray jobs are
        always cancelled first: their tasks end with this process."""
        ray_jobs = [w.job_id for w in self._watched.values() if w.executor is not self._local]
        for job_id in ray_jobs:
            self.store.cancel(job_id, by="worker shutdown")
        if stop_jobs:
            for job_id in list(self._watched):
                # Stopped, not cancelled: a job that saved its state goes back to the queue and resumes.
                self.store.send_stop(job_id)
        stopping = list(self._watched) if stop_jobs else ray_jobs
        if stopping:
            wait_s = self.limits.stop_grace_s + (30 if ray_jobs else 10)
            deadline = time.monotonic() + (timeout if timeout is not None else wait_s)
            while any(j in self._watched for j in stopping) and time.monotonic() < deadline:
                self._reap()
                self._enforce_stops()
                time.sleep(0.1)
            for job_id in stopping:
                if job_id in self._watched:
                    self._watched[job_id].executor.kill(self._watched[job_id].run)
        if self._started:
            self.store.unregister_supervisor(self.id)
            self._started = False

    # --- one pass ------------------------------------------------------------------------------

    def _start_queued(self) -> None:
        while len(self._watched) < self.limits.max_concurrent:
            job = self.store.claim_next(self.id, self.limits.max_concurrent)
            if job is None:
                return
            self._spawn(job)

    def _spawn(self, job: Job) -> None:
        run_dir = Path(job.run_dir)
        try:
            command = self._command(job)
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / runs.LOG, "ab") as log_file:
                started = time.strftime("%Y-%m-%d %H:%M:%S")
                where = f" on the {self._ray.where()}" if self._ray else ""
                log_file.write(f"[worker] {started} job {job.id}{where}: {shlex.join(command)}\n".encode())
            if self._ray is not None:
                config = job.run_config
                spec = RunSpec(job.id, job.run_dir, config.to_cli_args())
                ray_run = self._ray.launch(spec, needs_gpu=config.device.startswith("cuda"))
            else:
                run = self._local.launch(RunSpec(job.id, job.run_dir, []), command)
        except Exception as exc:  # a broken config or an unwritable disk fails this job, not the worker
            self.store.finish(job.id, self.id, Outcome("failed", f"could not start the job: {exc}", error=str(exc)))
            return
        if self._ray is not None:
            self._watched[job.id] = _Watched(job.id, self._ray, ray_run)
            self.store.note(job.id, f"runs as a Ray task on the {self._ray.where()}")
            return
        self._watched[job.id] = _Watched(job.id, self._local, run)
        self.store.set_process(job.id, self.id, run.pid, run.pid_start)
        self.store.record_started(job.id)
        log.info("job %s started (pid %d), log in %s", job.id, run.pid, run_dir / runs.LOG)

    def _reap(self) -> None:
        for watched in list(self._watched.values()):
            returncode = watched.executor.poll(watched.run)
            if returncode is None:
                continue
            job = self.store.get(watched.job_id)
            if isinstance(watched.run, RayJobHandle):
                failure = watched.run.failure
                ended = failure_outcome(job, failure) if failure else outcome.from_exit(job, returncode, watched.killed)
                # A Ray job starts again from scratch (its command has no --resume): it is never queued to resume.
                self.store.finish(job.id, self.id, ended)
            elif watched.run.exit_known:
                self._record_end(job, self.id, outcome.from_exit(job, returncode, killed_after_grace=watched.killed))
            else:
                self._record_end(job, self.id, outcome.without_exit_code(job))
            del self._watched[watched.job_id]

    def _enforce_stops(self) -> None:
        now = time.time()
        for watched in list(self._watched.values()):
            job = self.store.get(watched.job_id)
            if job.state != "running":
                continue
            local = watched.executor is self._local
            stop_sent_at = job.stop_signalled_at if local else watched.stop_sent_at
            if job.cancel_requested_by is None and self.limits.past_runtime(job.started_at, now):
                self.store.cancel(job.id, by=TIME_LIMIT)
            elif job.cancel_requested_by is not None and stop_sent_at is None:
                self._send_stop(watched)
            elif stop_sent_at is not None and not watched.killed:
                if now - stop_sent_at >= self.limits.stop_grace_s and watched.executor.poll(watched.run) is None:
                    watched.executor.kill(watched.run)
                    watched.killed = True
                    how = "killed" if local else "Ray task cancelled"
                    self.store.note(job.id, f"still running {self.limits.stop_grace_s:g} s after the stop: {how}")

    def _send_stop(self, watched: _Watched) -> None:
        """Ask a job's trainer to stop after its step: a local job's through the store (exactly one SIGTERM to its
        group, whoever sends it; here the request came before the process had a pid), a Ray job's through its
        task's mailbox."""
        if watched.executor is self._local:
            self.store.send_stop(watched.job_id)
        else:
            watched.executor.stop(watched.run)
            watched.stop_sent_at = time.time()

    def _publish_checkpoints(self) -> None:
        """Every `checkpoint_s`, publish each running job's newest saved state to the durable location, so that a
        restart on an empty local disk (a Space) resumes it from there."""
        if self.store.durable is None or not self.limits.checkpoint_s:
            return
        if time.monotonic() - self._last_checkpoint < self.limits.checkpoint_s:
            return
        self._last_checkpoint = time.monotonic()
        for job_id in [w.job_id for w in self._watched.values() if w.executor is self._local]:
            step = self.store.publish_checkpoint(job_id)
            if step is not None:
                log.info("job %s: its state after step %d published to %s", job_id, step, self.store.durable.root)

    def _recover(self) -> None:
        """Adopt running jobs whose worker is gone but whose process lives; close those whose process is gone."""
        live = set(live_supervisors(self.store)) | {self.id}
        for job in self.store.list_jobs(states=("running",)):
            if job.claimed_by in live or job.id in self._watched:
                continue
            if is_alive(job.pid, job.pid_start):
                if self.store.adopt(job.id, job.claimed_by, self.id):
                    run = self._local.adopt(RunSpec(job.id, job.run_dir, []), job.pid, job.pid_start)
                    self._watched[job.id] = _Watched(job.id, self._local, run)
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
