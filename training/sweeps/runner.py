"""Run a sweep: plan the grid, skip what is finished, run the rest, keep the results table current.

Resumable by construction: a run is finished when its `eval.json` exists; any other run directory is
half-done work and is deleted and redone. The table and `sweep.json` are rewritten after every run, so a
sweep killed at any moment leaves a table of everything finished so far.

Resumable across machines too: the run folders (with their weights) stay where the sweep ran, but the results
folder (`runs.csv`, `item_scores.jsonl`, `sweep.json`) is what gets committed. A grid point whose folder is not
here but whose row is in the results table of the same grid, on the same base model and datasets (by their
sha), is finished: its row and per-item scores are carried over and it is not run again. So a grid that takes
longer than one session, or one machine, goes on from a fresh clone where the last one stopped.
"""

from __future__ import annotations

import csv
import fcntl
import os
import platform
import re
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from training.errors import UserError
from training.launch.executor import RunExecutor, RunResult, RunSpec, run_all
from training.paths import DEFAULT_DATASETS, DEFAULT_MODEL_DIR
from training.run import runs
from training.run.config import planned_steps
from training.sweeps.gpu_estimate import RunCost, gpu_hours_text, seconds
from training.sweeps.grid import GridPoint, Skipped, Solved, SweepSpec, budget_text, solve_grid
from training.sweeps.table import (
    ITEM_SCORES,
    MAIN_METRIC,
    META,
    TABLE,
    display_path,
    folder_sha,
    item_scores,
    run_row,
    write_item_scores,
    write_table,
)

FIXED_RUN_S = 30.0  # the part of a run that does not shrink with its data share (see Estimator.expected)
TIMINGS = "timings.json"  # in the sweep's out folder: seconds each finished run took, for the ETA
MAX_FAILURES_IN_A_ROW = 3


@dataclass
class SweepPlan:
    spec: SweepSpec
    points: list[GridPoint]  # every feasible point
    skipped: list[Skipped]  # points whose budget the method cannot reach
    todo: list[GridPoint]  # the points this session runs (not finished, and matching --only)
    shas: dict[str, str | None] = field(default_factory=dict)  # base model and each task's dataset
    carried: dict[str, Carried] = field(default_factory=dict)  # finished elsewhere: in the results, not in out
    solved: Solved | None = None  # the budgets solved on the base model's architecture

    @property
    def runs_dir(self) -> Path:
        return self.spec.out / "runs"

    def run_dir(self, point: GridPoint) -> Path:
        return self.runs_dir / point.name

    def ran_here(self, point: GridPoint) -> bool:
        return (self.run_dir(point) / runs.EVAL).is_file()

    def finished(self, point: GridPoint) -> bool:
        return self.ran_here(point) or point.name in self.carried


@dataclass(frozen=True)
class Carried:
    """A run of this grid finished on another machine or in another clone: its table row and item scores."""

    row: dict
    items: dict | None


def base_model_path(spec: SweepSpec) -> str:
    return spec.base_model or str(DEFAULT_MODEL_DIR)


def dataset_path(spec: SweepSpec, task: str) -> str:
    return spec.datasets.get(task) or str(DEFAULT_DATASETS[task])


def same_grid(meta: dict, spec: SweepSpec) -> bool:
    """Whether a sweep.json describes this sweep file's grid (same name and the keys that define its runs)."""
    return meta.get("name") == spec.name and grid_part(meta.get("spec") or {}) == grid_part(spec.source)


def carried_runs(spec: SweepSpec, points: list[GridPoint], shas: dict[str, str | None]) -> dict[str, Carried]:
    """The grid's runs that the results folder holds from earlier sessions, kept only when that folder's
    sweep.json is this grid and a row was made on the same base model and dataset files as now (a changed
    dataset or model makes every old row stale, and those points run again)."""
    if not same_grid(runs.read_json(spec.results / META) or {}, spec):
        return {}
    try:
        with open(spec.results / TABLE, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return {}
    items = {line.get("run"): line for line in runs.read_jsonl(spec.results / ITEM_SCORES)}
    by_name = {p.name: p for p in points}
    carried = {}
    for row in rows:
        point = by_name.get(row.get("run") or "")
        if point is None or row.get("base_model_sha") != (shas.get("base_model") or ""):
            continue
        if row.get("dataset_sha") != (shas.get(point.task) or ""):
            continue
        carried[point.name] = Carried(row, items.get(point.name))
    return carried


def plan_sweep(spec: SweepSpec, only: str | None = None) -> SweepPlan:
    solved = solve_grid(spec, spec.points())
    points, skipped = solved.kept, solved.skipped
    shas = {"base_model": folder_sha(base_model_path(spec))}
    shas.update({task: folder_sha(dataset_path(spec, task)) for task in spec.tasks})
    plan = SweepPlan(spec, points, skipped, [], shas, carried_runs(spec, points, shas), solved)
    try:
        pattern = re.compile(only or "")
    except re.error as exc:
        raise UserError(f"--only {only!r} is not a valid regular expression ({exc}).") from None
    plan.todo = [p for p in points if not plan.finished(p) and pattern.search(p.name)]
    return plan


@dataclass
class Estimator:
    """Expected seconds per run. A run is a fixed part (start, loading, scoring the test split) plus a part that
    grows with its share of a full-data run's steps: its data fraction, or the `min_steps` floor's share where that
    is more. The growing part per unit share is learnt from finished runs of the same task and method, else it comes
    from the sweep file's `estimate_s` for that method (a run on all the data), else from the task's finished trained
    runs, else from the file's estimate for the task, else from any finished run. Budgets of one method are averaged
    together."""

    defaults: dict = field(default_factory=dict)
    # Per (task, method): (share, seconds) of each finished run.
    seen: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)
    # Per task, the share of a full-data run's steps that the sweep's `min_steps` floor guarantees any run: a 1 %
    # share with a 300-step floor trains 300 steps, not 1 % of the full run's (see floor_shares).
    floors: dict[str, float] = field(default_factory=dict)

    def share(self, point: GridPoint) -> float:
        if point.method == "zero-shot" or point.fraction is None:
            return 1.0
        return max(point.fraction, self.floors.get(point.task, 0.0))

    def observe(self, point: GridPoint, seconds: float) -> None:
        self.seen.setdefault((point.task, point.method), []).append((self.share(point), seconds))

    @staticmethod
    def _split(point: GridPoint, runs: list[tuple[float, float]]) -> tuple[float, float] | None:
        """(fixed part, seconds per unit share) from runs of (share, seconds); zero-shot is all fixed part. The fixed
        part is FIXED_RUN_S, or the shortest run where that is shorter (a toy grid of 5-second runs)."""
        if not runs:
            return None
        if point.method == "zero-shot":
            return statistics.fmean(s for _, s in runs), 0.0
        fixed = min(FIXED_RUN_S, *(s for _, s in runs))
        return fixed, statistics.fmean((s - fixed) / share for share, s in runs)

    def _runs(self, keep) -> list[tuple[float, float]]:
        return [run for key, found in self.seen.items() if keep(key) for run in found]

    def expected(self, point: GridPoint) -> float | None:
        trained = point.method != "zero-shot"
        default = self.defaults.get(point.task)
        own_default = default.get(point.method) if isinstance(default, dict) else None
        task_default = default.get("*") if isinstance(default, dict) else default
        for finished in (
            lambda: self._runs(lambda k: k == (point.task, point.method)),
            lambda: [(1.0, float(own_default))] if own_default is not None else [],
            # zero-shot only scores: it says nothing of how long training takes
            lambda: self._runs(lambda k: k[0] == point.task and k[1] != "zero-shot") if trained else [],
            lambda: [(1.0, float(task_default))] if task_default is not None else [],
            lambda: self._runs(lambda k: k[1] != "zero-shot" if trained else True),
        ):
            split = self._split(point, finished())
            if split is not None:
                fixed, rate = split
                return fixed + rate * self.share(point)
        return None

    def total(self, points: list[GridPoint], parallel: int = 1) -> float | None:
        values = [self.expected(p) for p in points]
        if any(v is None for v in values):
            return None
        return sum(values) / max(1, parallel)


def floor_shares(spec: SweepSpec) -> dict[str, float]:
    """Per task, min_steps over the steps of a run on all the training data without the floor (1 at most);
    a task whose dataset cannot be read here (a Hub id offline) is left out and estimated without its floor."""
    # numpy, PIL and torch: `python -m training --help` imports this module
    from training.data.dataset import load_dataset
    from training.run.tasks import training_pairs

    shares = {}
    for task in spec.tasks:
        config = spec.run_config(GridPoint(task, "lora", None, 1.0, 0))
        if not config.min_steps or config.max_steps or not Path(dataset_path(spec, task)).exists():
            continue  # a Hub id is not fetched for an estimate
        try:
            pairs = len(training_pairs(task, load_dataset(dataset_path(spec, task), task).split("train")))
        except (UserError, OSError, ValueError):
            continue
        full = planned_steps(replace(config, min_steps=None), pairs)
        shares[task] = min(1.0, config.min_steps / max(1, full))
    return shares


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe(plan: SweepPlan, estimator: Estimator, parallel: int) -> list[str]:
    """What a sweep will do: the grid by task and method, the skipped points and why, and a time estimate."""
    spec = plan.spec
    finished = len(plan.points) - len([p for p in plan.points if not plan.finished(p)])
    lines = [
        f"sweep {spec.name}: {len(plan.points) + len(plan.skipped)} grid points, {len(plan.skipped)} skipped "
        f"(budget out of the method's range), {len(plan.points)} runs: {finished} finished, "
        f"{len(plan.todo)} to run now"
    ]
    lines.append(f"  runs in {spec.out / 'runs'}; table {spec.results / TABLE}")
    if plan.carried:
        lines.append(
            f"  {len(plan.carried)} of the finished runs are rows of {spec.results / TABLE} whose folders are not "
            "here (run on another machine or clone of the same grid and files): carried over, not rerun"
        )
    lines += [f"  {line}" for line in spec.axes()]
    header = f"  {'task':<8} {'method':<17} {'runs':>5} {'budgets':>7} {'fractions':>9} {'seeds':>5} {'est/run':>8}"
    lines.append(header)
    for task in spec.tasks:
        for method in spec.methods:
            group = [p for p in plan.points if p.task == task and p.method == method]
            if not group:
                continue
            times = [estimator.expected(p) for p in group]
            expected = None if None in times else sum(times) / len(times)  # a mean over its shares and budgets
            lines.append(
                f"  {task:<8} {method:<17} {len(group):>5} {len({p.budget for p in group}):>7} "
                f"{len({p.fraction for p in group}):>9} {len({p.seed for p in group}):>5} "
                f"{format_duration(expected):>8}"
            )
    reasons = Counter(s.reason for s in plan.skipped)
    for reason, count in sorted(reasons.items()):
        lines.append(f"  skipped {count} x {reason}")
    lines += model_lines(plan) + dataset_lines(spec)
    total = estimator.total(plan.todo, parallel)
    basis = (
        "measured runs, else the sweep file's estimate_s, scaled to each run's share of a full run"
        if estimator.seen
        else "the sweep file's estimate_s, scaled to each run's share of a full run"
    )
    lines.append(
        f"  estimated wall time of the {len(plan.todo)} runs to go: {format_duration(total)} "
        f"({parallel} at a time; per-run times from {basis})"
        if total is not None or not spec.gpu_estimate
        else "  no estimate_s and no finished run to time this machine by: see the GPU estimate below"
    )
    if spec.gpu_estimate is not None and plan.solved is not None:
        lines += gpu_lines(plan)
    return lines


def model_lines(plan: SweepPlan) -> list[str]:
    """The base model and every budget of the grid solved on it, method by method."""
    solved = plan.solved
    if solved is None:
        return []
    from training.methods.budget import count_base_params  # torch: `python -m training --help` imports this module

    total = count_base_params(solved.shape.model)
    lines = [
        f"  base model {solved.shape.source}: {total:,} parameters, built empty on the meta device from "
        f"{solved.shape.origin}; budgets solved on it:"
    ]
    for budget in sorted({b for _, b, _ in solved.plans}, key=lambda b: b.resolve(total)):
        found = [(m, t, p) for (m, b, t), p in solved.plans.items() if b == budget]
        parts = [
            f"{m}: {p.knob} {p.value} = {p.trainable_params:,}" if p.feasible else f"{m}: out of range"
            for m, _, p in sorted(found, key=lambda item: plan.spec.methods.index(item[0]))
        ]
        towers = ", ".join(sorted({t for _, t, _ in found}))
        lines.append(f"    {budget_text(budget)} = {budget.resolve(total):,} ({towers}): {'; '.join(parts)}")
    return lines


def dataset_lines(spec: SweepSpec) -> list[str]:
    lines = []
    for task in spec.tasks:
        source = dataset_path(spec, task)
        if Path(source).exists():
            where = "a local folder"
        elif source.startswith((".", "/", "~")):
            where = "a local folder, not here: make it before the runs start"
        else:
            where = "a Hub id: fetched when the runs start, not read here"
        lines.append(f"  {task} data: {display_path(source)} ({where})")
    return lines


def gpu_lines(plan: SweepPlan) -> list[str]:
    """Time per training step and of the runs to go per GPU kind, from FLOPs (training/sweeps/gpu_estimate.py)."""
    spec, assumed = plan.spec, plan.spec.gpu_estimate
    cost = RunCost(plan.solved.shape, assumed)
    kinds = list(assumed.peak_tflops)
    lines = [
        f"  GPU estimate from FLOPs (not measured): {', '.join(kinds)} at {assumed.utilisation:.0%} of their "
        f"datasheet peaks ({', '.join(f'{k} {v:g}' for k, v in assumed.peak_tflops.items())} TFLOPS)"
    ]
    for task in spec.tasks:
        batch = spec.run_config(GridPoint(task, "full", None, 1.0, spec.seeds[0])).batch_size
        lines.append(f"    {task}: ms per training step at batch {batch}, over the method's budgets at full data")
        for method in spec.methods:
            group = [
                p
                for p in plan.points
                if (p.task, p.method, p.fraction, p.seed) == (task, method, 1.0, spec.seeds[0])
                and method != "zero-shot"
            ]
            if not group:
                continue
            steps = sorted(cost(spec.run_config(p)).train_step for p in group)
            times = [
                "-".join(dict.fromkeys(f"{1000 * seconds(s, assumed, k):,.0f}" for s in (steps[0], steps[-1])))
                for k in kinds
            ]
            lines.append(f"      {method:<17} " + ", ".join(f"{k} {t}" for k, t in zip(kinds, times, strict=True)))
    todo = [cost(spec.run_config(point)) for point in plan.todo]
    lines.append(
        f"    the {len(todo)} runs to go at their epoch caps (early stopping ends most sooner; decoding is "
        f"latency-bound, so validation and test take longer than their FLOPs say), one GPU: "
        f"{gpu_hours_text(sum(r.total for r in todo), assumed)}"
    )
    return lines


def machine_info(threads_per_run: int | None) -> dict:
    import torch  # torch: `python -m training --help` imports this module

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads_per_run": threads_per_run,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class SweepLock:
    """One sweep at a time per out folder (a second one would redo the first one's half-done runs)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.handle = open(folder / ".lock", "w")  # held for the sweep's lifetime

    def __enter__(self) -> SweepLock:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise UserError(
                f"Another sweep is running in {self.handle.name.rsplit('/', 1)[0]}: wait for it, or stop it first."
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


class SweepSession:
    """One invocation of a sweep: runs the plan's points and keeps the table and sweep.json current."""

    def __init__(
        self,
        plan: SweepPlan,
        executor: RunExecutor,
        command: str,
        echo: Callable[[str], None] = print,
        max_minutes: float | None = None,
        parallel: int = 1,
    ) -> None:
        self.plan, self.spec, self.executor = plan, plan.spec, executor
        self.command, self.echo, self.max_minutes, self.parallel = command, echo, max_minutes, parallel
        self.started = time.time()
        self.estimator = Estimator(self.spec.estimate_s, floors=floor_shares(self.spec))
        self.timings = runs.read_json(self.spec.out / TIMINGS) or {}
        for point in plan.points:
            if point.name in self.timings and plan.ran_here(point):
                self.estimator.observe(point, self.timings[point.name])
            elif point.name in plan.carried and (seconds := _number(plan.carried[point.name].row.get("wall_s"))):
                self.estimator.observe(point, seconds)
        self.failed: dict[str, dict] = {}
        self.ran = 0
        # The progress counter counts reports, not folders on disk: when two runs end together, the second is
        # already on disk when the first one's line is printed, and a count of folders would show it twice.
        self.finished_count = sum(1 for p in plan.points if plan.finished(p))
        self.stopped_by_time = False
        self.shas = plan.shas
        self.previous = self._previous_meta()
        self.machine = machine_info(executor.describe().get("threads_per_run"))

    def _previous_meta(self) -> dict:
        """The earlier sessions' sweep.json, when it describes this grid: its sessions (and wall time) carry on.
        Another grid under the same name (say the paper's grid rerun under a new protocol) starts afresh, so its
        wall time is its own."""
        meta = runs.read_json(self.spec.results / META) or {}
        return meta if same_grid(meta, self.spec) else {}

    def jobs(self) -> Iterator[RunSpec]:
        """The jobs to run, handed out one at a time; stops handing out at the time limit."""
        for point in self.plan.todo:
            if self.max_minutes is not None and time.time() - self.started > 60 * self.max_minutes:
                self.stopped_by_time = True
                return
            run_dir = self.plan.run_dir(point)
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a half-done run: start it again from scratch
            yield RunSpec(point.name, str(run_dir), self.spec.run_config(point).to_cli_args(), cwd=os.getcwd())

    def run(self) -> dict:
        by_name = {p.name: p for p in self.plan.points}
        self.write_outputs()
        failures_in_a_row = 0
        for result in run_all(self.executor, self.jobs()):
            point = by_name[result.name]
            self.ran += 1
            if result.finished and self.plan.finished(point):
                self.finished_count += 1
                failures_in_a_row = 0
                self.failed.pop(point.name, None)
                self.timings[point.name] = result.wall_s
                runs.write_json(self.spec.out / TIMINGS, self.timings)
                self.estimator.observe(point, result.wall_s)
            else:
                failures_in_a_row += 1
                self.failed[point.name] = {"run": point.name, "returncode": result.returncode, "error": result.error}
            self.write_outputs()
            self.echo(self.progress_line(point, result))
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise UserError(
                    f"{MAX_FAILURES_IN_A_ROW} runs failed in a row; the last one said:\n{result.error}\n"
                    f"Fix the cause and run the sweep again: it goes on where it stopped."
                )
        meta = self.write_outputs()
        if self.stopped_by_time:
            self.echo(
                f"time limit of {self.max_minutes:g} min reached: {meta['remaining']} runs left; run the same "
                "command again to go on."
            )
        return meta

    def progress_line(self, point: GridPoint, result: RunResult) -> str:
        total, finished = len(self.plan.points), self.finished_count
        remaining = [p for p in self.plan.todo if not self.plan.finished(p) and p.name not in self.failed]
        eta = self.estimator.total(remaining, self.parallel)
        elapsed = format_duration(time.time() - self.started)
        if result.finished:
            evaluation = runs.read_json(self.plan.run_dir(point) / runs.EVAL) or {}
            metric = MAIN_METRIC[point.task]
            value = (evaluation.get("metrics") or {}).get(metric)
            outcome = f"{metric} {value:.4g}" if isinstance(value, int | float) else "done"
        else:
            last = result.error.strip().splitlines()[-1] if result.error.strip() else ""
            outcome = f"FAILED (exit {result.returncode}) {last[:120]}"
        return (
            f"[{finished:>{len(str(total))}}/{total}] {point.name}  {outcome}  {result.wall_s:.0f}s  "
            f"elapsed {elapsed}  ETA {format_duration(eta)}"
        )

    def write_outputs(self) -> dict:
        """Rewrite runs.csv from every finished run of the grid, and sweep.json beside it."""
        rows, lines = [], []
        for point in self.plan.points:
            if self.plan.ran_here(point):
                row, line = (
                    run_row(point, self.plan.run_dir(point), self.shas),
                    item_scores(point, self.plan.run_dir(point)),
                )
            elif point.name in self.plan.carried:
                row, line = self.plan.carried[point.name].row, self.plan.carried[point.name].items
            else:
                continue
            rows += [row] if row else []
            lines += [line] if line else []
        write_table(rows, self.spec.results / TABLE)
        write_item_scores(lines, self.spec.results / ITEM_SCORES)
        now = time.time()
        session = {
            "started_at": _iso(self.started),
            "wall_s": round(now - self.started, 1),
            "runs": self.ran,
            "command": self.command,
        }
        sessions = [*self.previous.get("sessions", []), session]
        remaining = sum(1 for p in self.plan.points if not self.plan.finished(p))
        meta = {
            "name": self.spec.name,
            "command": self.command,
            "machine": self.machine,
            **self.executor.describe(),
            "started_at": sessions[0]["started_at"],
            "updated_at": _iso(now),
            "finished_at": _iso(now) if remaining == 0 else None,
            "wall_s": round(sum(s["wall_s"] for s in sessions), 1),
            "sessions": sessions,
            "grid_size": len(self.plan.points) + len(self.plan.skipped),
            "runs_planned": len(self.plan.points),
            "skipped": len(self.plan.skipped),
            "done": len(rows),
            "failed": len(self.failed),
            "remaining": remaining,
            "failures": list(self.failed.values()),
            "skipped_points": [{"run": s.point.name, "reason": s.reason} for s in self.plan.skipped],
            "base_model": display_path(base_model_path(self.spec)),
            "base_model_sha": self.shas["base_model"],
            "datasets": {
                t: {"source": display_path(dataset_path(self.spec, t)), "sha": self.shas.get(t)}
                for t in self.spec.tasks
            },
            "out": display_path(str(self.spec.out)),
            "spec": self.spec.source,
        }
        runs.write_json(self.spec.results / META, meta)
        return meta


# Keys of a sweep file that do not change which runs the grid holds or how they train.
NOT_THE_GRID = {"estimate_s", "resources", "out", "results", "require_tuned_lr", "gpu_estimate"}


def grid_part(source: dict) -> dict:
    """A sweep file's keys that define its runs (tasks and their schedule, methods, seeds, settings, axes, model
    and data), for telling whether an earlier sweep.json belongs to the same grid."""
    return {key: value for key, value in source.items() if key not in NOT_THE_GRID}


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
