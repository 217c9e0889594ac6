"""`RayExecutor`: each run a Ray task asking for num_cpus/num_gpus, which runs it with a `ProcessExecutor` on its
node; a local Ray instance unless an address is given. On a cluster, every node needs the project at the same
path and the run directories on shared storage (the job queue's Ray runner, training/jobs/ray_runner.py, ships
them back instead)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from training.errors import UserError
from training.launch.executor import RunHandle, RunResult, RunSpec, run_one
from training.launch.process import ProcessExecutor
from training.paths import REPO_ROOT
from training.run.rates import LR_TABLE_ENV


def connect_ray(address: str | None) -> bool:
    """Join the Ray cluster at `address` (None: start a local instance) unless this process already has;
    True if this call connected (and so should disconnect when done)."""
    import ray  # optional and heavy: requirements-ray.txt, loaded only by the Ray executor

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def ray_task_options(num_cpus: float, num_gpus: float) -> dict:
    """Options of a run's Ray task: its resource request, no retry (a run is not idempotent), and the
    project root on the worker's path, since workers import this package to run the task. A learning-rate
    table of its own ($VLPEFT_LR_TABLE, e.g. a sweep on another base model) goes along by its absolute path,
    which holds on every node (each has the project at the same path)."""
    env = {"PYTHONPATH": str(REPO_ROOT)}
    if os.environ.get(LR_TABLE_ENV):
        env[LR_TABLE_ENV] = str(Path(os.environ[LR_TABLE_ENV]).resolve())
    return {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 0, "runtime_env": {"env_vars": env}}


def run_on_node(spec: RunSpec) -> RunResult:
    """The body of a run's Ray task: the run in a new process on the node; cancelled (`ray.cancel`), it stops the
    run after its step."""
    return run_one(ProcessExecutor(), spec)


@dataclass
class RayHandle(RunHandle):
    ref: object = None  # the task's ObjectRef


class RayExecutor:
    """Runs as Ray tasks, as many at a time as the cluster has CPUs (and GPUs) for."""

    threads = None  # a run's threads follow its CPU request

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0) -> None:
        try:
            # optional: requirements-ray.txt; this only checks that it is installed
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self._connected_here: bool | None = None  # None: not connected yet
        self._remote = None

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def _ray(self):
        import ray  # optional and heavy: requirements-ray.txt, loaded only by the Ray executor

        if self._connected_here is None:
            self._connected_here = connect_ray(self.address)
            options = ray_task_options(self.num_cpus, self.num_gpus)
            self._remote = ray.remote(run_on_node).options(**options)
        return ray

    @property
    def slots(self) -> int:
        resources = self._ray().cluster_resources()
        capacity = max(1, int(resources.get("CPU", 1) // max(self.num_cpus, 1e-9)))
        if self.num_gpus:
            capacity = min(capacity, max(1, int(resources.get("GPU", 0) // self.num_gpus)))
        return capacity

    def launch(self, spec: RunSpec) -> RayHandle:
        self._ray()
        threads = spec.threads if spec.threads is not None else max(1, int(self.num_cpus))
        return RayHandle(spec, ref=self._remote.remote(replace(spec, threads=threads)))

    def _finish(self, handle: RayHandle) -> None:
        ray = self._ray()
        try:
            ended = ray.get(handle.ref)
        except ray.exceptions.RayError as exc:
            handle.returncode, handle.error = -1, f"Ray task failed: {str(exc).splitlines()[0][:300]}"
        else:
            handle.returncode, handle.error = ended.returncode, ended.error

    def poll(self, handle: RayHandle) -> int | None:
        if handle.returncode is None and self._ray().wait([handle.ref], timeout=0)[0]:
            self._finish(handle)
        return handle.returncode

    def wait(self, handles: list[RayHandle], timeout: float | None = None) -> list[RayHandle]:
        ended = [h for h in handles if h.returncode is not None]
        if ended:
            return ended
        by_ref = {h.ref: h for h in handles}
        ready, _ = self._ray().wait(list(by_ref), num_returns=1, timeout=timeout)
        for ref in ready:
            self._finish(by_ref[ref])
        return [by_ref[ref] for ref in ready]

    def stop(self, handle: RayHandle) -> None:
        """Cancel the task gently: its `run_one` stops the run after its step."""
        if self.poll(handle) is None:
            self._ray().cancel(handle.ref)

    def kill(self, handle: RayHandle) -> None:
        if self.poll(handle) is None:
            self._ray().cancel(handle.ref, force=True)

    def close(self) -> None:
        """Disconnect, if this executor connected."""
        if self._connected_here:
            self._ray().shutdown()
        self._connected_here = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
