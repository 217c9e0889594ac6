"""Jobs on a Ray cluster: with `VLPEFT_RAY_ADDRESS` set, the worker runs each job as a Ray task.

The task runs the process a local job runs, `python -m training train ... --out RUN_DIR` (launched as the
Ray executor of the sweeps launches runs: training/launch/ray_tasks.py), on a node that has the job's request:
`VLPEFT_RAY_NUM_CPUS` CPUs (1) and `VLPEFT_RAY_NUM_GPUS` GPUs (0; a job asking for `--device cuda` gets at
least one). Every node needs the project at the same path, as for sweeps; base models and datasets are
read on the node (a Hub id, or a path that exists there).

Run directory. When the node sees the data home (the same machine, or shared storage mounted at the same
path: the task finds the token the worker wrote into the run directory), the trainer writes there directly.
Otherwise it writes into a scratch folder on the node and the files come back to the data home: while the
job runs, every second, the new lines of metrics.jsonl and log.txt and the latest progress.json go through
a small actor (the mailbox) that the worker reads at each pass; at the end the task returns the other files
(config.json, weights.safetensors, eval.json, predictions.jsonl) as bytes, and the worker writes each into
the run directory. Only plain file names are written; the scratch folder is removed.

Cancel and time limit: the worker asks the task to stop through the mailbox (and the STOP file, which a
node on shared storage reads directly); the task writes STOP where the trainer reads it and sends it
SIGTERM, so the trainer stops after its step and keeps its weights, as locally. A task still running after
the grace period is cancelled with `ray.cancel(force=True)`; the trainer dies with it (parent-death signal).

Failures: the trainer's exit code and log come back, so a job fails with the same reason, hint and log tail
as a local one; a task Ray itself lost (a dead node, a worker killed for memory) fails with Ray's reason.

Ray tasks end with the process that submitted them: when this worker stops (the app closes), its Ray jobs are
stopped first and recorded as cancelled by the worker's shutdown, with the weights trained so far.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from training.errors import UserError
from training.jobs import outcome
from training.jobs.limits import env_number
from training.jobs.store import Job, Outcome
from training.launch.executor import RunHandle, RunSpec, stop_all
from training.launch.process import ProcessExecutor
from training.launch.ray_tasks import connect_ray, ray_task_options
from training.run import runs

ADDRESS_ENV = "VLPEFT_RAY_ADDRESS"
TOKEN = ".ray-token"  # in the run directory: a node that reads the same token shares the data home
STREAMS = (runs.METRICS, runs.LOG)  # files that only grow: shipped as their new bytes
SHIP_EVERY_S = 1.0
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NODE_HINT = (
    "Every node of the Ray cluster needs this project (and its Python packages) at the same path as "
    "here, and the base model and dataset by Hub id or at a path that exists on the node."
)


def _float_env(name: str, default: float) -> float:
    return env_number(name, default, f"give the CPUs or GPUs a job asks Ray for, e.g. {default:g}")


# --- on the node ---------------------------------------------------------------------------------


class Shipper:
    """What of a run directory has not been sent yet: the new bytes of the streams, and changed files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offsets = {name: 0 for name in STREAMS}
        self.sent_progress: bytes | None = None

    def pieces(self, final: bool = False) -> dict:
        """{"append": {name: new bytes}, "whole": {name: bytes}}; at the end, every file not sent whole yet."""
        append = {}
        for name, offset in self.offsets.items():
            try:
                with open(self.folder / name, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            if not final and b"\n" in data:
                data = data[: data.rindex(b"\n") + 1]  # whole lines only: the rest may be half-written
            elif not final:
                data = b""
            if data:
                append[name] = data
                self.offsets[name] = offset + len(data)
        whole = {}
        if final:
            for path in self.folder.iterdir():
                if path.is_file() and path.name not in STREAMS and path.name != runs.STOP:
                    whole[path.name] = path.read_bytes()
        else:
            progress = _read_bytes(self.folder / runs.PROGRESS)
            if progress is not None and progress != self.sent_progress:
                whole[runs.PROGRESS] = self.sent_progress = progress
        return {"append": append, "whole": whole}


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def run_job_task(job_id: str, train_args: list[str], run_dir: str, token: str | None, mailbox, threads: int) -> dict:
    """The body of a job's Ray task: the trainer process, its files shipped back unless the node shares them."""
    import ray  # optional and heavy: requirements-ray.txt, loaded only with VLPEFT_RAY_ADDRESS

    target = Path(run_dir)
    shared = token is not None and _read_bytes(target / TOKEN) == token.encode()
    folder = target if shared else Path(tempfile.mkdtemp(prefix=f"vlpeft-{job_id}-"))
    executor = ProcessExecutor(threads=threads)  # the process a local run is, here on the node
    run = executor.launch(RunSpec(job_id, str(folder), train_args, cwd=str(folder)))
    shipper = None if shared else Shipper(folder)
    stopping = False
    try:
        while not executor.wait([run], SHIP_EVERY_S):
            if not stopping and ray.get(mailbox.stop_requested.remote(job_id)):
                stopping = True
                (folder / runs.STOP).touch()
                executor.stop(run)
            if shipper is not None:
                ray.get(mailbox.push.remote(job_id, shipper.pieces()))  # waited for: in order before the return
    except BaseException:  # the task is cancelled: stop the trainer rather than leave it running
        stop_all(executor, [run])
        raise
    result = {"returncode": run.returncode, "shared": shared}
    if shipper is not None:
        result["pieces"] = shipper.pieces(final=True)
        shutil.rmtree(folder, ignore_errors=True)
    return result


class Mailbox:
    """A Ray actor between the worker and its job tasks: progress pieces one way, stop requests the other."""

    def __init__(self) -> None:
        self.pending: dict[str, dict] = {}
        self.stops: set[str] = set()

    def push(self, job_id: str, pieces: dict) -> None:
        merged = self.pending.setdefault(job_id, {"append": {}, "whole": {}})
        for name, data in pieces["append"].items():
            merged["append"][name] = merged["append"].get(name, b"") + data
        merged["whole"].update(pieces["whole"])

    def take_all(self) -> dict[str, dict]:
        pending, self.pending = self.pending, {}
        return pending

    def request_stop(self, job_id: str) -> None:
        self.stops.add(job_id)

    def stop_requested(self, job_id: str) -> bool:
        return job_id in self.stops

    def forget(self, job_id: str) -> None:
        self.stops.discard(job_id)
        self.pending.pop(job_id, None)


def write_pieces(run_dir: Path, pieces: dict) -> None:
    """Write shipped pieces into the run directory: streams appended, other files replaced whole."""
    for kind in ("append", "whole"):
        for name, data in pieces.get(kind, {}).items():
            if not _PLAIN_NAME.fullmatch(name) or name in (TOKEN, runs.STOP):
                continue  # only plain file names, never a path out of the run directory
            path = run_dir / name
            if kind == "append":
                with open(path, "ab") as handle:
                    handle.write(data)
            else:
                fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{name}.", suffix=".tmp")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)


# --- on the worker -------------------------------------------------------------------------------


@dataclass
class RayJobHandle(RunHandle):
    ref: object = None  # the task's ObjectRef
    token: str | None = None  # written into the run directory: a node that reads it shares the data home
    killed: bool = False  # cancelled with force by this worker
    failure: Exception | None = None  # why Ray lost the task, where the trainer's exit code cannot say

    @property
    def exit_known(self) -> bool:
        return True


class RayJobRunner:
    """The job queue's executor on a Ray cluster (training/launch/executor.py's interface): starts jobs as Ray
    tasks, writes their shipped progress into place at every poll, stops them through the mailbox, and cancels
    them."""

    slots = 1  # unused: the job queue's limits decide how many jobs run at once
    threads = None  # a job's threads follow its CPU request

    def __init__(
        self, address: str | None, num_cpus: float = 1, num_gpus: float = 0, ship_always: bool = False
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.ship_always = ship_always  # send the files back even when the node shares the data home (tests)
        self.jobs: dict[str, RayJobHandle] = {}
        self._mailbox = None

    @classmethod
    def from_env(cls) -> RayJobRunner | None:
        """A runner for `VLPEFT_RAY_ADDRESS` (`auto`, `ray://host:10001`, `host:6379`), or None when unset."""
        address = os.environ.get(ADDRESS_ENV, "").strip()
        if not address:
            return None
        return cls(address, _float_env("VLPEFT_RAY_NUM_CPUS", 1), _float_env("VLPEFT_RAY_NUM_GPUS", 0))

    def where(self) -> str:
        return f"Ray cluster {self.address} ({self.num_cpus:g} CPU, {self.num_gpus:g} GPU per job)"

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def _connect(self):
        try:
            import ray  # optional and heavy: requirements-ray.txt, loaded only with VLPEFT_RAY_ADDRESS
        except ImportError:
            raise UserError(
                f"{ADDRESS_ENV} is set but Ray is not installed: pip install -r requirements-ray.txt, "
                f"or unset {ADDRESS_ENV} to run jobs on this machine."
            ) from None
        try:
            connect_ray(self.address)
        except Exception as exc:  # ray raises ConnectionError, RuntimeError or ValueError for a bad address
            raise UserError(
                f"The Ray cluster at {self.address} cannot be reached ({str(exc).splitlines()[0][:200]}): "
                f"check {ADDRESS_ENV} and that the cluster is up."
            ) from None
        if self._mailbox is None:
            # Restarted by Ray if it dies (its node scaled down, killed for memory), with the calls to it retried:
            # a lost mailbox would otherwise stop the whole queue. A restart loses what it held: the last seconds
            # of a running job's log and metrics lines, and stop requests not yet read (the next cancel asks again).
            self._mailbox = (
                ray.remote(Mailbox).options(num_cpus=0, max_restarts=-1, max_task_retries=-1, **_code_path()).remote()
            )
        return ray

    def launch(self, spec: RunSpec, needs_gpu: bool = False) -> RayJobHandle:
        """Submit the job's task (its name is the job id); raises UserError when the cluster cannot be reached."""
        ray = self._connect()
        token = None
        if not self.ship_always:
            token = secrets.token_hex(16)
            (Path(spec.run_dir) / TOKEN).write_text(token)
        gpus = max(self.num_gpus, 1) if needs_gpu else self.num_gpus
        task = ray.remote(run_job_task).options(**ray_task_options(self.num_cpus, gpus))
        threads = max(1, int(self.num_cpus))
        ref = task.remote(spec.name, spec.train_args, spec.run_dir, token, self._mailbox, threads)
        handle = RayJobHandle(spec, ref=ref, token=token)
        self.jobs[spec.name] = handle
        return handle

    def poll(self, handle: RayJobHandle) -> int | None:
        """Write what the running jobs shipped into place; the job's exit code once its task has ended."""
        if handle.returncode is not None:
            return handle.returncode
        import ray  # optional and heavy: requirements-ray.txt, loaded only with VLPEFT_RAY_ADDRESS

        ready, _ = ray.wait([handle.ref], timeout=0)
        # Taken after the wait: a finished task's pieces all reached the mailbox before it returned.
        self._write_shipped()
        if ready:
            self._finish(handle)
        return handle.returncode

    def wait(self, handles: list[RayJobHandle], timeout: float | None = None) -> list[RayJobHandle]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ended = [h for h in handles if self.poll(h) is not None]
            if ended or (deadline is not None and time.monotonic() >= deadline):
                return ended
            time.sleep(SHIP_EVERY_S / 4)

    def _write_shipped(self) -> None:
        import ray  # optional and heavy: requirements-ray.txt, loaded only with VLPEFT_RAY_ADDRESS

        for job_id, pieces in ray.get(self._mailbox.take_all.remote()).items():
            if job_id in self.jobs:
                write_pieces(Path(self.jobs[job_id].spec.run_dir), pieces)

    def _finish(self, handle: RayJobHandle) -> None:
        import ray  # optional and heavy: requirements-ray.txt, loaded only with VLPEFT_RAY_ADDRESS

        run_dir = Path(handle.spec.run_dir)
        try:
            result = ray.get(handle.ref)
        except ray.exceptions.RayError as exc:
            if handle.killed or isinstance(exc, ray.exceptions.TaskCancelledError):  # cancelled by us, or by hand
                handle.returncode = -signal.SIGKILL
            else:
                handle.returncode, handle.failure = -1, exc
        else:
            write_pieces(run_dir, result.get("pieces", {}))
            handle.returncode = result["returncode"]
        (run_dir / TOKEN).unlink(missing_ok=True)
        self._mailbox.forget.remote(handle.spec.name)
        del self.jobs[handle.spec.name]

    def stop(self, handle: RayJobHandle) -> None:
        """Ask the task to stop its trainer after the current step (through the mailbox)."""
        import ray  # optional and heavy: requirements-ray.txt, loaded only with VLPEFT_RAY_ADDRESS

        if self.poll(handle) is None:
            ray.get(self._mailbox.request_stop.remote(handle.spec.name))

    def kill(self, handle: RayJobHandle) -> None:
        import ray  # optional and heavy: requirements-ray.txt, loaded only with VLPEFT_RAY_ADDRESS

        if self.poll(handle) is None:
            ray.cancel(handle.ref, force=True)
            handle.killed = True

    def close(self) -> None:
        """Nothing to end: the connection to the cluster is the process's (tasks end with it)."""


def _code_path() -> dict:
    """The runtime environment every node's worker needs to import this package (as for the sweeps)."""
    return {"runtime_env": ray_task_options(0, 0)["runtime_env"]}


def failure_outcome(job: Job, exc: Exception) -> Outcome:
    """How a job ended whose task Ray lost (a dead node, a worker killed for memory, a node without the code)."""
    import ray  # optional and heavy: requirements-ray.txt, loaded only with VLPEFT_RAY_ADDRESS

    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    tail = "\n".join(runs.tail(Path(job.run_dir) / runs.LOG, outcome.LOG_TAIL_LINES))
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        hint = outcome.OOM_HINT
    elif "ModuleNotFoundError" in str(exc) or isinstance(exc, ray.exceptions.RuntimeEnvSetupError):
        hint = NODE_HINT
    else:
        hint = "The Ray cluster lost the task (a node or worker died): see `ray status`, then submit the job again."
    return Outcome("failed", f"the Ray task failed: {first}", error=first, hint=hint, log_tail=tail)
