"""Jobs end to end with the real trainer (`python -m training train`) on the tiny BLIP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_jobs import group_members, wait_for
from tests.test_resume import config as resumable
from training.jobs.limits import JobLimits
from training.jobs.outcome import KILLED_HINT
from training.jobs.status import job_status
from training.jobs.store import JobStore
from training.jobs.supervisor import Supervisor
from training.launch.pids import is_alive, signal_group
from training.paths import REPO_ROOT
from training.run import runs
from training.run.config import RunConfig

pytestmark = pytest.mark.slow

LIMITS = JobLimits(max_queued=10, max_queued_per_submitter=10, max_runtime_s=0, max_concurrent=1, stop_grace_s=15)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store in a fresh data directory; every job process it recorded is killed afterwards."""
    monkeypatch.setenv("VLPEFT_HOME", str(tmp_path / "home"))
    store = JobStore(limits=LIMITS)
    yield store
    for job in store.list_jobs():
        if is_alive(job.pid, job.pid_start):
            signal_group(job.pid, signal.SIGKILL)


@pytest.fixture
def supervisor(store: JobStore):
    supervisor = Supervisor(store, poll_s=0.1)
    yield supervisor
    supervisor.close(stop_jobs=True, timeout=20)


@pytest.fixture
def tiny_run(tiny_model_dir: Path, tiny_caption_dataset: Path):
    def make(max_steps: int) -> RunConfig:
        return RunConfig(
            task="caption",
            method="lora",
            budget="2k",
            base_model=str(tiny_model_dir),
            dataset=str(tiny_caption_dataset),
            max_steps=max_steps,
            batch_size=4,
            eval_limit=8,
            patience=0 if max_steps > 100 else 3,  # a long job must not stop early on its own
        )

    return make


def training_started(store: JobStore, job_id: str):
    return lambda: (job_status(store, job_id)["step"] or 0) >= 1


def test_cancel_mid_run_stops_the_trainer_and_keeps_what_it_trained(store: JobStore, supervisor, tiny_run):
    job_id = store.submit(tiny_run(max_steps=100_000))
    wait_for(training_started(store, job_id), timeout=60, tick=supervisor.run_once)
    pid = store.get(job_id).pid

    store.cancel(job_id, by="ann")
    wait_for(lambda: store.get(job_id).is_final, timeout=30, tick=supervisor.run_once)

    job = store.get(job_id)
    assert (job.state, job.exit_code) == ("cancelled", 3), job.log_tail
    assert job.reason == "cancelled by ann; the weights trained so far are kept"
    assert not is_alive(pid) and not group_members(pid)
    run_dir = Path(job.run_dir)
    assert (run_dir / "weights.safetensors").is_file() and not (run_dir / "eval.json").exists()
    assert job_status(store, job_id)["phase"] == "stopped"


def test_after_kill_9_of_a_job_the_worker_command_trains_the_next_one_to_the_end(store: JobStore, tiny_run):
    killed = store.submit(tiny_run(max_steps=100_000), submitter="ann")
    following = store.submit(tiny_run(max_steps=3), submitter="bob")
    worker = subprocess.Popen(
        [sys.executable, "-m", "training", "worker", "--exit-when-idle", "--poll", "0.1"],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The first step's log line, not just its progress file: the kill must come after what the test reads back.
        wait_for(lambda: any("step 1/100000" in line for line in job_status(store, killed)["log_tail"]), timeout=60)
        os.kill(store.get(killed).pid, signal.SIGKILL)
        worker_log = worker.communicate(timeout=120)[1]
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == 0, worker_log

    job = store.get(killed)
    assert (job.state, job.exit_code, job.reason) == ("failed", -9, "killed by SIGKILL")
    assert "step 1/100000" in job.log_tail and job.hint == KILLED_HINT
    status = job_status(store, following)
    assert (status["state"], status["exit_code"], status["error"]) == ("finished", 0, None), status["log_tail"]
    assert (status["phase"], status["step"], status["total_steps"]) == ("done", 3, 3)
    run_dir = Path(status["run_dir"])
    assert run_dir == store.runs_dir / following
    assert (run_dir / "weights.safetensors").is_file() and (run_dir / "eval.json").is_file()
    assert json.loads((run_dir / "config.json").read_text())["trainable_params"] > 0
    assert (run_dir / "log.txt").read_text().count("step 3/3 ") == 1  # each trainer line once, not per stream
    assert f"job {killed} failed: killed by SIGKILL" in worker_log and f"job {following} finished" in worker_log


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_a_job_whose_worker_and_trainer_die_resumes_under_the_next_worker_from_its_saved_state(
    method: str, store: JobStore, tiny_model_dir: Path, tiny_vqa_dataset: Path
):
    """The machine goes down mid-run (worker and trainer killed at once, as a Space restart does): the next worker
    puts the job back in the queue and its trainer goes on from the last saved state to the end."""
    config = resumable(tiny_model_dir, tiny_vqa_dataset, method, max_steps=40, lr=None)
    job_id = store.submit(config)
    run_dir = store.runs_dir / job_id
    first = subprocess.Popen([sys.executable, "-m", "training", "worker", "--poll", "0.1"], cwd=REPO_ROOT)
    try:
        wait_for(lambda: (runs.saved_step(run_dir) or 0) >= 10, timeout=120)
        trainer = store.get(job_id).pid
        first.kill()
        signal_group(trainer, signal.SIGKILL)
        first.wait()
        wait_for(lambda: not is_alive(trainer), timeout=10)
    finally:
        first.kill()
    saved = runs.saved_step(run_dir)
    assert store.get(job_id).state == "running"  # nobody has noticed yet

    second = subprocess.run(
        [sys.executable, "-m", "training", "worker", "--exit-when-idle", "--poll", "0.1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    job = store.get(job_id)
    assert (job.state, job.exit_code) == ("finished", 0), (second.stderr[-2000:], job.log_tail)
    history = [event["reason"] for event in store.events(job_id)]
    assert any(reason.endswith(f"resumes at step {saved}") for reason in history), history
    assert f"resumed at step {saved}" in (run_dir / runs.LOG).read_text()
    steps = [row["step"] for row in runs.read_jsonl(run_dir / runs.VALIDATION)]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # each validation once, to the end
    assert runs.saved_step(run_dir) is None  # finished: its state is gone
