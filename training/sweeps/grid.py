"""The sweep file and the grid it describes: tasks x methods x budgets x data fractions x seeds.

A sweep file gives the grid as a full cross product (`budgets` and `fractions`), as one axis at a time
(`data_axis: {budget, fractions}` and `budget_axis: {fraction, budgets}`, as the paper varies them), or
both; the points are their union. Zero-shot ignores budgets and data fractions (one run per task and seed),
full fine-tuning and every other method without a knob (a fixed count) ignore budgets (one run per task,
fraction and seed). The keys:

    name: paper                      # default: the file's stem
    out: runs/sweeps/paper           # run directories go to OUT/runs/<point name>/
    results: results                 # runs.csv and sweep.json go here
    base_model: null                 # Hub id or folder; null: the embedded default
    datasets: {caption: null, vqa: null}   # folder or Hub id per task; null: the embedded default
    tasks: {caption: {max_steps: 150}, vqa: {eval_limit: 500}}   # or a list: [caption, vqa]
    methods: [zero-shot, full, prompt, prefix, lora, serial-adapter, parallel-adapter]
    seeds: [0, 1, 2]
    settings: {batch_size: 32}       # any RunConfig field but the grid's own, for every run
    budgets: [10k, 0.5%]             # cross product with `fractions`; or {method: [...], "*": [...]}
    fractions: [0.1, 1.0]
    data_axis: {budget: 32k, fractions: [0.01, 0.1, 1.0]}
    budget_axis: {fraction: 1.0, budgets: [1k, 10k, 100k]}    # budgets: a list or {method: [...]}
    resources: {num_cpus: 1, num_gpus: 0}   # what each run asks Ray for
    estimate_s: {caption: 35, vqa: 30}      # seconds of a run on all the data, for the dry run ({task: {method: s}})
    gpu_estimate: {...}              # time per GPU kind from FLOPs (training/sweeps/gpu_estimate.py)
    require_tuned_lr: false          # true: refuse to run while results/lr.csv lacks a trained method's rate
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from training.budget import Budget, parse_budget
from training.catalog import NO_BUDGET_METHODS
from training.errors import UserError
from training.run.config import METHOD_NAMES, TASKS, RunConfig, parse_fraction
from training.sweeps.gpu_estimate import GpuEstimate

if TYPE_CHECKING:
    from training.methods.budget import Plan
    from training.model.shape import ModelShape

# RunConfig fields the grid sets itself; a sweep file may set every other field in `settings` or per task.
GRID_FIELDS = {"task", "method", "budget", "data_fraction", "seed", "base_model", "dataset"}
TOP_KEYS = {
    "name",
    "out",
    "results",
    "base_model",
    "datasets",
    "tasks",
    "methods",
    "seeds",
    "budgets",
    "fractions",
    "data_axis",
    "budget_axis",
    "settings",
    "resources",
    "estimate_s",
    "require_tuned_lr",
    "gpu_estimate",
}


@dataclass(frozen=True)
class GridPoint:
    task: str
    method: str
    budget: Budget | None  # None: the method ignores budgets
    fraction: float | None  # None: the method ignores data fractions (zero-shot)
    seed: int

    @property
    def name(self) -> str:
        """A stable run-directory name, e.g. `vqa__lora__b20k__f0.25__s1`."""
        parts = [self.task, self.method]
        if self.budget is not None:
            parts.append(f"b{budget_label(self.budget)}")
        if self.fraction is not None:
            parts.append(f"f{self.fraction:g}")
        parts.append(f"s{self.seed}")
        return "__".join(parts)


@dataclass
class Skipped:
    point: GridPoint
    reason: str


@dataclass
class SweepSpec:
    """A parsed, validated sweep file."""

    name: str
    out: Path
    results: Path
    base_model: str | None
    datasets: dict[str, str | None]
    tasks: dict[str, dict]  # task -> RunConfig overrides for that task
    methods: list[str]
    seeds: list[int]
    settings: dict  # RunConfig overrides for every run
    budgets: dict[str, list[Budget]] | None = None  # method -> budgets of the cross product ("*": every method)
    fractions: list[float] | None = None
    data_axis: tuple[Budget, list[float]] | None = None
    budget_axis: tuple[float, dict[str, list[Budget]]] | None = None
    resources: dict = field(default_factory=lambda: {"num_cpus": 1, "num_gpus": 0})
    estimate_s: dict[str, float | dict] = field(default_factory=dict)  # task -> seconds per run (or method -> s)
    require_tuned_lr: bool = False  # runs may not fall back to a method's default learning rate
    gpu_estimate: GpuEstimate | None = None  # the assumptions of a time estimate per GPU kind, from FLOPs
    source: dict = field(default_factory=dict)  # the file as read

    def points(self) -> list[GridPoint]:
        """Every grid point, deduplicated, seed by seed (so a partly done sweep has whole grids of a seed)."""
        found: dict[str, GridPoint] = {}
        for task in self.tasks:
            for method in self.methods:
                for budget, fraction in self._cells(method):
                    for seed in self.seeds:
                        point = normalise(GridPoint(task, method, budget, fraction, seed))
                        found.setdefault(point.name, point)
        return sorted(found.values(), key=_order)

    def _cells(self, method: str) -> list[tuple[Budget | None, float | None]]:
        cells = []
        if self.budgets is not None and self.fractions is not None:
            cells += [(b, f) for b in _for_method(self.budgets, method) for f in self.fractions]
        if self.data_axis is not None:
            budget, fractions = self.data_axis
            cells += [(budget, f) for f in fractions]
        if self.budget_axis is not None:
            fraction, budgets = self.budget_axis
            cells += [(b, fraction) for b in _for_method(budgets, method)]
        return cells

    def axes(self) -> list[str]:
        """The grid's forms in words, for the dry run."""

        def budgets(by_method: dict[str, list[Budget]]) -> str:
            return "; ".join(
                ("" if m == "*" else f"{m}: ") + ", ".join(budget_text(b) for b in v) for m, v in by_method.items()
            )

        lines = []
        if self.budgets is not None and self.fractions is not None:
            lines.append(f"cross product: budgets {budgets(self.budgets)} x fractions {self.fractions}")
        if self.data_axis is not None:
            lines.append(f"data axis: budget {budget_text(self.data_axis[0])} x fractions {self.data_axis[1]}")
        if self.budget_axis is not None:
            lines.append(f"budget axis: fraction {self.budget_axis[0]:g} x budgets {budgets(self.budget_axis[1])}")
        lines.append(f"tasks {', '.join(self.tasks)}; methods {', '.join(self.methods)}; seeds {self.seeds}")
        return lines

    def run_config(self, point: GridPoint) -> RunConfig:
        """The RunConfig of one grid point: settings, then the task's overrides, then the point itself."""
        values = {**self.settings, **self.tasks[point.task]}
        values.update(
            task=point.task,
            method=point.method,
            seed=point.seed,
            base_model=self.base_model,
            dataset=self.datasets.get(point.task),
        )
        if point.budget is not None:
            values["budget"] = str(point.budget)
        if point.fraction is not None:
            values["data_fraction"] = point.fraction
        return RunConfig.from_dict(values).validate()


def normalise(point: GridPoint) -> GridPoint:
    """Drop what a method ignores (zero-shot: budget and data; the other no-budget methods: the budget), so its
    duplicates collapse to one point."""
    if point.method == "zero-shot":
        return dataclasses.replace(point, budget=None, fraction=None)
    if point.method in NO_BUDGET_METHODS:
        return dataclasses.replace(point, budget=None)
    return point


def _order(point: GridPoint) -> tuple:
    budget = (-1, 0.0) if point.budget is None else (int(point.budget.percent), point.budget.value)
    return (point.seed, TASKS.index(point.task), METHOD_NAMES.index(point.method), budget, point.fraction or 0.0)


def _for_method(budgets: dict[str, list[Budget]], method: str) -> list[Budget | None]:
    if method in NO_BUDGET_METHODS:
        return [None]
    return budgets.get(method, budgets.get("*", []))


def budget_label(budget: Budget) -> str:
    """A compact, file-name-safe label: 20000 -> 20k, 1500000 -> 1.5M, 0.5% -> 0.5pct."""
    if budget.percent:
        return f"{budget.value:g}pct"
    value = budget.value
    for suffix, scale in (("M", 1_000_000), ("k", 1_000)):
        if value >= scale and (value / scale) == round(value / scale, 2):
            return f"{value / scale:g}{suffix}"
    return f"{int(value)}"


def budget_text(budget: Budget) -> str:
    """The label as people write it: 20k, 1.5M, 0.5%."""
    return budget_label(budget).replace("pct", "%")


def parse_spec(data: dict, file_name: str = "sweep") -> SweepSpec:
    """Validate a sweep file's contents; raise UserError naming the key that is wrong."""
    if not isinstance(data, dict):
        raise UserError("A sweep file must be a YAML mapping (name, tasks, methods, seeds, ...).")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise UserError(
            f"Unknown keys in the sweep file: {', '.join(sorted(unknown))}. Known keys: {', '.join(sorted(TOP_KEYS))}."
        )
    name = str(data.get("name") or file_name)
    tasks = _tasks(data.get("tasks", list(TASKS)))
    methods = _list(data.get("methods"), "methods")
    for method in methods:
        if method not in METHOD_NAMES:
            raise UserError(f"Unknown method {method!r} in the sweep file: choose from {', '.join(METHOD_NAMES)}.")
    seeds = [int(s) for s in _list(data.get("seeds", [0]), "seeds")]
    settings = _overrides(data.get("settings") or {}, "settings")
    datasets = data.get("datasets") or {}
    if not isinstance(datasets, dict) or set(datasets) - set(TASKS):
        raise UserError("`datasets` must map a task (caption, vqa) to a dataset folder or Hub id.")
    spec = SweepSpec(
        name=name,
        out=Path(data.get("out") or f"runs/sweeps/{name}"),
        results=Path(data.get("results") or "results"),
        base_model=_source(data.get("base_model")),
        datasets={t: _source(datasets.get(t)) for t in TASKS},
        tasks=tasks,
        methods=methods,
        seeds=seeds,
        settings=settings,
        source=data,
    )
    if "budgets" in data or "fractions" in data:
        if "budgets" not in data or "fractions" not in data:
            raise UserError("A cross-product grid needs both `budgets` and `fractions`.")
        spec.budgets = _budgets(data["budgets"], "budgets")
        spec.fractions = _fractions(data["fractions"], "fractions")
    if "data_axis" in data:
        axis = _mapping(data["data_axis"], "data_axis", {"budget", "fractions"})
        spec.data_axis = (parse_budget(axis["budget"]), _fractions(axis["fractions"], "data_axis.fractions"))
    if "budget_axis" in data:
        axis = _mapping(data["budget_axis"], "budget_axis", {"fraction", "budgets"})
        spec.budget_axis = (parse_fraction(axis["fraction"]), _budgets(axis["budgets"], "budget_axis.budgets"))
    if spec.budgets is None and spec.data_axis is None and spec.budget_axis is None:
        if set(methods) - {"zero-shot"}:
            raise UserError(
                "The sweep file gives no grid: add `budgets` and `fractions` (a cross product), "
                "or `data_axis` and/or `budget_axis`."
            )
        spec.data_axis = (parse_budget(RunConfig().budget), [1.0])
    resources = data.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - {"num_cpus", "num_gpus"}:
        raise UserError("`resources` takes num_cpus and num_gpus (what each run asks Ray for).")
    spec.resources = {"num_cpus": float(resources.get("num_cpus", 1)), "num_gpus": float(resources.get("num_gpus", 0))}
    estimate = data.get("estimate_s") or {}
    if not isinstance(estimate, dict) or set(estimate) - set(TASKS):
        raise UserError("`estimate_s` maps a task to the expected seconds of one run, e.g. {caption: 40}.")
    spec.estimate_s = {
        t: {m: float(s) for m, s in v.items()} if isinstance(v, dict) else float(v) for t, v in estimate.items()
    }
    required = data.get("require_tuned_lr", False)
    if not isinstance(required, bool):
        raise UserError("`require_tuned_lr` is true or false.")
    spec.require_tuned_lr = required
    if "gpu_estimate" in data:
        spec.gpu_estimate = GpuEstimate.parse(data["gpu_estimate"], list(spec.tasks))
    for point in spec.points()[:1]:
        spec.run_config(point)  # the settings must make a valid RunConfig
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    import yaml  # PyYAML: `python -m training --help` imports this module

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"Sweep file {path} cannot be read ({exc.strerror}).") from None
    except yaml.YAMLError as exc:
        raise UserError(f"Sweep file {path} is not valid YAML: {exc}") from None
    return parse_spec(data, path.stem)


def _source(value) -> str | None:
    """A local folder as an absolute path (runs may start elsewhere), anything else (a Hub id) as it is."""
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return str(path.resolve()) if path.exists() else str(value)


def _list(value, key: str) -> list:
    if value is None:
        raise UserError(f"The sweep file needs `{key}`.")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise UserError(f"`{key}` is empty.")
    return items


def _mapping(value, key: str, required: set[str]) -> dict:
    if not isinstance(value, dict) or set(value) != required:
        raise UserError(f"`{key}` must be a mapping with exactly {', '.join(sorted(required))}.")
    return value


def _fractions(value, key: str) -> list[float]:
    return sorted({parse_fraction(f) for f in _list(value, key)})


def _budgets(value, key: str) -> dict[str, list[Budget]]:
    """A list (for every method) or a mapping method -> list; `*` in a mapping is every other method."""
    if isinstance(value, dict):
        for method in value:
            if method != "*" and method not in METHOD_NAMES:
                raise UserError(f"`{key}` names an unknown method {method!r}.")
        return {m: [parse_budget(b) for b in _list(v, f"{key}.{m}")] for m, v in value.items()}
    return {"*": [parse_budget(b) for b in _list(value, key)]}


def _overrides(value, key: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"`{key}` must be a mapping of run settings (batch_size, max_steps, eval_limit, ...).")
    known = {f.name for f in dataclasses.fields(RunConfig)} - GRID_FIELDS
    unknown = set(value) - known
    if unknown:
        raise UserError(
            f"`{key}` has unknown run settings {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}."
        )
    return dict(value)


def _tasks(value) -> dict[str, dict]:
    """`[caption, vqa]`, or a mapping task -> its own run settings (max_steps, eval_limit, ...)."""
    items = value if isinstance(value, dict) else {t: {} for t in _list(value, "tasks")}
    for task in items:
        if task not in TASKS:
            raise UserError(f"Unknown task {task!r} in the sweep file: choose from {', '.join(TASKS)}.")
    return {t: _overrides(items[t] or {}, f"tasks.{t}") for t in sorted(items, key=TASKS.index)}


@dataclass
class Solved:
    """The grid's budgets solved on the base model's architecture (built empty: no weights are read)."""

    kept: list[GridPoint]
    skipped: list[Skipped]
    plans: dict[tuple[str, Budget, str], Plan]  # (method, budget, towers) -> its solved knob and count
    shape: ModelShape


def solve_grid(spec: SweepSpec, points: list[GridPoint]) -> Solved:
    """Solve every point's budget for its method on the base model built on the meta device, and split the points
    into those each method can train and those whose budget it cannot reach (with why)."""
    # torch: `python -m training --help` imports this module
    from training.methods.budget import plan_method
    from training.model.shape import model_shape

    shape = model_shape(spec.base_model)
    plans: dict[tuple[str, Budget, str], Plan] = {}
    kept, skipped = [], []
    for point in points:
        if point.budget is None:
            kept.append(point)
            continue
        towers = spec.run_config(point).towers
        key = (point.method, point.budget, towers)
        if key not in plans:
            plans[key] = plan_method(shape.model, point.method, point.budget, towers)
        plan = plans[key]
        if plan.feasible:
            kept.append(point)
        else:
            span = f"{plan.min_params:,}-{plan.max_params:,}"
            skipped.append(Skipped(point, f"{point.method} trains {span} parameters, not {budget_text(point.budget)}"))
    return Solved(kept, skipped, plans, shape)


def filter_feasible(spec: SweepSpec, points: list[GridPoint]) -> tuple[list[GridPoint], list[Skipped]]:
    """Split the points into those each method can train and those whose budget it cannot reach (with why)."""
    solved = solve_grid(spec, points)
    return solved.kept, solved.skipped
