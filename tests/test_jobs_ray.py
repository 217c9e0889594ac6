"""The job queue on a Ray cluster (VLPEFT_RAY_ADDRESS): a local Ray instance the tests start, the real trainer
on the tiny checkpoint, run directories written in place or shipped back, cancel, progress and failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from training.jobs.limits import JobLimits
from training.jobs.ray_runner import TOKEN, RayJobRunner, Shipper, write_pieces
from training.jobs.status import job_status
from training.jobs.store import JobStore
from training.jobs.supervisor import Supervisor
from training.run import runs
from training.run.config import RunConfig


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def tiny_job(model: Path, dataset: Path, **overrides) -> RunConfig:
    values = dict(
        task="vqa",
        method="lora",
        budget="2k",
        base_model=str(model),
        dataset=str(dataset),
        max_steps=3,
        batch_size=4,
        eval_limit=4,
        max_new_tokens=4,
        device="cpu",
    )
    return RunConfig(**{**values, **overrides})


def run_until(supervisor: Supervisor, predicate, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.run_once()
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the Ray job")


@pytest.mark.slow
def test_with_a_ray_address_jobs_run_as_ray_tasks_and_fail_with_the_trainers_reason(
    ray_address, tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv("VLPEFT_RAY_ADDRESS", ray_address)
    store = JobStore(tmp_path / "jobs.sqlite3", limits=JobLimits(max_concurrent=2))
    supervisor = Supervisor(store, poll_s=0.2)
    good = store.submit(tiny_job(tiny_model_dir, tiny_vqa_dataset))
    bad = store.submit(tiny_job(tiny_model_dir, tmp_path / "no-such-dataset"))
    try:
        run_until(supervisor, lambda: store.get(good).is_final and store.get(bad).is_final)
    finally:
        supervisor.close()

    job = store.get(good)
    assert job.state == "finished", (job.reason, job.log_tail)
    assert job.pid is None  # no process on this machine: the trainer ran in the Ray task
    assert any("runs as a Ray task on the Ray cluster" in e["reason"] for e in store.events(good))
    run_dir = Path(job.run_dir)
    # The node shares the data home (same machine): the trainer wrote the run directory in place.
    for name in (runs.CONFIG, runs.WEIGHTS, runs.EVAL, runs.PREDICTIONS, runs.METRICS):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / TOKEN).exists()
    assert runs.read_json(run_dir / runs.EVAL)["metrics"]["num_examples"] == 4
    log = (run_dir / runs.LOG).read_text()
    assert log.startswith("[worker] ") and "on the Ray cluster" in log and "step 3/3" in log

    failed = store.get(bad)
    assert failed.state == "failed" and failed.exit_code == 2
    assert "no-such-dataset" in failed.reason and "no-such-dataset" in failed.hint


@pytest.mark.long  # minutes: a Ray task that starts the trainer, and an actor restart
def test_the_queue_outlives_its_mailbox_actor(ray_address, tiny_model_dir, tiny_vqa_dataset, tmp_path):
    """The mailbox actor dies mid-job (its node scaled down, killed for memory): Ray restarts it and the job
    finishes, instead of every later pass of the worker failing on it."""
    import ray

    store = JobStore(tmp_path / "jobs.sqlite3")
    runner = RayJobRunner(ray_address, ship_always=True)
    supervisor = Supervisor(store, poll_s=0.2, ray=runner)
    job_id = store.submit(tiny_job(tiny_model_dir, tiny_vqa_dataset, max_steps=20, batch_size=2, patience=0))
    try:
        run_until(supervisor, lambda: (job_status(store, job_id)["step"] or 0) >= 2)
        ray.kill(runner._mailbox, no_restart=False)
        run_until(supervisor, lambda: store.get(job_id).is_final)
    finally:
        supervisor.close()
    job = store.get(job_id)
    assert job.state == "finished", (job.reason, job.log_tail)
    assert (Path(job.run_dir) / runs.EVAL).is_file() and (Path(job.run_dir) / runs.WEIGHTS).is_file()


@pytest.mark.slow
def test_a_node_without_the_data_home_ships_progress_and_files_back_and_a_cancel_stops_it_gracefully(
    ray_address, tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    store = JobStore(tmp_path / "jobs.sqlite3", limits=JobLimits(stop_grace_s=60))
    supervisor = Supervisor(store, poll_s=0.2, ray=RayJobRunner(ray_address, ship_always=True))
    # patience=0: a fixed schedule, so that early stopping cannot end the job before it is cancelled.
    job_id = store.submit(tiny_job(tiny_model_dir, tiny_vqa_dataset, max_steps=100_000, batch_size=2, patience=0))
    run_dir = Path(store.get(job_id).run_dir)
    try:
        # The trainer writes in a scratch folder on the node: what shows here came through the mailbox.
        run_until(supervisor, lambda: (job_status(store, job_id)["step"] or 0) >= 10)
        status = job_status(store, job_id)
        assert status["state"] == "running" and status["phase"] == "training" and status["loss"] > 0
        assert len(runs.read_jsonl(run_dir / runs.METRICS)) >= 2
        store.cancel(job_id, by="tester")
        run_until(supervisor, lambda: store.get(job_id).is_final)
    finally:
        supervisor.close()
    job = store.get(job_id)
    assert job.state == "cancelled" and job.reason == "cancelled by tester; the weights trained so far are kept"
    assert job.exit_code == runs.EXIT_STOPPED
    assert (run_dir / runs.WEIGHTS).stat().st_size > 0 and (run_dir / runs.CONFIG).is_file()
    assert runs.read_json(run_dir / runs.PROGRESS)["phase"] == "stopped"
    log = (run_dir / runs.LOG).read_text()
    assert log.count("[worker]") == 1 and "stopped on request" in log
    steps = [row["step"] for row in runs.read_jsonl(run_dir / runs.METRICS)]
    assert steps == sorted(set(steps)) and steps[0] == 1  # every line once, in order


def test_shipped_pieces_are_whole_lines_then_everything_and_only_plain_names_are_written(tmp_path):
    node, home = tmp_path / "node", tmp_path / "home"
    node.mkdir()
    home.mkdir()
    (node / runs.METRICS).write_text('{"step": 1}\n{"step": 2')
    runs.write_json(node / runs.PROGRESS, {"phase": "training", "step": 1})
    shipper = Shipper(node)
    write_pieces(home, shipper.pieces())
    assert (home / runs.METRICS).read_text() == '{"step": 1}\n'
    assert runs.read_json(home / runs.PROGRESS)["step"] == 1
    assert shipper.pieces() == {"append": {}, "whole": {}}  # nothing new
    with open(node / runs.METRICS, "a") as handle:
        handle.write("}\n")
    (node / runs.WEIGHTS).write_bytes(b"\x00weights")
    final = shipper.pieces(final=True)
    final["whole"]["../escape.txt"] = b"no"
    final["whole"][TOKEN] = b"no"
    write_pieces(home, final)
    assert [row["step"] for row in runs.read_jsonl(home / runs.METRICS)] == [1, 2]
    assert (home / runs.WEIGHTS).read_bytes() == b"\x00weights"
    assert not (tmp_path / "escape.txt").exists() and not (home / TOKEN).exists()


def test_the_ray_settings_come_from_the_environment_with_clear_errors(monkeypatch):
    from training.errors import UserError

    monkeypatch.delenv("VLPEFT_RAY_ADDRESS", raising=False)
    assert RayJobRunner.from_env() is None
    monkeypatch.setenv("VLPEFT_RAY_ADDRESS", "auto")
    monkeypatch.setenv("VLPEFT_RAY_NUM_CPUS", "4")
    monkeypatch.setenv("VLPEFT_RAY_NUM_GPUS", "1")
    runner = RayJobRunner.from_env()
    assert (runner.address, runner.num_cpus, runner.num_gpus) == ("auto", 4, 1)
    monkeypatch.setenv("VLPEFT_RAY_NUM_GPUS", "one")
    with pytest.raises(UserError, match="VLPEFT_RAY_NUM_GPUS='one' is not a number"):
        RayJobRunner.from_env()


def test_a_task_that_ray_lost_fails_with_rays_reason_and_a_hint(tmp_path):
    exceptions = pytest.importorskip("ray.exceptions")
    from training.jobs.outcome import OOM_HINT
    from training.jobs.ray_runner import failure_outcome

    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.get(store.submit(RunConfig(task="vqa", method="lora")))
    Path(job.run_dir).mkdir(parents=True)
    (Path(job.run_dir) / runs.LOG).write_text("step 5/100 loss 1.0\n")
    lost = failure_outcome(job, exceptions.OutOfMemoryError("Task was killed due to the node running low on memory."))
    assert lost.state == "failed" and lost.hint == OOM_HINT and lost.log_tail == "step 5/100 loss 1.0"
    assert lost.reason == "the Ray task failed: Task was killed due to the node running low on memory."
    crashed = failure_outcome(job, exceptions.WorkerCrashedError())
    assert crashed.reason.startswith("the Ray task failed: The worker died unexpectedly")
    assert "ray status" in crashed.hint
