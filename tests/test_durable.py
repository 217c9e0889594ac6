"""Runs published to a bucket-like durable location: written whole and once, never rewritten or appended,
and enough to rebuild the list of runs after a restart on an empty local disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
from pathlib import Path

import pytest

from app.services import Services
from app.settings import Settings
from tests.test_jobs import wait_for
from tests.test_resume import config as resumable
from training.jobs.durable import CHECKPOINTS, FINAL, LOST_REASON, STARTED, DurableRuns, write_once
from training.jobs.limits import JobLimits
from training.jobs.status import job_status
from training.jobs.store import JobStore
from training.jobs.supervisor import Supervisor
from training.launch.pids import is_alive, signal_group
from training.run.config import RunConfig

LIMITS = JobLimits(max_queued=10, max_queued_per_submitter=10, max_runtime_s=0, max_concurrent=1, stop_grace_s=5)


class WriteOnceWatch:
    """Remembers every file of the durable folder the first time it is seen (inode, size, mtime, digest) and
    fails when a remembered file has changed: rewritten, appended to, or replaced by a rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: dict[Path, tuple] = {}

    def check(self) -> int:
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            assert not path.name.startswith("."), f"a temporary file was left on the durable location: {path}"
            assert "sqlite" not in path.name, f"a database on the durable location: {path}"
            stat = path.stat()
            state = (stat.st_ino, stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            assert self.seen.setdefault(path, state) == state, f"{path} changed after it was published"
        return len(self.seen)


def test_write_once_refuses_an_existing_file_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "eval.json"
    write_once(target, b"{}")
    with pytest.raises(FileExistsError):
        write_once(target, b'{"rewritten": true}')
    assert target.read_bytes() == b"{}"

    class Broken:
        def read(self, size: int) -> bytes:
            raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        write_once(tmp_path / "weights.safetensors", Broken())
    assert not (tmp_path / "weights.safetensors").exists()


def test_publishing_copies_subfolders_and_leaves_out_the_stop_request_and_temporary_files(tmp_path):
    local = tmp_path / "local" / "job-1"
    (local / "tensorboard").mkdir(parents=True)
    (local / "tensorboard" / "events.out.tfevents.1").write_bytes(b"events")
    for name in ("log.txt", "progress.json", "STOP", ".eval.json.123.tmp"):
        (local / name).write_text(name)
    folder = DurableRuns(tmp_path / "bucket").publish({"id": "job-1", "state": "cancelled"}, [], local)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        FINAL,
        "log.txt",
        "progress.json",
        "tensorboard/events.out.tfevents.1",
    ]


def test_incomplete_published_records_are_left_out_of_the_list(tmp_path):
    durable = DurableRuns(tmp_path / "bucket")
    job = {
        "id": "job-1",
        "submitter": "ann",
        "state": "finished",
        "reason": "finished in 3 s",
        "config": {},
        "run_dir": "x",
        "created_at": 1.0,
        "updated_at": 2.0,
        "started_at": 1.5,
    }
    durable.publish(job, [], tmp_path / "nothing")
    durable.started({**job, "id": "job-2", "state": "running"})
    for job_id, text in (("job-3", '{"job": {"id": "job-3"}}'), ("job-4", '{"job": ')):
        (durable.run_dir(job_id)).mkdir(parents=True)
        (durable.run_dir(job_id) / FINAL).write_text(text)
    found = {row["id"]: row["state"] for row, _ in durable.records()}
    assert found == {"job-1": "finished", "job-2": "interrupted"}
    assert [row["id"] for row, _ in durable.records(skip={"job-1"})] == ["job-2"]


def test_a_store_without_durable_location_keeps_runs_in_its_data_home(tmp_path, monkeypatch):
    monkeypatch.delenv("VLPEFT_DURABLE", raising=False)
    store = JobStore(tmp_path / "home" / "jobs.sqlite3", limits=LIMITS)
    assert store.durable is None
    monkeypatch.setenv("VLPEFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VLPEFT_DURABLE", str(tmp_path / "bucket"))
    assert JobStore(limits=LIMITS).durable.root == tmp_path / "bucket"  # the one setting turns it on


def _kill_hard(store: JobStore, job_id: str) -> None:
    """The machine goes away: the job's process group dies without a word, and no worker records it."""
    job = store.get(job_id)
    signal_group(job.pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(job.pid, job.pid_start), timeout=10)


@pytest.mark.slow
def test_runs_survive_a_restart_on_an_empty_local_disk_and_nothing_published_is_rewritten(
    tmp_path, tiny_model_dir, tiny_vqa_dataset
):
    local, bucket = tmp_path / "local", tmp_path / "bucket"
    watch = WriteOnceWatch(bucket)

    def config(max_steps: int, method: str = "lora") -> RunConfig:
        return RunConfig(
            task="vqa",
            method=method,
            budget="2k",
            base_model=str(tiny_model_dir),
            dataset=str(tiny_vqa_dataset),
            max_steps=max_steps,
            batch_size=4,
            eval_limit=8,
            patience=0 if max_steps > 100 else 3,
        )  # a long job must not stop early on its own

    def open_store() -> tuple[JobStore, Supervisor]:
        store = JobStore(local / "jobs.sqlite3", limits=LIMITS, durable=bucket)
        return store, Supervisor(store, poll_s=0.1)

    def finish(store: JobStore, supervisor: Supervisor, job_id: str) -> None:
        wait_for(lambda: store.get(job_id).is_final, timeout=180, step=0.2, tick=supervisor.run_once)
        assert store.get(job_id).state == "finished", store.get(job_id).log_tail
        watch.check()

    def training(store: JobStore, supervisor: Supervisor, job_id: str) -> None:
        wait_for(lambda: (job_status(store, job_id)["step"] or 0) >= 1, timeout=120, step=0.2, tick=supervisor.run_once)

    store, supervisor = open_store()
    first = store.submit(config(3), submitter="ann")
    cut = store.submit(config(100_000, "prompt"), submitter="bob")
    waiting = store.submit(config(3, "serial-adapter"), submitter="cy")
    finish(store, supervisor, first)
    published = Path(store.get(first).run_dir)
    assert published == bucket / "runs" / first and not (local / "runs" / first).exists()
    files = {
        "config.json",
        "weights.safetensors",
        "eval.json",
        "predictions.jsonl",
        "metrics.jsonl",
        "log.txt",
        "validation.jsonl",
    }
    assert {p.name for p in published.iterdir()} == files | {"progress.json", FINAL, STARTED}
    assert job_status(store, first)["phase"] == "done"

    # The worker and the job process die together; the local disk survives: the queue is intact.
    training(store, supervisor, cut)
    assert (bucket / "runs" / cut / STARTED).is_file() and not (bucket / "runs" / cut / FINAL).exists()
    _kill_hard(store, cut)
    supervisor.close()
    store, supervisor = open_store()
    assert store.get(waiting).state == "queued"
    finish(store, supervisor, waiting)  # the restarted worker closes the dead job, then runs the queued one
    assert store.get(cut).state == "interrupted"
    assert (bucket / "runs" / cut / FINAL).is_file()

    # Now the disk goes too, while a job runs.
    lost = store.submit(config(100_000), submitter="dee")
    training(store, supervisor, lost)
    _kill_hard(store, lost)
    supervisor.close()
    shutil.rmtree(local)
    store, supervisor = open_store()
    assert (local / "jobs.sqlite3").is_file()
    jobs = {job.id: job for job in store.list_jobs()}
    assert list(jobs) == [first, cut, waiting, lost]  # in submission order
    assert {i: j.state for i, j in jobs.items()} == {
        first: "finished",
        cut: "interrupted",
        waiting: "finished",
        lost: "interrupted",
    }
    assert jobs[lost].reason == LOST_REASON and jobs[lost].config == config(100_000).to_dict()
    assert jobs[first].submitter == "ann" and jobs[waiting].exit_code == 0
    assert [e["to_state"] for e in store.events(first)] == ["queued", "running", "finished", "finished"]
    assert json.loads((bucket / "runs" / first / FINAL).read_text())["job"]["state"] == "finished"

    # The app lists them with their scores, and the new queue on local disk runs new jobs.
    services = Services(
        Settings(
            base_model=str(tiny_model_dir),
            datasets={"vqa": str(tiny_vqa_dataset)},
            home=local,
            durable=bucket,
            limits=LIMITS,
        )
    )
    records = {record.id: record for record in services.runs()}
    assert records[first].has_weights and records[first].score[0] == "accuracy"
    assert records[waiting].comparable and not records[lost].has_weights
    assert services.zip_run(first).stat().st_size > 0
    after = store.submit(config(3, "parallel-adapter"), submitter="ann")
    finish(store, supervisor, after)
    assert sorted(DurableRuns(bucket).runs_dir.iterdir()) == sorted(bucket / "runs" / i for i in (*jobs, after))
    assert watch.check() > 20

    services.delete(first, "ann")
    assert not (bucket / "runs" / first).exists() and first not in {
        job.id for job in JobStore(local / "jobs.sqlite3", durable=bucket).list_jobs()
    }
    services.close()
    supervisor.close()


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_a_running_jobs_checkpoint_survives_a_restart_on_an_empty_local_disk_and_the_job_resumes_from_it(
    method, tmp_path, tiny_model_dir, tiny_vqa_dataset
):
    """A Space restarts on an empty local disk while a job trains: the newest state its worker published (new
    files, every `checkpoint_s`) brings the job back to the queue, and it trains from there to the end."""
    local, bucket = tmp_path / "local", tmp_path / "bucket"
    watch = WriteOnceWatch(bucket)
    limits = dataclasses.replace(LIMITS, checkpoint_s=0.2)
    config = resumable(tiny_model_dir, tiny_vqa_dataset, method, max_steps=60, lr=None)
    store = JobStore(local / "jobs.sqlite3", limits=limits, durable=bucket)
    supervisor = Supervisor(store, poll_s=0.1)
    job_id = store.submit(config, submitter="ann")
    durable = DurableRuns(bucket)

    def checkpointed() -> bool:
        newest = durable.newest_checkpoint(job_id)
        return newest is not None and newest[0] >= 10

    wait_for(checkpointed, timeout=180, step=0.2, tick=supervisor.run_once)
    watch.check()
    signal_group(store.get(job_id).pid, signal.SIGKILL)  # the machine goes down, and the local disk with it
    wait_for(lambda: not is_alive(store.get(job_id).pid), timeout=10)
    step = durable.newest_checkpoint(job_id)[0]
    shutil.rmtree(local)

    store = JobStore(local / "jobs.sqlite3", limits=limits, durable=bucket)
    job = store.get(job_id)
    assert (job.state, job.reason) == (
        "queued",
        f"the app restarted while this job ran and its local files were lost; resumes at step {step}",
    )
    supervisor = Supervisor(store, poll_s=0.1)
    wait_for(lambda: store.get(job_id).is_final, timeout=180, step=0.2, tick=supervisor.run_once)
    job = store.get(job_id)
    assert job.state == "finished", job.log_tail
    published = Path(job.run_dir)
    assert f"resumed at step {step}" in (published / "log.txt").read_text()
    steps = [json.loads(line)["step"] for line in (published / "validation.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    assert not (published / CHECKPOINTS).exists() and not (published / "resume").exists()  # ended: none kept
    watch.check()
    supervisor.close()
