"""The executor loops (training/launch/executor.py) on a stand-in executor whose runs end when told: `run_all` keeps
`slots` runs in flight and takes the next spec only when one is free, and an interrupt stops what is in flight,
killing the runs that do not stop within the grace period. The real executors are exercised by test_resident.py,
test_sweep.py, test_jobs*.py and test_replay.py."""

from __future__ import annotations

from training.launch.executor import PollingExecutor, RunHandle, RunSpec, run_all, stop_all
from training.run import runs


class Scripted(PollingExecutor):
    """Runs that end when `end` is called, or on `stop` unless they are stubborn; records what happened."""

    def __init__(self, slots: int, stubborn: set[str] = frozenset()) -> None:
        self.slots = slots
        self.stubborn = stubborn
        self.log: list[str] = []
        self.handles: dict[str, RunHandle] = {}

    def describe(self) -> dict:
        return {"executor": "scripted"}

    def launch(self, spec: RunSpec) -> RunHandle:
        self.log.append(f"launch {spec.name}")
        self.handles[spec.name] = RunHandle(spec)
        if spec.name.startswith("quick"):
            self.handles[spec.name].returncode = runs.EXIT_FINISHED
        return self.handles[spec.name]

    def poll(self, handle: RunHandle) -> int | None:
        return handle.returncode

    def stop(self, handle: RunHandle) -> None:
        self.log.append(f"stop {handle.spec.name}")
        if handle.spec.name not in self.stubborn:
            handle.returncode = runs.EXIT_STOPPED

    def kill(self, handle: RunHandle) -> None:
        self.log.append(f"kill {handle.spec.name}")
        handle.returncode = -9


def specs(names: list[str], pulled: list[str], tmp_path):
    for name in names:
        pulled.append(name)
        yield RunSpec(name, str(tmp_path / name), [])


def test_run_all_keeps_slots_runs_in_flight_and_takes_a_spec_only_when_a_slot_is_free(tmp_path):
    executor, pulled = Scripted(slots=2), []
    results = run_all(executor, specs(["quick-a", "slow-b", "quick-c", "slow-d"], pulled, tmp_path))
    first = next(results)
    assert first.name == "quick-a" and first.finished
    assert pulled == ["quick-a", "slow-b"]  # two slots: nothing more is taken before a run ends
    assert next(results).name == "quick-c" and pulled == ["quick-a", "slow-b", "quick-c"]
    results.close()  # the caller stops (Ctrl-C, a failure): the run in flight is stopped, no other spec is taken
    assert pulled == ["quick-a", "slow-b", "quick-c"]
    assert executor.log == ["launch quick-a", "launch slow-b", "launch quick-c", "stop slow-b"]
    assert executor.handles["slow-b"].returncode == runs.EXIT_STOPPED


def test_a_run_that_does_not_stop_within_the_grace_period_is_killed(tmp_path):
    executor = Scripted(slots=2, stubborn={"stubborn"})
    handles = [executor.launch(RunSpec(name, str(tmp_path / name), [])) for name in ("polite", "stubborn")]
    stop_all(executor, handles, grace_s=0.2)
    assert executor.log[2:] == ["stop polite", "stop stubborn", "kill stubborn"]
    assert [h.returncode for h in handles] == [runs.EXIT_STOPPED, -9]
