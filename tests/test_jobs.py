"""The job queue, supervisor and CLI, driven by a stand-in trainer that keeps the trainer's contract
(exit codes, STOP/SIGTERM, progress.json, metrics.jsonl) and takes a fraction of a second per job."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from training.cli import main
from training.errors import UserError
from training.jobs import outcome
from training.jobs.limits import JobLimits
from training.jobs.status import job_status
from training.jobs.store import Job, JobStore, Outcome
from training.jobs.supervisor import Supervisor, live_supervisors
from training.launch.pids import is_alive, process_start_time, signal_group
from training.metrics.caption import JAVA_MISSING_MESSAGE
from training.paths import REPO_ROOT
from training.run.config import RunConfig

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    from pathlib import Path

    out, mode, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    with open(out.parent.parent / "started.txt", "a") as record:
        record.write(f"{out.name} {os.getpid()}\\n")
    stop = False
    def on_term(*_):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
    if mode == "user-error":
        print("error: Dataset 'nope' is not a folder or a Hub id: check --dataset.", file=sys.stderr)
        sys.exit(2)
    if mode == "user-error-java":
        from training.metrics.caption import JAVA_MISSING_MESSAGE
        print(f"error: {JAVA_MISSING_MESSAGE}", file=sys.stderr)
        sys.exit(2)
    if mode == "stubborn":
        subprocess.Popen(["sleep", "60"])  # a grandchild in the job's process group
    def progress(phase, step, **extra):
        tmp = out / "progress.json.tmp"
        tmp.write_text(json.dumps({"phase": phase, "step": step, "total_steps": steps, "loss": 2.0 / step,
                                   "samples_per_s": 40.0, "elapsed_s": 0.05 * step,
                                   "eta_s": 0.05 * (steps - step)}))
        os.replace(tmp, out / "progress.json")
    print("loading the model", flush=True)
    for step in range(1, steps + 1):
        if mode != "stubborn" and (stop or (out / "STOP").exists()):
            (out / "weights.safetensors").write_bytes(b"partial")
            progress("stopped", step - 1 or 1)
            print("stopped on request", flush=True)
            sys.exit(3)
        time.sleep(0.05)
        with open(out / "metrics.jsonl", "a") as metrics:
            metrics.write(json.dumps({"step": step, "total_steps": steps, "loss": 2.0 / step}) + "\\n")
        progress("training", step)
        print(f"step {step}/{steps} loss {2.0 / step:.3f}", flush=True)
        if step == 2 and mode == "crash":
            raise RuntimeError("the batch had no images")
        if step == 2 and mode == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if step == 2 and mode == "no-java":
            raise FileNotFoundError(2, "No such file or directory", "java")
    (out / "eval.json").write_text(json.dumps({"cider": 1.0}))
    progress("done", steps)
    """
)

LIMITS = JobLimits(max_queued=100, max_queued_per_submitter=100, max_runtime_s=0, max_concurrent=1, stop_grace_s=2)


def fake_command(job: Job) -> list[str]:
    """The stand-in trainer's command for a job: `extra["fake"]` picks its behaviour."""
    home = Path(job.run_dir).parent.parent
    mode = job.config["extra"].get("fake", "finish")
    return [sys.executable, str(home / "fake_trainer.py"), job.run_dir, mode, str(job.config["max_steps"] or 3)]


def fake(mode: str = "finish", steps: int = 3) -> RunConfig:
    return RunConfig(max_steps=steps, batch_size=4, extra={"fake": mode})


def started_runs(home: Path) -> Counter:
    """How many times each job's process started, from the stand-in trainer's own record."""
    path = home / "started.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split()[0] for line in lines)


def wait_for(predicate, timeout: float = 20, step: float = 0.05, tick=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {getattr(predicate, '__name__', predicate)}")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh data directory with the stand-in trainer; every process started in it is gone afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("VLPEFT_HOME", str(home))
    (home / "fake_trainer.py").write_text(FAKE_TRAINER)
    yield home
    record = home / "started.txt"
    for line in record.read_text().splitlines() if record.exists() else []:
        signal_group(int(line.split()[1]), signal.SIGKILL)


@pytest.fixture
def store(home: Path) -> JobStore:
    return JobStore(limits=LIMITS)


@pytest.fixture
def supervisors(store: JobStore):
    """Make in-process supervisors on the store with the stand-in trainer; closed (jobs stopped) afterwards."""
    made: list[Supervisor] = []

    def make(**kwargs) -> Supervisor:
        supervisor = Supervisor(store, poll_s=0.05, command=fake_command, **kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        supervisor.stop()
        supervisor.close(stop_jobs=True, timeout=5)


@pytest.fixture
def worker_processes(home: Path):
    """Start supervisors as separate processes (`python -c`), killed afterwards."""
    started: list[subprocess.Popen] = []
    script = textwrap.dedent(
        """
        import dataclasses, sys, threading
        from training.jobs.store import JobStore
        from training.jobs.supervisor import Supervisor
        from tests.test_jobs import LIMITS, fake_command
        limits = dataclasses.replace(LIMITS, max_concurrent=int(sys.argv[1]))
        Supervisor(JobStore(limits=limits), poll_s=0.05, command=fake_command).run_forever(threading.Event())
        """
    )

    def start(max_concurrent: int = 1) -> subprocess.Popen:
        command = [sys.executable, "-c", script, str(max_concurrent)]
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def group_members(pgid: int) -> list[int]:
    """The live processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and is_alive(int(entry.name)):
                    members.append(int(entry.name))
            except ProcessLookupError:
                continue
    return members


def run_until(supervisor: Supervisor, predicate, timeout: float = 20):
    return wait_for(predicate, timeout, tick=supervisor.run_once)


def state_of(store: JobStore, job_id: str):
    return lambda: store.get(job_id).state


def is_state(store: JobStore, job_id: str, *states: str):
    return lambda: store.get(job_id).state in states


def reached_step(store: JobStore, job_id: str, step: int):
    return lambda: (job_status(store, job_id)["step"] or 0) >= step and store.get(job_id).pid


# --- the store ------------------------------------------------------------------------------------


def test_submit_queues_in_order_with_positions_and_a_reasoned_history(store: JobStore):
    first = store.submit(fake(), submitter="ann")
    second = store.submit(fake(), submitter="bob")

    assert [job.id for job in store.list_jobs()] == [first, second]
    assert (store.queue_position(first), store.queue_position(second)) == (1, 2)
    job = store.get(second)
    assert (job.state, job.submitter, job.reason) == ("queued", "bob", "submitted by bob")
    assert job.run_dir == str(store.path.parent / "runs" / second)
    assert RunConfig.from_dict(job.config) == fake()
    assert [(e["from_state"], e["to_state"], e["reason"]) for e in store.events(second)] == [
        (None, "queued", "submitted by bob")
    ]
    assert store.path == Path(os.environ["VLPEFT_HOME"]) / "jobs.sqlite3"
    assert store.path.with_name("jobs.sqlite3-wal").exists()


def test_submit_refuses_an_invalid_config_before_queueing(store: JobStore):
    with pytest.raises(UserError, match="Unknown method"):
        store.submit(RunConfig(method="magic"))
    assert store.list_jobs() == []


def test_per_submitter_limit_refuses_with_a_clear_message_and_others_still_queue(home: Path):
    store = JobStore(limits=JobLimits(max_queued=3, max_queued_per_submitter=2))
    store.submit(fake(), submitter="ann")
    store.submit(fake(), submitter="ann")

    with pytest.raises(UserError) as refused:
        store.submit(fake(), submitter="ann")
    assert str(refused.value) == (
        "ann already has 2 jobs queued or running, the most allowed per person (VLPEFT_MAX_QUEUED_PER_USER=2): "
        "wait for one to finish or cancel one."
    )
    store.submit(fake(), submitter="bob")
    with pytest.raises(UserError, match=r"The queue is full \(3 jobs queued or running"):
        store.submit(fake(), submitter="cid")
    store.cancel(store.list_jobs()[0].id, by="ann")
    store.submit(fake(), submitter="ann")  # a cancelled job no longer counts
    assert [job.submitter for job in store.list_jobs(["queued"])] == ["ann", "bob", "ann"]


def test_several_runs_queue_together_in_order_or_not_at_all_each_counting_against_the_limits(home: Path):
    store = JobStore(limits=JobLimits(max_queued=5, max_queued_per_submitter=3))
    store.submit(fake(), submitter="ann")
    with pytest.raises(
        UserError,
        match="ann already has 1 job queued or running and may have 3 at most .*: these 3 runs do not fit, 2 would",
    ):
        store.submit_many([dataclasses.replace(fake(), seed=s) for s in range(3)], submitter="ann")
    assert len(store.list_jobs()) == 1
    ids = store.submit_many([dataclasses.replace(fake(), seed=s) for s in range(2)], submitter="ann")
    assert [job.id for job in store.list_jobs()][1:] == ids
    assert [job.run_config.seed for job in store.list_jobs()][1:] == [0, 1]
    with pytest.raises(UserError, match=r"The queue is full for 3 more runs \(3 jobs queued or running"):
        store.submit_many([dataclasses.replace(fake(), seed=s) for s in range(3)], submitter="bob")
    assert len(store.list_jobs()) == 3


def test_limits_come_from_the_environment_with_defaults_for_a_free_space(monkeypatch: pytest.MonkeyPatch):
    for var in ("VLPEFT_MAX_QUEUED", "VLPEFT_MAX_QUEUED_PER_USER", "VLPEFT_MAX_RUNTIME_S", "VLPEFT_MAX_CONCURRENT"):
        monkeypatch.delenv(var, raising=False)
    assert JobLimits.from_env() == JobLimits(20, 3, 1800, 1, 10)
    monkeypatch.setenv("VLPEFT_MAX_QUEUED_PER_USER", "7")
    monkeypatch.setenv("VLPEFT_MAX_CONCURRENT", "2")
    monkeypatch.setenv("VLPEFT_MAX_RUNTIME_S", "0")
    limits = JobLimits.from_env()
    assert (limits.max_queued_per_submitter, limits.max_concurrent, limits.max_runtime_s) == (7, 2, 0)
    monkeypatch.setenv("VLPEFT_MAX_QUEUED", "lots")
    with pytest.raises(UserError, match="VLPEFT_MAX_QUEUED='lots' is not a number"):
        JobLimits.from_env()


def test_cancelling_a_queued_job_is_immediate_and_says_who(store: JobStore):
    job_id = store.submit(fake())
    job = store.cancel(job_id, by="ann")
    assert (job.state, job.reason, store.queue_position(job_id)) == ("cancelled", "cancelled by ann while queued", None)
    assert job.finished_at is not None


def test_cancelling_a_job_that_has_ended_is_refused(store: JobStore):
    job_id = store.submit(fake())
    store.claim_next("worker-a", 1)
    store.finish(job_id, "worker-a", Outcome("finished", "finished in 1 s", 0))
    with pytest.raises(UserError, match=r"has already ended \(finished\): there is nothing to cancel"):
        store.cancel(job_id)


def test_resolve_id_accepts_a_unique_prefix_or_the_random_tail(store: JobStore):
    job_id = store.submit(fake())
    assert store.resolve_id(job_id) == job_id
    assert store.resolve_id(job_id[-6:]) == job_id
    assert store.resolve_id(job_id[:17]) == job_id
    with pytest.raises(UserError, match="There is no job 'zzzzzz'"):
        store.resolve_id("zzzzzz")


def test_delete_forgets_an_ended_job_and_its_files_but_refuses_an_active_one(store: JobStore):
    job_id = store.submit(fake())
    with pytest.raises(UserError, match="cancel it before deleting it"):
        store.delete(job_id)
    Path(store.get(job_id).run_dir).mkdir(parents=True)
    store.cancel(job_id)
    store.delete(job_id)
    assert store.list_jobs() == [] and store.events(job_id) == []
    assert not (store.runs_dir / job_id).exists()


def test_claims_are_exclusive_and_respect_the_concurrency_limit(store: JobStore):
    ids = [store.submit(fake()) for _ in range(3)]
    first = store.claim_next("worker-a", max_concurrent=2)
    second = store.claim_next("worker-b", max_concurrent=2)
    assert (first.id, first.claimed_by, second.id, second.claimed_by) == (ids[0], "worker-a", ids[1], "worker-b")
    assert store.claim_next("worker-c", max_concurrent=2) is None
    assert store.get(ids[2]).state == "queued"
    assert store.events(ids[0])[-1]["reason"] == "started by worker worker-a"


# --- the supervisor with the stand-in trainer ------------------------------------------------------


def test_jobs_run_in_their_own_process_in_order_and_finish(home: Path, store: JobStore, supervisors):
    ids = [store.submit(fake(steps=3)) for _ in range(2)]
    supervisor = supervisors()
    run_until(supervisor, lambda: all(store.get(i).state == "finished" for i in ids))

    first, second = (store.get(i) for i in ids)
    assert first.started_at < second.started_at and first.finished_at <= second.started_at
    assert first.pid != os.getpid() and first.exit_code == 0
    assert first.reason.startswith("finished in ")
    assert started_runs(home) == Counter(ids)
    log = (Path(first.run_dir) / "log.txt").read_text()
    assert "[worker] " in log and "step 3/3 loss 0.667" in log  # the child's stdout went to the file
    status = job_status(store, first.id)
    assert status["phase"] == "done" and (status["step"], status["total_steps"]) == (3, 3)
    assert status["log_tail"][-1] == "step 3/3 loss 0.667"
    assert [e["to_state"] for e in store.events(first.id)] == ["queued", "running", "finished"]


def test_status_while_running_has_live_progress_and_counts_down(store: JobStore, supervisors):
    job_id = store.submit(fake("finish", steps=200))
    supervisor = supervisors()
    run_until(supervisor, reached_step(store, job_id, 3))

    status = job_status(store, job_id)
    assert status["state"] == "running" and status["phase"] == "training"
    assert status["total_steps"] == 200 and 3 <= status["step"] < 200
    assert 0 < status["eta_s"] <= 0.05 * (200 - 3) and status["samples_per_s"] == 40.0
    assert status["loss"] == pytest.approx(2.0 / status["step"])
    assert status["elapsed_s"] > 0 and status["queue_position"] is None
    assert status["log_tail"][-1].startswith("step ")


def test_cancel_from_another_process_stops_gracefully_and_keeps_the_partial_run(home: Path, supervisors):
    store = JobStore(limits=LIMITS)
    job_id = store.submit(fake("finish", steps=500))
    supervisor = supervisors()
    run_until(supervisor, reached_step(store, job_id, 2))
    pid = store.get(job_id).pid

    other = subprocess.run(
        [sys.executable, "-m", "training", "cancel", job_id[-6:], "--by", "ann"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 0, other.stderr
    assert "stop requested" in other.stdout
    run_until(supervisor, is_state(store, job_id, "cancelled", "failed"))

    job = store.get(job_id)
    assert job.state == "cancelled"
    assert job.reason == "cancelled by ann; the weights trained so far are kept"
    assert job.exit_code == 3 and not is_alive(pid)
    assert (Path(job.run_dir) / "weights.safetensors").exists()
    assert "stop requested by ann" in [e["reason"] for e in store.events(job_id)]


def test_a_job_that_ignores_the_stop_is_killed_with_its_whole_process_tree(store: JobStore, supervisors):
    job_id = store.submit(fake("stubborn", steps=2000))
    supervisor = supervisors(limits=JobLimits(stop_grace_s=0.5, max_runtime_s=0))
    run_until(supervisor, reached_step(store, job_id, 2))
    pid = store.get(job_id).pid
    wait_for(lambda: len(group_members(pid)) == 2)  # the trainer and its `sleep` child

    store.cancel(job_id, by="ann")
    run_until(supervisor, is_state(store, job_id, "cancelled"), timeout=10)

    job = store.get(job_id)
    assert job.reason == "cancelled by ann; killed after the grace period; no weights were saved"
    assert job.exit_code == -signal.SIGKILL
    assert group_members(pid) == []


def test_a_job_past_the_time_limit_is_stopped_with_that_reason(store: JobStore, supervisors):
    job_id = store.submit(fake("finish", steps=2000))
    supervisor = supervisors(limits=JobLimits(max_runtime_s=0.5, stop_grace_s=5))
    run_until(supervisor, is_state(store, job_id, "cancelled"), timeout=15)

    job = store.get(job_id)
    assert job.reason.startswith("stopped at the time limit (VLPEFT_MAX_RUNTIME_S)")
    assert "VLPEFT_MAX_RUNTIME_S" in job.hint


@pytest.mark.parametrize(
    ("mode", "exit_code", "error", "hint"),
    [
        ("crash", 1, "RuntimeError: the batch had no images", None),
        ("oom", 1, "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", outcome.OOM_HINT),
        ("no-java", 1, "FileNotFoundError: [Errno 2] No such file or directory: 'java'", outcome.JAVA_HINT),
        (
            "user-error",
            2,
            "Dataset 'nope' is not a folder or a Hub id: check --dataset.",
            "Dataset 'nope' is not a folder or a Hub id: check --dataset.",
        ),
        ("user-error-java", 2, JAVA_MISSING_MESSAGE, outcome.JAVA_HINT),
    ],
)
def test_a_failure_reports_exit_code_log_tail_and_hint_then_the_next_job_runs(
    store: JobStore, supervisors, mode: str, exit_code: int, error: str, hint: str | None
):
    failing = store.submit(fake(mode, steps=5))
    following = store.submit(fake())
    supervisor = supervisors()
    run_until(supervisor, is_state(store, following, "finished"))

    job = store.get(failing)
    assert (job.state, job.exit_code, job.error, job.hint) == ("failed", exit_code, error, hint)
    assert error in job.reason
    assert job.log_tail.splitlines()[-1].endswith(error)
    assert len(job.log_tail.splitlines()) <= outcome.LOG_TAIL_LINES


def test_kill_9_of_a_job_fails_it_with_its_log_tail_and_the_next_job_runs(home: Path, store: JobStore, supervisors):
    killed = store.submit(fake("finish", steps=500))
    following = store.submit(fake())
    supervisor = supervisors()
    run_until(supervisor, reached_step(store, killed, 2))

    os.kill(store.get(killed).pid, signal.SIGKILL)
    run_until(supervisor, is_state(store, following, "finished"))

    job = store.get(killed)
    assert (job.state, job.reason, job.exit_code, job.hint) == ("failed", "killed by SIGKILL", -9, outcome.KILLED_HINT)
    assert "step 2/500" in job.log_tail
    assert started_runs(home) == Counter([killed, following])


def test_supervisor_restart_marks_the_lost_job_interrupted_and_runs_the_queue_once(
    home: Path, store: JobStore, supervisors, worker_processes
):
    lost = store.submit(fake("finish", steps=500))
    queued = [store.submit(fake()) for _ in range(3)]
    worker = worker_processes()
    wait_for(reached_step(store, lost, 2), timeout=30)
    pid = store.get(lost).pid

    worker.kill()  # the machine restarts: the worker and its job die together
    worker.wait()
    signal_group(pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(pid))
    assert store.get(lost).state == "running"  # nobody has noticed yet

    supervisor = supervisors()
    supervisor.start()
    job = store.get(lost)
    assert job.state == "interrupted"
    assert job.reason == "the job's process is gone and the worker that ran it stopped; see the log tail"
    assert "step 2/500" in job.log_tail
    run_until(supervisor, lambda: all(store.get(i).state == "finished" for i in queued))
    assert started_runs(home) == Counter([lost, *queued])


def test_a_new_supervisor_adopts_a_job_that_outlived_its_worker(
    home: Path, store: JobStore, supervisors, worker_processes
):
    job_id = store.submit(fake("finish", steps=40))
    worker = worker_processes()
    wait_for(reached_step(store, job_id, 1), timeout=30)
    worker.kill()
    worker.wait()
    pid = store.get(job_id).pid
    assert is_alive(pid, store.get(job_id).pid_start)  # the job runs in its own session

    supervisor = supervisors()
    supervisor.start()
    assert store.get(job_id).claimed_by == supervisor.id
    run_until(supervisor, is_state(store, job_id, "finished"))
    assert store.get(job_id).reason == "finished; exit code unknown (the worker that started it had stopped)"
    assert started_runs(home) == Counter([job_id])


def test_many_submissions_from_several_processes_are_all_kept_and_each_runs_once(
    home: Path, store: JobStore, supervisors, worker_processes
):
    script = textwrap.dedent(
        """
        import sys
        from training.run.config import RunConfig
        from training.jobs.store import JobStore
        from tests.test_jobs import LIMITS
        store = JobStore(limits=LIMITS)
        for _ in range(6):
            print(store.submit(RunConfig(max_steps=1, batch_size=4, extra={"fake": "finish"}), sys.argv[1]))
        """
    )
    worker_processes(max_concurrent=3)  # a second supervisor, in its own process, competes for the same queue
    supervisor = supervisors(limits=JobLimits(max_concurrent=3, max_runtime_s=0))
    supervisor.start_in_thread()
    wait_for(lambda: len(live_supervisors(store)) == 2, timeout=30)
    submitters = [
        subprocess.Popen([sys.executable, "-c", script, f"user{i}"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    submitted = [line for proc in submitters for line in proc.communicate(timeout=60)[0].split()]
    assert all(proc.returncode == 0 for proc in submitters)

    assert len(submitted) == len(set(submitted)) == 24
    assert sorted(job.id for job in store.list_jobs()) == sorted(submitted)
    wait_for(lambda: store.count(["finished"]) == 24, timeout=60)
    assert started_runs(home) == Counter(submitted)
    for job_id in submitted:
        assert [e["to_state"] for e in store.events(job_id)] == ["queued", "running", "finished"]
    assert len({job.claimed_by for job in store.list_jobs()}) == 2  # both supervisors took part


def test_a_supervisor_in_a_thread_is_registered_while_it_runs(store: JobStore, supervisors):
    supervisor = supervisors()
    supervisor.start_in_thread()
    wait_for(lambda: supervisor.id in live_supervisors(store))
    job_id = store.submit(fake())
    wait_for(is_state(store, job_id, "finished"))
    supervisor.stop()
    assert supervisor.id not in live_supervisors(store)


# --- reading run directories defensively ----------------------------------------------------------


def test_status_falls_back_to_the_last_complete_metrics_line_and_survives_garbage(store: JobStore):
    job_id = store.submit(fake())
    run_dir = Path(store.get(job_id).run_dir)
    run_dir.mkdir(parents=True)
    assert job_status(store, job_id)["step"] is None  # nothing written yet
    (run_dir / "progress.json").write_text('{"phase": "trai')  # caught mid-write
    (run_dir / "metrics.jsonl").write_text('{"step": 4, "total_steps": 9, "loss": 1.5}\n{"step": 5, "to')
    (run_dir / "log.txt").write_bytes(b"one\ntwo\n\xff bad bytes\n")

    status = job_status(store, job_id, log_lines=2)
    assert (status["step"], status["total_steps"], status["loss"]) == (4, 9, 1.5)
    assert status["log_tail"] == ["two", "\ufffd bad bytes"]
    assert (status["state"], status["phase"], status["queue_position"]) == ("queued", "queued", 1)


# --- the command line -------------------------------------------------------------------------------


def test_cli_submit_prints_the_id_and_status_json_has_the_contract_keys(store: JobStore, capsys):
    assert main(["submit", "--method", "prefix", "--budget", "10k", "--max-steps", "3", "--submitter", "ann"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert store.get(job_id).run_config.method == "prefix"

    assert main(["status", job_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {"id", "state", "step", "total_steps", "loss", "eta_s", "run_dir", "error"} <= set(status)
    assert (status["id"], status["state"], status["queue_position"]) == (job_id, "queued", 1)
    assert "--method prefix --budget 10k" in status["command"]

    assert main(["jobs"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["ID", "STATE", "SUBMITTER"]
    assert table[1].split()[:3] == [job_id, "queued", "ann"] and "queued #1" in table[1]
    assert main(["jobs", "--json"]) == 0
    assert [row["id"] for row in json.loads(capsys.readouterr().out)] == [job_id]

    assert main(["cancel", job_id, "--by", "ann"]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: cancelled (cancelled by ann while queued)"


def test_cli_submit_over_the_limit_exits_2_with_the_reason(home: Path, monkeypatch, capsys):
    monkeypatch.setenv("VLPEFT_MAX_QUEUED_PER_USER", "1")
    assert main(["submit", "--submitter", "ann"]) == 0
    assert main(["submit", "--submitter", "ann"]) == 2
    assert "error: ann already has 1 job queued or running" in capsys.readouterr().err


def test_cli_submit_makes_local_paths_absolute(home: Path, tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "mydata").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["submit", "--dataset", "mydata", "--base-model", "some-org/blip"]) == 0
    job = JobStore().get(capsys.readouterr().out.strip())
    assert (job.config["dataset"], job.config["base_model"]) == (str(tmp_path / "mydata"), "some-org/blip")


def test_cli_worker_runs_the_queue_and_exits_when_idle(home: Path, store: JobStore, monkeypatch):
    job_id = store.submit(fake())
    monkeypatch.setattr(
        "training.jobs.cli.Supervisor", lambda store, poll_s: Supervisor(store, poll_s=0.05, command=fake_command)
    )
    assert main(["worker", "--exit-when-idle"]) == 0
    assert store.get(job_id).state == "finished"
    assert live_supervisors(store) == []


def test_process_identity_includes_the_start_time():
    assert is_alive(os.getpid(), process_start_time(os.getpid()))
    assert not is_alive(os.getpid(), "0")
    assert not is_alive(None)
    done = subprocess.Popen(["true"])
    done.wait()
    assert not is_alive(done.pid)
