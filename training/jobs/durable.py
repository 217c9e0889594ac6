"""Finished runs published to a durable location that takes new files written whole, and nothing else.

A Hugging Face Space keeps data in a Storage Bucket mounted at /data: no reliable locks across processes,
eventually consistent, new files only (no rewrites, no appends). So the job store (SQLite) and the runs in
progress stay on local disk, and this module publishes to the durable location:

  runs/<job id>/started.json   when the job's process starts: the job as submitted (so that a job whose local
                               files are lost with the disk is still known: queued again to resume from its
                               newest checkpoint, or interrupted when it has none)
  runs/<job id>/<run files>    when the job has ended: every file of its run directory (and of its
                               subfolders), each written once
  runs/<job id>/checkpoints/<step>/
                               every few minutes while the job runs: its run directory with its resumable state
                               (training/run/resume.py) after that step, resume/state.json last; a new folder
                               for each newer step
  runs/<job id>/job.json       last: the job's final row and its history; a run without it is incomplete
  datasets/<name>/<version>/   a dataset added from a zip (training/data/archive.py), every file of its folder,
                               its dataset.json last; a new upload under the same name is a new version
  sweeps/<sweep id>/           a sweep queued from the page (app/sweeps.py): its sweep file, then its job list

Every file is created exclusively (`open(..., "xb")`), written in one pass and closed: nothing here ever
opens a published file for writing again, renames it or appends to it. There is no index file: the list
of runs is rebuilt from these folders (`records`), and a job store that starts empty refills itself from it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from training.run import runs

log = logging.getLogger(__name__)

STARTED = "started.json"
FINAL = "job.json"
CHECKPOINTS = "checkpoints"
NOT_PUBLISHED = {runs.STOP}  # a request to the live process
RESUMED_REASON = "the app restarted while this job ran and its local files were lost; resumes at step {step}"
LOST_REASON = (
    "interrupted: the app restarted while this job ran and its files were on the local disk; "
    "only its settings were kept"
)


class DurableRuns:
    """The published runs under `root/runs/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def run_dir(self, job_id: str) -> Path:
        return self.runs_dir / job_id

    def started(self, job: dict[str, Any]) -> None:
        """Record that a job's process started (once; a job restarted by another worker keeps the first)."""
        folder = self.run_dir(job["id"])
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / STARTED).exists():
            write_once(folder / STARTED, _json_bytes(job))

    def publish(self, job: dict[str, Any], events: list[dict], local_dir: Path) -> Path:
        """Copy an ended job's run files, then its final record; returns the published run directory.

        Files already there (a publication cut short and resumed) are kept as they are.
        """
        folder = self.run_dir(job["id"])
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(local_dir.rglob("*")) if local_dir.is_dir() else ():
            relative = path.relative_to(local_dir)  # subfolders too: a tracker's event files (training/run/tracking.py)
            if path.is_file() and relative.name not in NOT_PUBLISHED and not relative.name.startswith("."):
                target = folder / relative
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "rb") as source:
                        write_once(target, source)
        if not (folder / FINAL).exists():
            write_once(folder / FINAL, _json_bytes({"job": {**job, "run_dir": str(folder)}, "events": events}))
        return folder

    def checkpoint(self, job_id: str, local_dir: Path) -> int | None:
        """Publish a running job's run directory with its newest saved state as a new checkpoint folder (its
        state.json last); the step it holds, or None when there is nothing newer to publish."""
        state = local_dir / runs.RESUME / runs.RESUME_FIELDS
        fields = state.read_bytes() if state.is_file() else b""
        step = runs.saved_step(local_dir)
        newest = self.newest_checkpoint(job_id)
        if step is None or newest is not None and newest[0] >= step:
            return None
        target = self.run_dir(job_id) / CHECKPOINTS / str(step)
        if target.exists():
            return None
        files = [p for p in sorted(local_dir.rglob("*")) if p.is_file() and p != state]
        files = [p for p in files if p.name not in NOT_PUBLISHED and not p.name.startswith(".")]
        for path in files:
            destination = target / path.relative_to(local_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as source:
                write_once(destination, source)
        if runs.saved_step(local_dir) != step:  # the trainer saved a newer state while we copied: try next time
            shutil.rmtree(target, ignore_errors=True)
            return None
        (target / runs.RESUME).mkdir(parents=True, exist_ok=True)
        write_once(target / runs.RESUME / runs.RESUME_FIELDS, fields)
        return step

    def newest_checkpoint(self, job_id: str) -> tuple[int, Path] | None:
        """(step, folder) of a job's newest complete checkpoint."""
        folder = self.run_dir(job_id) / CHECKPOINTS
        complete = [(runs.saved_step(c), c) for c in folder.iterdir()] if folder.is_dir() else []
        complete = [(step, c) for step, c in complete if step is not None]
        return max(complete, key=lambda item: item[0]) if complete else None

    def records(self, skip: set[str] = frozenset()) -> list[tuple[dict[str, Any], list[dict]]]:
        """(job row, events) of the published runs whose ids are not in `skip`, oldest first. A run without
        its final record is a job whose process was running when the local disk was lost: queued again to resume
        when it has a checkpoint, interrupted otherwise. Folders whose records are missing or incomplete are left
        out."""
        found = []
        for folder in self.runs_dir.iterdir() if self.runs_dir.is_dir() else ():
            if folder.name in skip:
                continue
            final = runs.read_json(folder / FINAL)
            if isinstance(final, dict) and _complete(final.get("job"), folder.name):
                found.append((final["job"], final.get("events") or []))
                continue
            started = runs.read_json(folder / STARTED)
            newest = self.newest_checkpoint(folder.name)
            if _complete(started, folder.name) and newest is not None:
                job = {**started, "state": "queued", "reason": RESUMED_REASON.format(step=newest[0])}
                found.append((job, []))
            elif _complete(started, folder.name):
                job = {
                    **started,
                    "state": "interrupted",
                    "reason": LOST_REASON,
                    "run_dir": str(folder),
                    "finished_at": started.get("started_at"),
                }
                found.append((job, []))
        return sorted(found, key=lambda record: (record[0]["created_at"], record[0]["id"]))

    def remove(self, job_id: str) -> None:
        """Delete a run's published files (deleting is allowed; changing them is not)."""
        shutil.rmtree(self.run_dir(job_id), ignore_errors=True)


class DurableDatasets:
    """The datasets added from zips, published under `root/datasets/<name>/<version>/` so that an app whose local
    disk starts empty (a Space after a restart) gets them back, at the same local path its runs name."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root) / "datasets"

    def publish(self, folder: Path) -> Path:
        """Copy a stored dataset folder (its dataset.json last, which marks the version complete)."""
        from training.data.archive import INFO  # PIL: the jobs CLI imports this module

        target = self.root / folder.name / str(time.time_ns())
        publish_folder(folder, target, INFO)
        return target

    def latest(self) -> dict[str, Path]:
        """Name -> the newest complete version."""
        from training.data.archive import INFO, NAME  # PIL: the jobs CLI imports this module

        found = {}
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            versions = [v for v in folder.iterdir() if v.name.isdigit() and (v / INFO).is_file()]
            if NAME.fullmatch(folder.name) and versions:
                found[folder.name] = max(versions, key=lambda v: int(v.name))
        return found

    def remove(self, name: str) -> None:
        """Delete every published version of a dataset (deleting is allowed; changing a file is not)."""
        shutil.rmtree(self.root / name, ignore_errors=True)

    def restore(self, home: Path) -> list[str]:
        """Copy back every published dataset that `home` lacks; returns their names."""
        return [name for name, version in self.latest().items() if copy_back(version, home / name)]


def publish_folder(folder: Path, target: Path, last: str) -> None:
    """Publish every file of `folder` under `target`, each written once, the file `last` (directly in `folder`)
    at the end: a reader takes the copy as complete only when `last` is there."""
    target.mkdir(parents=True, exist_ok=True)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder) != Path(last)]
    for path in [*files, folder / last]:
        destination = target / path.relative_to(folder)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as source:
            write_once(destination, source)


def copy_back(published: Path, local: Path) -> bool:
    """Copy a published folder to the local disk whole (into a staging folder, then renamed), unless `local`
    exists; whether it copied."""
    if local.exists():
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = local.with_name(f".restoring-{local.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(published, staging)
    try:
        staging.rename(local)
    except OSError:  # another process restored it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True


def write_once(path: Path, data: bytes | Any) -> None:
    """Create `path` (failing if it exists), write `data` (bytes or a binary file object) in one pass, close.

    A file that fails half-way is removed, so that no reader takes a partial file for a published one.
    """
    try:
        with open(path, "xb") as target:
            if isinstance(data, bytes):
                target.write(data)
            else:
                shutil.copyfileobj(data, target, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
    except FileExistsError:
        raise
    except OSError:
        path.unlink(missing_ok=True)
        raise


def _complete(job: Any, job_id: str) -> bool:
    """Whether a published job row has what the job store needs to list it again."""
    required = ("submitter", "state", "reason", "run_dir", "created_at", "updated_at")
    return (
        isinstance(job, dict)
        and job.get("id") == job_id
        and isinstance(job.get("config"), dict)
        and all(job.get(name) is not None for name in required)
    )


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=str) + "\n").encode()
