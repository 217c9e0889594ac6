"""The adapters the app ships: one per trained PEFT method and task at the grid's reference budget on all the
data (seed 0), trained under the grid's own protocol, kept as small safetensors files with a JSON each that says
what they are and where they came from, and a MANIFEST.json that lists them with their digests.

    python -m training ship-adapters --out assets/adapters --sweep paper

Each adapter is the grid point's run exactly as the sweep runs it (`python -m training train` with the point's
RunConfig: towers, tuned learning rate, step floor, patience, epoch cap, test subset). A finished run of that
point in the sweep's own out folder is copied instead of trained again. Weights are stored in float16 when the
float16 adapter answers the first test examples exactly as the trained one did, else in float32.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from training.budget import parse_budget
from training.catalog import MAIN_METRIC, METHOD_LABELS, PEFT_METHODS
from training.data.dataset import load_dataset
from training.errors import UserError
from training.launch.executor import RunSpec, run_one
from training.launch.process import ProcessExecutor
from training.model.pixels import PixelCache
from training.paths import DEFAULT_MODEL_DIR, REPO_ROOT
from training.run import runs
from training.run.config import RunConfig
from training.run.evaluation import predict
from training.run.rates import sweep_table
from training.run.tasks import Encoder
from training.run.trainer import load_run
from training.study.tuning import tuning_gaps
from training.sweeps.grid import GridPoint, SweepSpec, budget_text, filter_feasible, load_spec, normalise
from training.sweeps.table import folder_sha

MANIFEST = "MANIFEST.json"
FORMAT = 1  # the manifest's layout; the app skips a manifest of another format
CHECK_EXAMPLES = 64  # test examples the float16 adapter must answer as the trained one did
# What a shipped adapter keeps of its run's config.json: enough to attach it and to say what it is.
KEPT_INFO = (
    "config",
    "method",
    "family",
    "knob",
    "knob_value",
    "trainable_params",
    "total_params",
    "trainable_percent",
    "budget_params",
    "lr",
    "lr_source",
    "method_options",
    "dataset_name",
    "train_examples",
)


@dataclass
class ShipPlan:
    spec: SweepSpec
    points: list[GridPoint]  # the points to ship, cheapest first
    skipped: dict[str, str]  # "task method" -> why it is not shipped


def sweep_path(name: str) -> Path:
    """`paper` -> sweeps/paper.yaml; a path to a YAML file as it is."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    return REPO_ROOT / "sweeps" / f"{name}.yaml"


def reference_budget(spec: SweepSpec) -> str:
    if spec.data_axis is None:
        raise UserError(
            f"Sweep {spec.name} has no data_axis: its reference budget (one every method reaches) is unknown."
        )
    return str(spec.data_axis[0])


def plan_shipping(spec: SweepSpec, seed: int = 0) -> ShipPlan:
    """The grid's point at the reference budget, all the data and `seed` for each trained PEFT method and task
    (a method without a knob has one point per data share), minus those the grid cannot train as it stands."""
    budget = parse_budget(reference_budget(spec))
    skipped: dict[str, str] = {}
    wanted = []
    for task in spec.tasks:
        for method in spec.methods:
            if method not in PEFT_METHODS:  # the baselines: nothing to ship, or the whole model
                continue
            wanted.append(normalise(GridPoint(task, method, budget, 1.0, seed)))
    feasible, infeasible = filter_feasible(spec, wanted)
    for item in infeasible:
        skipped[f"{item.point.task} {item.point.method}"] = item.reason
    points = []
    for point in feasible:
        if spec.require_tuned_lr:
            missing, unfinished = tuning_gaps([spec.run_config(point)])
            if missing or unfinished:
                skipped[f"{point.task} {point.method}"] = (
                    "no tuned learning rate in results/lr.csv yet (run `python -m training tune` first)"
                )
                continue
        points.append(point)
    # Quickest first, the tasks in turn: a build stopped early still has adapters of both tasks.
    points.sort(key=lambda p: _expected_s(spec, p))
    rank = {p.name: sum(1 for q in points[:i] if q.task == p.task) for i, p in enumerate(points)}
    points.sort(key=lambda p: (rank[p.name], p.task))
    return ShipPlan(spec, points, skipped)


def _expected_s(spec: SweepSpec, point: GridPoint) -> float:
    """The point's mean wall time in the grid's table, else the sweep file's estimate."""
    stem = point.name.rsplit("__s", 1)[0]
    try:
        with open(spec.results / "runs.csv", encoding="utf-8", newline="") as handle:
            times = [float(r["wall_s"]) for r in csv.DictReader(handle) if r.get("run", "").startswith(stem + "__s")]
    except (OSError, KeyError, ValueError):
        times = []
    if times:
        return statistics.fmean(times)
    estimate = spec.estimate_s.get(point.task, 0.0)
    return float(estimate.get(point.method, 0.0) if isinstance(estimate, dict) else estimate)


def grid_seed_range(results: Path, point: GridPoint) -> dict | None:
    """The grid table's scores for this point over its seeds: {'seeds', 'min', 'max', 'mean'}; None when the
    table has no finished row of it."""
    metric = MAIN_METRIC[point.task]
    stem = point.name.rsplit("__s", 1)[0]
    try:
        with open(results / "runs.csv", encoding="utf-8", newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if (r.get("run") or "").rsplit("__s", 1)[0] == stem]
    except OSError:
        return None
    scored = sorted((int(r["seed"]), float(r[metric])) for r in rows if r.get(metric))
    if not scored:
        return None
    values = [v for _, v in scored]
    return {
        "metric": metric,
        "seeds": [s for s, _ in scored],
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_identity(spec: SweepSpec) -> dict:
    """The base model the adapters are trained on: its name and the digest of its folder (folder_sha)."""
    source = spec.base_model or str(DEFAULT_MODEL_DIR)
    return {"source": spec.base_model or "embedded", "name": Path(source).name, "sha": folder_sha(source)}


def ensure_run(plan: ShipPlan, point: GridPoint, work: Path, threads: int, echo) -> tuple[Path, str]:
    """A finished run directory of `point`: the sweep's own when it has one, else one trained now in `work`."""
    spec = plan.spec
    grid_run = spec.out / "runs" / point.name
    if (grid_run / runs.EVAL).is_file() and (grid_run / runs.WEIGHTS).is_file():
        return grid_run, f"copied from the grid's run {grid_run}"
    run_dir = work / point.name
    if (run_dir / runs.EVAL).is_file() and (run_dir / runs.WEIGHTS).is_file():
        return run_dir, "trained for shipping (an earlier invocation)"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # half-done: start again, as the sweep does
    echo(f"training {point.name} (the grid's protocol: {' '.join(spec.run_config(point).to_cli_args())})")
    spec_args = spec.run_config(point).to_cli_args()
    result = run_one(ProcessExecutor(), RunSpec(point.name, str(run_dir), spec_args, threads))
    if not result.finished:
        raise UserError(f"{point.name} failed (exit {result.returncode}):\n{result.error}")
    echo(f"  trained in {result.wall_s:.0f} s")
    return run_dir, "trained for shipping"


def float16_outputs_match(run_dir: Path, weights16: Path, limit: int = CHECK_EXAMPLES) -> tuple[bool, int]:
    """Whether the adapter with `weights16` answers the first `limit` test examples as the run's own predictions
    (those of its float32 weights) say; and how many were compared."""
    expected = [r["prediction"] for r in runs.read_jsonl(run_dir / runs.PREDICTIONS)][:limit]
    with _scratch_run(run_dir, weights16) as scratch:
        vl, adapter, info = load_run(scratch)
    vl.set_active(adapter)
    vl.model.eval()
    config = RunConfig.from_dict(info["config"])
    test = load_dataset(config.dataset, config.task).split("test")[: len(expected)]
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    got = predict(vl, config.task, test, PixelCache(vl.base.processor), encoder, None, config.max_new_tokens)
    return got == expected, len(expected)


class _scratch_run:
    """A temporary run directory with a run's config.json and other weights, for load_run."""

    def __init__(self, run_dir: Path, weights: Path) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="vlpeft-ship-"))
        shutil.copy(run_dir / runs.CONFIG, self.path / runs.CONFIG)
        shutil.copy(weights, self.path / runs.WEIGHTS)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def ship_point(plan: ShipPlan, point: GridPoint, run_dir: Path, how: str, out: Path, built: dict) -> dict:
    """Write `out/<point>.safetensors` and `out/<point>.json` from a finished run; return the manifest entry."""
    info = runs.read_json(run_dir / runs.CONFIG) or {}
    evaluation = runs.read_json(run_dir / runs.EVAL) or {}
    weights32 = load_file(str(run_dir / runs.WEIGHTS))
    target = out / f"{point.name}.safetensors"
    save_file({k: v.half().contiguous() for k, v in weights32.items()}, str(target))
    same, checked = float16_outputs_match(run_dir, target)
    if not same:  # rounding changed an answer: ship the trained weights as they are
        save_file({k: v.contiguous() for k, v in weights32.items()}, str(target))
    metric = MAIN_METRIC[point.task]
    metrics = evaluation.get("metrics") or {}
    kept = {key: info[key] for key in KEPT_INFO if key in info}
    kept["config"] = {**kept["config"], "base_model": None, "dataset": None}  # the recorded ones below say which
    record = {
        "name": point.name,
        "label": shipped_label(point, info),
        "method": point.method,
        "task": point.task,
        "budget": budget_text(point.budget) if point.budget else None,
        "data_fraction": point.fraction,
        "seed": point.seed,
        "trainable_params": info.get("trainable_params"),
        "grid_point": point.name,
        "base_model": plan_base(plan),
        "dataset": {"name": info.get("dataset_name"), "sha": folder_sha(info.get("dataset"))},
        "test": {
            "metric": metric,
            "value": metrics.get(metric),
            "examples": metrics.get("num_examples"),
            "metrics": {k: v for k, v in metrics.items() if k not in ("decode_s", "eval_s")},
        },
        "grid_seed_range": grid_seed_range(plan.spec.results, point),
        "weights": {
            "file": target.name,
            "dtype": "float16" if same else "float32",
            "float16_check": {"test_examples": checked, "same_outputs": same},
            "sha256": file_sha256(target),
            "bytes": target.stat().st_size,
        },
        "run": kept,
        "validation": evaluation.get("validation") or {},
        "built": {**built, "how": how},
    }
    runs.write_json(out / f"{point.name}.json", record)
    return {
        "name": point.name,
        "task": point.task,
        "method": point.method,
        "info": f"{point.name}.json",
        "weights": target.name,
        "sha256": {name: file_sha256(out / name) for name in (target.name, f"{point.name}.json")},
    }


def plan_base(plan: ShipPlan) -> dict:
    return base_identity(plan.spec)


def shipped_label(point: GridPoint, info: dict) -> str:
    """'LoRA, 18k parameters' or 'IA3, 5,120 parameters' (a method without a knob: its fixed count)."""
    method = METHOD_LABELS.get(point.method, point.method)
    if point.budget is not None:
        return f"{method}, {budget_text(point.budget)} parameters"
    return f"{method}, {info.get('trainable_params', 0):,} parameters"


def write_manifest(out: Path, plan: ShipPlan, entries: list[dict], built: dict) -> Path:
    manifest = {
        "format": FORMAT,
        "sweep": plan.spec.name,
        "reference_budget": budget_text(plan.spec.data_axis[0]) if plan.spec.data_axis else None,
        "data_fraction": 1.0,
        "base_model": plan_base(plan),
        "adapters": sorted(entries, key=lambda e: e["name"]),
        "not_shipped": plan.skipped,
        "built": built,
    }
    runs.write_json(out / MANIFEST, manifest)
    return out / MANIFEST


def ship_adapters(
    sweep: str,
    out: Path,
    work: Path,
    threads: int = 1,
    only: str | None = None,
    fresh: bool = False,
    command: str = "",
    echo=print,
) -> Path:
    """Build (or complete) the shipped adapters in `out`. Without `fresh` a point already shipped from the same
    base model is kept, so an interrupted build goes on where it stopped; `fresh` (after a grid rerun) ships every
    point again. Returns the manifest's path."""
    spec = load_spec(sweep_path(sweep))
    spec.out = spec.out if spec.out.is_absolute() else (REPO_ROOT / spec.out)
    spec.results = spec.results if spec.results.is_absolute() else (REPO_ROOT / spec.results)
    with sweep_table(spec.results):  # the grid's own tuned rates (sweeps/paper-v2.yaml: results/edition-2/lr.csv)
        return _ship(spec, out, work, threads, only, fresh, command, echo)


def _ship(spec: SweepSpec, out: Path, work: Path, threads, only, fresh, command, echo) -> Path:
    plan = plan_shipping(spec)
    if only:
        plan.points = [p for p in plan.points if re.search(only, p.name)]
    for what, why in plan.skipped.items():
        echo(f"not shipped: {what}: {why}")
    out.mkdir(parents=True, exist_ok=True)
    built = {"commit": git_commit(), "command": command, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    previous = runs.read_json(out / MANIFEST) or {}
    same_base = (previous.get("base_model") or {}).get("sha") == plan_base(plan)["sha"]
    entries = {e["name"]: e for e in previous.get("adapters", [])} if same_base and not fresh else {}
    wanted = {p.name for p in plan.points} | set(entries)
    for stale in [p for p in out.iterdir() if p.suffix in (".json", ".safetensors") and p.name != MANIFEST]:
        if stale.stem not in wanted:
            stale.unlink()  # an adapter of another base model or grid
    for number, point in enumerate(plan.points, 1):
        if point.name in entries and (out / entries[point.name]["weights"]).is_file():
            echo(f"[{number}/{len(plan.points)}] {point.name}: shipped already")
            continue
        echo(f"[{number}/{len(plan.points)}] {point.name}")
        run_dir, how = ensure_run(plan, point, work, threads, echo)
        entries[point.name] = ship_point(plan, point, run_dir, how, out, built)
        manifest = write_manifest(out, plan, list(entries.values()), built)  # after each: a stop loses nothing
        record = runs.read_json(out / f"{point.name}.json") or {}
        echo(
            f"  shipped: {record['test']['metric']} {record['test']['value']:.4g}, "
            f"{record['weights']['dtype']}, {record['weights']['bytes']:,} bytes"
        )
    manifest = write_manifest(out, plan, list(entries.values()), built)
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    echo(f"{len(entries)} adapters in {out} ({total / 1024:.0f} KB in all); manifest {manifest}")
    return manifest


def command_line(sweep: str, out: str, threads: int, only: str | None, fresh: bool) -> str:
    """The command that built the adapters, as recorded in each adapter's JSON."""
    parts = ["python -m training ship-adapters", "--out", shlex.quote(out), "--sweep", shlex.quote(sweep)]
    parts += ["--threads", str(threads)] + (["--only", shlex.quote(only)] if only else [])
    return " ".join(parts + (["--fresh"] if fresh else []))
