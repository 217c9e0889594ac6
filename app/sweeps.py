"""Sweeps queued from the page: a grid in the sweep file format of `python -m training sweep`, expanded by
`training.sweeps.grid`, and queued on the app's job store as one job per run.

Each run of a sweep is a job of its own and counts as one against the per-person cap
(VLPEFT_MAX_QUEUED_PER_USER): a sweep that does not fit is refused whole, with how many would. The queue's one
worker runs them in order with everybody's other jobs; there is no second executor.

The sweep file the page built is written to `<data home>/sweeps/<sweep id>/sweep.yaml`, beside `jobs.json`
(which job runs which grid point); its `out` is that folder, so `python -m training sweep --config <it>` reruns
the grid from the command line and writes its runs and table there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from app.services import Services
from training.errors import UserError
from training.jobs.durable import copy_back, publish_folder
from training.jobs.store import FINAL_STATES, PersonalLimitReached, new_job_id
from training.run.config import RunConfig
from training.sweeps.grid import GridPoint, Skipped, SweepSpec, budget_text, parse_spec

SWEEP_FILE = "sweep.yaml"
MEMBERS = "jobs.json"
MAX_RUNS = 200  # a grid typed by hand past this is a slip (a budget list pasted twice, say), not a plan


@dataclass
class SweepDraft:
    """A grid from the page, expanded and checked, before it is queued."""

    data: dict  # the sweep file's contents
    spec: SweepSpec
    points: list[GridPoint]  # the feasible points, one run each
    skipped: list[Skipped]  # budgets the method cannot reach
    configs: list[RunConfig]
    expected_s: float | None  # the whole sweep, start to last score; None when a run has no estimate
    unknown: int = 0  # runs without an estimate (nothing like them has finished here yet)
    notes: list[str] = field(default_factory=list)


@dataclass
class QueuedSweep:
    """A sweep the page queued: its file and which job runs which point."""

    id: str
    folder: Path
    data: dict
    jobs: dict[str, str]  # grid point name -> job id
    submitter: str
    created_at: float

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.id)

    @property
    def sweep_file(self) -> Path:
        return self.folder / SWEEP_FILE

    @property
    def command(self) -> str:
        return f"python -m training sweep --config {self.sweep_file}"

    def point_configs(self) -> dict[str, dict]:
        """Grid point name -> its run's settings, from the sweep file (what names a run whose job is gone)."""
        spec = parse_spec(self.data, self.name)
        return {point.name: spec.run_config(point).to_dict() for point in spec.points()}


def sweep_data(
    name: str,
    task: str,
    methods: list[str],
    budgets: list[str],
    fractions: list[float],
    seeds: list[int],
    settings: dict,
    base_model: str | None,
    dataset: str | None,
) -> dict:
    """The sweep file (the `python -m training sweep` format) for a cross product on one task; `queue` adds where
    a rerun writes (`out`, `results`)."""
    return {
        "name": name,
        "base_model": base_model,
        "datasets": {task: dataset},
        "tasks": {task: {}},
        "methods": list(methods),
        "seeds": list(seeds),
        "settings": {k: v for k, v in settings.items() if v is not None},
        "budgets": list(budgets),
        "fractions": list(fractions),
    }


def draft(services: Services, data: dict) -> SweepDraft:
    """Expand and check a sweep: the points each method can train, the skipped ones and why, a RunConfig per
    run (with the demo's caps) and the expected time from the estimator the Train tab uses."""
    spec = parse_spec(data, data.get("name") or "sweep")
    points, skipped, configs = [], [], []
    grid = spec.points()
    if len(grid) > MAX_RUNS:
        raise UserError(
            f"That grid has {len(grid)} runs; the page queues at most {MAX_RUNS}. Drop a value or two, "
            "or run it with `python -m training sweep`."
        )
    for point in grid:
        config = spec.run_config(point)
        if point.budget is not None:
            plan = services.estimate(config.method, config.budget, config.towers, config.base_model).plan
            if not plan.feasible:
                span = f"{plan.min_params:,}-{plan.max_params:,}"
                why = f"{point.method} trains {span} parameters, not {budget_text(point.budget)}"
                skipped.append(Skipped(point, why))
                continue
        config, _, _, _ = services.prepare(config)
        points.append(point)
        configs.append(config)
    total, unknown = 0.0, 0
    for config in configs:
        expected = services.job_estimate_s(config)
        if expected is None:
            unknown += 1
        else:
            total += expected
    parallel = max(1, services.store.limits.max_concurrent)
    expected_s = total / parallel if configs and not unknown else None
    return SweepDraft(data, spec, points, skipped, configs, expected_s, unknown)


def queue(services: Services, plan: SweepDraft, submitter: str) -> QueuedSweep:
    """Queue every run of the sweep (all or none) and write its file beside them."""
    if not plan.configs:
        raise UserError("This sweep has no run to queue: every budget is out of its method's range.")
    sweep_id = new_job_id()
    folder = sweeps_dir(services) / sweep_id
    data = {
        "name": plan.data["name"],
        "out": str(folder),
        "results": str(folder / "results"),
        **{k: v for k, v in plan.data.items() if k != "name"},
    }
    try:
        job_ids = services.store.submit_many(plan.configs, submitter)
    except PersonalLimitReached as exc:
        raise UserError("You " + exc.sentence("already have")) from None
    folder.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Built in the VL-PEFT Lab page ({time.strftime('%Y-%m-%d %H:%M')}); the app ran it as jobs "
        f"{job_ids[0]} ... {job_ids[-1]}.\n# Rerun it from the command line: "
        f"python -m training sweep --config {folder / SWEEP_FILE}\n"
    )
    (folder / SWEEP_FILE).write_text(header + yaml.safe_dump(data, sort_keys=False))
    jobs = {point.name: job_id for point, job_id in zip(plan.points, job_ids, strict=True)}
    record = {"submitter": submitter, "created_at": time.time(), "jobs": jobs}
    (folder / MEMBERS).write_text(json.dumps(record, indent=1))
    _publish(services, folder)
    return QueuedSweep(sweep_id, folder, data, jobs, submitter, record["created_at"])


def sweeps_dir(services: Services) -> Path:
    return services.settings.data_home / "sweeps"


def _durable_sweeps(services: Services) -> Path | None:
    return Path(services.settings.durable) / "sweeps" if services.settings.durable else None


def _publish(services: Services, folder: Path) -> None:
    """With a durable location (a Space's bucket), the sweep's folder (its two files) goes there too, each file
    written once, the list of its jobs last; its runs are jobs and are published as they end."""
    root = _durable_sweeps(services)
    if root is None:
        return
    publish_folder(folder, root / folder.name, last=MEMBERS)


def _restore(services: Services) -> None:
    """Copy back the published sweeps that the local disk lacks (after a restart on an empty disk), once per
    app: the Sweep tab lists the sweeps on every poll, and the bucket is not read each time."""
    root = _durable_sweeps(services)
    if root is None or getattr(services, "_sweeps_restored", False):
        return
    services._sweeps_restored = True
    if not root.is_dir():
        return
    for published in root.iterdir():
        if (published / MEMBERS).is_file():
            copy_back(published, sweeps_dir(services) / published.name)


def queued_sweeps(services: Services) -> list[QueuedSweep]:
    """Every sweep queued from the page, newest first (a folder without its two files is skipped)."""
    _restore(services)
    found = []
    root = sweeps_dir(services)
    for folder in sorted(root.iterdir(), reverse=True) if root.is_dir() else []:
        try:
            data = yaml.safe_load((folder / SWEEP_FILE).read_text())
            record = json.loads((folder / MEMBERS).read_text())
        except (OSError, ValueError, yaml.YAMLError):
            continue
        found.append(
            QueuedSweep(
                folder.name, folder, data, record["jobs"], record.get("submitter", ""), record.get("created_at", 0.0)
            )
        )
    return found


def sweep_of_job(services: Services) -> dict[str, str]:
    """job id -> the name of the page sweep it belongs to."""
    return {job_id: sweep.name for sweep in queued_sweeps(services) for job_id in sweep.jobs.values()}


def counts(services: Services, sweep: QueuedSweep) -> dict[str, int]:
    """How many of the sweep's runs are in each state ('deleted' for a run removed since, or queued on a local disk
    that a restart emptied)."""
    states = {job.id: job.state for job in services.store.list_jobs()}
    tally: dict[str, int] = {}
    for job_id in sweep.jobs.values():
        state = states.get(job_id, "deleted")
        tally[state] = tally.get(state, 0) + 1
    return tally


def is_done(tally: dict[str, int]) -> bool:
    return all(state in (*FINAL_STATES, "deleted") for state in tally)
