"""`python -m training bench --parts runs`: real grid points trained end to end, each in a fresh process as a
job or a sweep launches it (`python -m training train ... --out DIR`, one thread, as `--jobs 2` gives each run),
with each run's wall time split into its parts from the files the run wrote.

With `--against COMMIT`, the same points are also trained by that commit's code (a detached git worktree), the
two codes taking turns point by point, so the speed-up is a ratio measured in one sitting on one machine, and the
runs' choices (best step, validation and test scores) can be compared. With `resident`, this code trains every
point of the set one after another in one resident worker (training/launch/resident.py), as sweeps and tuning run
their runs, taking turns with `against`'s code in fresh interpreters (how a sweep ran its runs before the worker:
the whole speed-up of a grid) or, without `against`, with this code in fresh interpreters.

The parts of a run, from its own files (so the old code's runs are split the same way as the new code's):
- start: launching the interpreter and importing, up to the run directory's clock (eval.json's mtime less its
  `wall_s`);
- load: the run's clock up to its first training step (dataset, model, method, feature cache), less any
  validation scored before it (metrics.jsonl: step 1's `elapsed_s` less the time its samples/s spans);
- steps: the training loop (to its last step or validation record) less the validations in it;
- validation: the validation records' `seconds`;
- test: eval.json's `eval_s` (decoding and scoring the test split);
- writing: the rest (weights, predictions, eval.json, exit).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from training.errors import UserError
from training.launch.executor import RunSpec, run_one
from training.launch.process import ProcessExecutor
from training.launch.resident import ResidentExecutor
from training.paths import REPO_ROOT
from training.run import runs
from training.sweeps.grid import SweepSpec, load_spec

PAPER_SWEEP = REPO_ROOT / "sweeps" / "paper.yaml"
# Captioning with LoRA and prompt tuning on all the data, VQA with LoRA on a tenth and on all of it, full
# fine-tuning on a tenth: the paper grid's settings, learning rates from results/lr.csv, early stopping.
REPLAY_POINTS = (
    "caption__lora__b18k__f1__s0",
    "caption__prompt__b18k__f1__s0",
    "vqa__lora__b18k__f0.1__s0",
    "vqa__lora__b18k__f1__s0",
    "vqa__full__f0.1__s0",
)
PARTS = ("start", "load", "steps", "validation", "test", "writing")


@dataclass(frozen=True)
class Code:
    """One side of the comparison: a tree of this project's code and the commit it holds."""

    label: str  # new | old, or resident | fresh
    root: Path
    commit: str


def commit_of(root: Path, ref: str = "HEAD") -> str:
    out = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise UserError(f"--against {ref!r} is not a commit of this repository: give a commit id, tag or branch.")
    return out.stdout.strip()


def has_changes(root: Path) -> bool:
    out = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def add_worktree(commit: str, parent: Path) -> Path:
    """A detached worktree of `commit` in a new folder under `parent`."""
    path = Path(tempfile.mkdtemp(prefix=f"old-{commit[:10]}-", dir=parent))
    subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "--force", str(path), commit],
        check=True,
        capture_output=True,
    )
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def replay_points(spec: SweepSpec, names: tuple[str, ...]) -> list:
    """The grid points of `spec` named `names`, in that order."""
    by_name = {point.name: point for point in spec.points()}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise UserError(
            f"{unknown[0]} is not a point of the sweep {spec.name}: give names such as {', '.join(REPLAY_POINTS[:2])}."
        )
    return [by_name[name] for name in names]


def launch(code: Code, train_args: list[str], run_dir: Path, threads: int) -> tuple[int, float, float]:
    """Train one run in a fresh interpreter running `code` (its worktree first on the path and the folder it runs
    in); (exit code, launched at, ended at) in epoch seconds."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    launched = time.time()
    with ProcessExecutor(threads=threads, root=code.root) as executor:
        result = run_one(executor, RunSpec(run_dir.name, str(run_dir), train_args, cwd=str(code.root)))
    return result.returncode, launched, time.time()


def launch_resident(
    worker: ResidentExecutor, train_args: list[str], run_dir: Path, threads: int
) -> tuple[int, float, float]:
    """Train one run in the resident worker; (exit code, handed over at, ended at) in epoch seconds."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    launched = time.time()
    result = run_one(worker, RunSpec(run_dir.name, str(run_dir), train_args, threads))
    return result.returncode, launched, time.time()


def split_run(run_dir: Path, launched: float, ended: float) -> dict:
    """A finished run's wall time in parts (see the module's notes), its choices and its scores."""
    info = runs.read_json(run_dir / runs.CONFIG) or {}
    result = runs.read_json(run_dir / runs.EVAL)
    if result is None:
        raise RuntimeError(f"{run_dir} has no {runs.EVAL}: the run did not finish (see its log.txt)")
    steps = [r for r in runs.read_jsonl(run_dir / runs.METRICS) if r.get("samples_per_s")]
    validations = runs.read_jsonl(run_dir / runs.VALIDATION)
    metrics = result.get("metrics") or {}
    clock_end = result.get("wall_s", result.get("train_s"))
    run_zero = (run_dir / runs.EVAL).stat().st_mtime - clock_end
    total = ended - launched
    start = max(0.0, run_zero - launched)
    if steps:
        first = steps[0]
        seen = first["step"] * info.get("effective_batch_size", 1)
        loop_start = first["elapsed_s"] - seen / first["samples_per_s"]
        loop_end = max([steps[-1]["elapsed_s"], *(v["elapsed_s"] for v in validations)])
    else:
        loop_start = loop_end = clock_end - metrics.get("eval_s", 0.0)
    before = sum(v["seconds"] for v in validations if v["elapsed_s"] - v["seconds"] < loop_start)
    validation = sum(v["seconds"] for v in validations)
    parts = {
        "start": start,
        "load": loop_start - before,
        "steps": loop_end - loop_start - (validation - before),
        "validation": validation,
        "test": metrics.get("eval_s", 0.0),
    }
    parts["writing"] = total - sum(parts.values())
    summary = result.get("validation") or {}
    test_metric = "CIDEr-D" if result.get("task") == "caption" else "accuracy"
    steps_run = summary.get("steps_run", 0)
    return {
        "total_s": round(total, 2),
        **{f"{name}_s": round(seconds, 2) for name, seconds in parts.items()},
        "steps_run": steps_run,
        "step_s": round(parts["steps"] / steps_run, 4) if steps_run else None,
        "validations": len(validations),
        "best_step": summary.get("best_step"),
        "stop_reason": summary.get("stop_reason"),
        "val_metric": summary.get("metric"),
        "val_best": summary.get("best"),
        "val_curve": [v["value"] for v in validations],
        "test_metric": test_metric,
        "test_score": metrics.get(test_metric),
    }


def side_summary(rows: list[dict]) -> dict:
    """Runs per hour over the set and the seconds of each part, summed over its points."""
    finished = [row for row in rows if row["returncode"] == 0]
    total = sum(row["total_s"] for row in finished)
    return {
        "points": len(rows),
        "finished": len(finished),
        "total_s": round(total, 1),
        "runs_per_hour": round(3600 * len(finished) / total, 2) if total else None,
        **{f"{part}_s": round(sum(row[f"{part}_s"] for row in finished), 1) for part in PARTS},
    }


def measure_runs(
    names: tuple[str, ...] = REPLAY_POINTS,
    against: str | None = None,
    work_dir: str | Path | None = None,
    spec: SweepSpec | None = None,
    threads: int = 1,
    log=print,
    out: str | Path | None = None,
    resident: bool = False,
) -> dict:
    """Train `names` (points of `spec`, default the paper grid) with this tree's code, and with `against`'s code
    in turns (which side goes first alternates from point to point); with `resident`, this code runs the points
    one after another in one resident worker, as a sweep or tuning does, and the other side is `against`'s code in
    fresh interpreters (how a sweep ran before the worker: the whole speed-up of a grid) or, without `against`,
    this code in fresh interpreters. With `out`, the result so far is written there after every run (`complete` false
    until the last), so a bench stopped early keeps what it measured."""
    spec = spec or load_spec(PAPER_SWEEP)
    points = replay_points(spec, names)
    work = Path(work_dir or tempfile.mkdtemp(prefix="vlpeft-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    head = commit_of(REPO_ROOT)
    sides = [Code("resident" if resident else "new", REPO_ROOT, head)]
    if resident and not against:
        sides.append(Code("fresh", REPO_ROOT, head))
    worker = ResidentExecutor(1) if resident else None
    worktree = None
    if against:
        worktree = add_worktree(commit_of(REPO_ROOT, against), work)
        sides.append(Code("old", worktree, commit_of(REPO_ROOT, against)))
    result: dict = {
        "points": list(names),
        "threads": threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "sweep": spec.name,
        "code": {code.label: {"commit": code.commit, "uncommitted_changes": has_changes(code.root)} for code in sides},
        "load_average": {"before": round(os.getloadavg()[0], 2)},
        "complete": False,
        "runs": [],
    }
    rows = result["runs"]
    try:
        for index, point in enumerate(points):
            args = spec.run_config(point).to_cli_args()
            for code in sides if index % 2 == 0 else sides[::-1]:
                run_dir = work / code.label / point.name
                if code.label == "resident":
                    returncode, launched, ended = launch_resident(worker, args, run_dir, threads)
                else:
                    returncode, launched, ended = launch(code, args, run_dir, threads)
                row = {"point": point.name, "side": code.label, "returncode": returncode}
                if returncode == 0:
                    row.update(split_run(run_dir, launched, ended))
                else:
                    error = "\n".join(runs.tail(run_dir / runs.LOG, 5))
                    row.update({"total_s": round(ended - launched, 2), "error": error})
                rows.append(row)
                log(format_row(row))
                result["load_average"]["after"] = round(os.getloadavg()[0], 2)
                result["summary"] = {c.label: side_summary([r for r in rows if r["side"] == c.label]) for c in sides}
                if len(sides) == 2:
                    result["comparison"] = compare_sides(rows, result["summary"], sides[0].label, sides[1].label)
                result["complete"] = len(rows) == len(points) * len(sides)
                if out:
                    runs.write_json(out, result)
    finally:
        if worktree is not None:
            remove_worktree(worktree)
        if worker is not None:
            worker.close()
    return result


def compare_sides(rows: list[dict], summary: dict, candidate: str = "new", baseline: str = "old") -> dict:
    """The speed-up over the set and per point (`baseline`'s time over `candidate`'s), and whether each point made
    the same choices on both sides."""
    by_point: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_point.setdefault(row["point"], {})[row["side"]] = row
    points = []
    for name, pair in by_point.items():
        new, old = pair.get(candidate), pair.get(baseline)
        if not (new and old and new["returncode"] == 0 and old["returncode"] == 0):
            continue
        points.append(
            {
                "point": name,
                "speedup": round(old["total_s"] / new["total_s"], 2),
                "same_best_step": new["best_step"] == old["best_step"],
                "same_validation_curve": new["val_curve"] == old["val_curve"],
                "best_step": {candidate: new["best_step"], baseline: old["best_step"]},
                "val_best": {candidate: new["val_best"], baseline: old["val_best"]},
                "test_score": {candidate: new["test_score"], baseline: old["test_score"]},
            }
        )
    new_rate, old_rate = summary[candidate]["runs_per_hour"], summary.get(baseline, {}).get("runs_per_hour")
    return {
        "sides": [candidate, baseline],
        "runs_per_hour_ratio": round(new_rate / old_rate, 2) if new_rate and old_rate else None,
        "points": points,
    }


def format_row(row: dict) -> str:
    if row["returncode"] != 0:
        return f"{row['point']} ({row['side']}): failed with exit code {row['returncode']} after {row['total_s']:.0f} s"
    parts = ", ".join(f"{part} {row[f'{part}_s']:.1f}" for part in PARTS)
    # A zero-shot point has no validation
    validation = f", validation {row['val_metric']} {row['val_best']:.4g}" if row["val_best"] is not None else ""
    return (
        f"{row['point']} ({row['side']}): {row['total_s']:.1f} s ({parts}); {row['steps_run']} steps, best step "
        f"{row['best_step']}{validation}, test {row['test_metric']} {row['test_score']:.4g}"
    )


def print_runs(result: dict) -> None:
    for label, summary in result["summary"].items():
        parts = ", ".join(f"{part} {summary[f'{part}_s']:.0f}" for part in PARTS)
        print(
            f"{label} ({result['code'][label]['commit'][:10]}): {summary['finished']}/{summary['points']} runs in "
            f"{summary['total_s']:.0f} s, {summary['runs_per_hour']} runs/hour; seconds by part: {parts}"
        )
    comparison = result.get("comparison")
    if comparison:
        new, old = comparison.get("sides", ["new", "old"])
        print(f"runs per hour, {new} over {old}: {comparison['runs_per_hour_ratio']}x")
        for point in comparison["points"]:
            curve = "the same validation scores" if point["same_validation_curve"] else "other validation scores"
            print(
                f"  {point['point']}: {point['speedup']}x, best step {point['best_step'][new]} "
                f"({old} {point['best_step'][old]}), test {point['test_score'][new]:.4g} "
                f"({old} {point['test_score'][old]:.4g}), {curve}"
            )
