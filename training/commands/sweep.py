"""`python -m training sweep` and `python -m training report`: run a grid from a YAML file, judge its table."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from training.errors import UserError
from training.launch.executor import RunExecutor, sigterm_stops_runs
from training.launch.forked import ForkedExecutor
from training.launch.ray_tasks import RayExecutor
from training.launch.resident import ResidentExecutor
from training.run.rates import use_sweep_table
from training.study.tuning import lr_table, tuning_gaps
from training.sweeps.grid import load_spec
from training.sweeps.runner import SweepLock, SweepSession, describe, plan_sweep


def register(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", help="run a grid of runs from a YAML file (resumable)")
    sweep.add_argument("--config", required=True, help="sweep file, e.g. sweeps/smoke.yaml or sweeps/paper.yaml")
    sweep.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: a process pool on this machine; ray: one Ray task per run",
    )
    sweep.add_argument("--jobs", type=int, default=1, help="local runs at a time (each gets cores // jobs threads)")
    sweep.add_argument(
        "--fresh-process",
        action="store_true",
        help="local: start each run in a process of its own, loading the model and data again (default: each slot "
        "a resident worker that keeps them loaded between its runs)",
    )
    sweep.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    sweep.add_argument("--num-cpus", type=float, default=None, help="CPUs each Ray task asks for (default: the file's)")
    sweep.add_argument("--num-gpus", type=float, default=None, help="GPUs each Ray task asks for (default: the file's)")
    sweep.add_argument("--out", default=None, help="folder for the run directories (default: the file's `out`)")
    sweep.add_argument("--results", default=None, help="folder for runs.csv and sweep.json (default: the file's)")
    sweep.add_argument("--only", default=None, help="run only the points whose name matches this regular expression")
    sweep.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no new run after this many minutes (run again later to go on)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the grid, the skipped points and an estimate")
    sweep.set_defaults(func=cmd_sweep)

    report = subparsers.add_parser("report", help="judge the paper's findings on a results table: report.md + figures")
    report.add_argument("--results", default="results/runs.csv", help="the sweep's table")
    report.add_argument("--out", default=None, help="report file (default: report.md beside the table)")
    report.add_argument("--no-figures", dest="figures", action="store_false", help="write the text only")
    report.add_argument(
        "--readme", default=None, help="also copy the verdict table into this file's <!-- report:verdicts --> block"
    )
    report.set_defaults(func=cmd_report)


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = load_spec(args.config)
    spec.out = Path(args.out or spec.out).resolve()
    spec.results = Path(args.results or spec.results).resolve()
    use_sweep_table(spec.results)
    if args.executor == "ray":
        if args.fresh_process:
            raise UserError("--fresh-process is for --executor local: a Ray task is a fresh process already.")
        executor: RunExecutor = RayExecutor(
            args.address,
            args.num_cpus if args.num_cpus is not None else spec.resources["num_cpus"],
            args.num_gpus if args.num_gpus is not None else spec.resources["num_gpus"],
        )
        parallel = max(1, args.jobs)
    else:
        if args.address:
            raise UserError("--address is for --executor ray.")
        executor = local_executor(args.jobs, args.fresh_process)
        parallel = executor.slots
    plan = plan_sweep(spec, args.only)
    session = SweepSession(
        plan,
        executor,
        sweep_command(args),
        max_minutes=args.max_minutes,
        parallel=parallel,
        echo=lambda line: print(line, flush=True),
    )
    print("\n".join(describe(plan, session.estimator, parallel)), flush=True)
    missing = check_learning_rates(spec, plan, args.config)
    if args.dry_run:
        return 0
    if missing:
        raise UserError(missing)
    with SweepLock(spec.out), executor, sigterm_stops_runs():
        try:
            meta = session.run()
        except KeyboardInterrupt:
            meta = session.write_outputs()
            print(
                f"interrupted: {meta['done']} of {meta['runs_planned']} runs finished; run the same command to go "
                "on where it stopped.",
                file=sys.stderr,
            )
            return 130
    print(
        f"{meta['done']} of {meta['runs_planned']} runs finished, {meta['failed']} failed, "
        f"{meta['remaining']} to go; table {spec.results / 'runs.csv'}"
    )
    for failure in meta["failures"]:
        print(f"failed: {failure['run']} (exit {failure['returncode']}): {failure['error'][-300:]}", file=sys.stderr)
    return 1 if meta["failed"] else 0


def local_executor(jobs: int, fresh_process: bool = False) -> RunExecutor:
    """`jobs` runs at a time on this machine, each with cores // jobs threads: each slot a resident worker, or with
    `fresh_process` each run a process of its own (forked from the preloaded fork server)."""
    if jobs < 1:
        raise UserError("--jobs must be at least 1.")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return ForkedExecutor(jobs, threads) if fresh_process else ResidentExecutor(jobs, threads)


def check_learning_rates(spec, plan, config_path: str) -> str | None:
    """Print which of the grid's trained methods results/lr.csv has no learning rate for, or no finished one
    (a seed to go, or a best not bracketed); with the file's `require_tuned_lr`, return the refusal to run
    when a point this invocation would run is among them (so `--only` can start the tuned methods' points)."""
    configs = {point.name: spec.run_config(point) for point in plan.points}
    missing, unfinished = tuning_gaps(list(configs.values()))
    if unfinished:
        why = "a seed to go, or the best not bracketed"
        print(f"  tuning not complete in {lr_table().name} ({why}): {', '.join(unfinished)}")
    if missing:
        print(f"  no tuned learning rate in {lr_table().name} for: {', '.join(missing)}")
    if not spec.require_tuned_lr or not (missing or unfinished):
        return None
    gaps = [label for found in tuning_gaps([configs[point.name] for point in plan.todo]) for label in found]
    if not gaps:
        return None
    return (
        f"This sweep needs a learning rate found on validation for every method it trains, and {lr_table().name} "
        f"lacks a finished one for {len(gaps)} of them ({', '.join(gaps[:4])}{', ...' if len(gaps) > 4 else ''}). "
        f"Run `python -m training tune --config {config_path}` first (it resumes where it stopped; a best still at "
        "the edge after every widening needs a wider grid), then this sweep; `--only` runs the points of the "
        "methods that are tuned already."
    )


def sweep_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this sweep (recorded in sweep.json)."""
    parts = ["python -m training sweep --config", shlex.quote(args.config)]
    defaults = {"executor": "local", "jobs": 1}
    for name in ("executor", "jobs", "address", "num_cpus", "num_gpus", "out", "results", "only", "max_minutes"):
        value = getattr(args, name)
        if value is not None and value != defaults.get(name):
            text = f"{value:g}" if isinstance(value, float) else str(value)
            parts += [f"--{name.replace('_', '-')}", shlex.quote(text)]
    if args.fresh_process:
        parts.append("--fresh-process")
    return " ".join(parts)


def cmd_report(args: argparse.Namespace) -> int:
    from training.study.report import build_report  # pandas and plotly: --help must not load them

    out = build_report(args.results, args.out, figures=args.figures, readme=args.readme)
    print(f"report written to {out}")
    return 0
