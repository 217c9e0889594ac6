"""The statistics: t-intervals across seeds, the hierarchical paired bootstrap over seeds and test items, their
one-sided p-values, Holm's adjusted p-values over a family, and per-seed slopes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.catalog import MAIN_METRIC
from training.study.report.inputs import ItemScores, Prior, task_rows
from training.study.report.rules import BOOTSTRAP_SEED, ITEM_FILE, LEVEL, MIN_SEEDS, RESAMPLES

# Two-sided 95 % quantiles of Student's t by degrees of freedom (numpy has no t distribution).
T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of t with df degrees of freedom (the nearest tabled df at or below)."""
    if df < 1:
        return math.nan
    return T975[max(k for k in T975 if k <= df)] if df <= 120 else 1.960


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom: the regularised incomplete beta
    I_x(df/2, 1/2) at x = df / (df + t^2) (numpy has no t distribution)."""
    if df < 1 or math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_upper_p(t: float, df: int) -> float:
    """P(T >= t) for Student's t with df degrees of freedom: the one-sided p-value of "the mean is above zero"."""
    half = t_two_sided_p(t, df) / 2
    return half if t >= 0 else 1.0 - half


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - incomplete_beta(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * f


@dataclass
class Interval:
    """A mean over seeds with its 95 % interval; no interval below MIN_SEEDS seeds."""

    mean: float
    low: float
    high: float
    n: int
    # One-sided p-value of "the mean is above zero" (every claim tested is directional): the larger of the
    # t-test's and the bootstrap's. nan for a ratio, which is shown and not tested.
    p: float = math.nan

    @classmethod
    def of(cls, values) -> Interval | None:
        """The t-interval across independent values (seeds)."""
        values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
        if values.size == 0:
            return None
        mean = float(values.mean())
        if values.size < MIN_SEEDS:
            return cls(mean, math.nan, math.nan, int(values.size))
        sd = float(values.std(ddof=1))
        half = t_quantile(values.size - 1) * sd / math.sqrt(values.size)
        # Seeds that agree exactly leave no doubt about the sign of the mean (none for a mean of zero).
        p = float(mean <= 0) if sd == 0 else t_upper_p(mean / (sd / math.sqrt(values.size)), values.size - 1)
        return cls(mean, mean - half, mean + half, int(values.size), p)

    @property
    def known(self) -> bool:
        return self.n >= MIN_SEEDS and np.isfinite(self.low) and np.isfinite(self.high)

    @property
    def above_zero(self) -> bool:
        return self.known and self.low > 0

    def scaled(self, factor: float) -> Interval:
        low, high = sorted((self.low * factor, self.high * factor))
        return Interval(self.mean * factor, low, high, self.n, self.p)

    def text(self, digits: int = 3) -> str:
        def number(x: float) -> str:
            return "0" if abs(x) < 1e-9 else f"{x:.{digits}g}"

        if not self.known:
            return f"{number(self.mean)} ({self.n} seed{'s' if self.n != 1 else ''}: no interval)"
        return f"{number(self.mean)} [{number(self.low)}, {number(self.high)}] (n={self.n})"


class Stats:
    """Every interval of one report, from one set of draws: per task, a hierarchical paired bootstrap when every
    run of the task has item scores, a t-interval across seeds otherwise.

    A run's value is an array: its table metric, then (bootstrap) its mean over each resample of the test items,
    the same resamples for every run of the task. Statistics are built from these arrays per seed and handed to
    `interval`, which resamples the seeds."""

    def __init__(self, frame, items: ItemScores | None, prior: Prior | None = None, resamples: int = RESAMPLES):
        self.resamples = resamples
        self.items = items
        self.weights: dict[str, np.ndarray] = {}
        self.why_not: dict[str, str] = {}
        self._cache: dict[str, np.ndarray] = {}
        for index, task in enumerate(MAIN_METRIC):
            reason = self._eligible(frame, task)
            if reason:
                self.why_not[task] = reason
                continue
            n = len(items.scores[str(task_rows(frame, task).run.iloc[0])])
            counts = np.random.default_rng([BOOTSTRAP_SEED, index]).multinomial(n, np.full(n, 1 / n), resamples)
            self.weights[task] = counts.T / n  # items x resamples: column b averages resample b
        self.prior = prior
        if prior is not None and "vqa" in self.weights:
            listed = items.question_types.get("vqa")
            if prior.items.size != self.weights["vqa"].shape[0]:
                self.why_not["prior"] = (
                    f"the prior has {prior.items.size} test items and the item scores "
                    f"{self.weights['vqa'].shape[0]}: the gain over it is paired by seed only"
                )
            elif listed and prior.question_types and listed != prior.question_types:
                self.why_not["prior"] = (
                    "the item file's question types are not the dataset's test split in order: "
                    "the gain over the prior is paired by seed only"
                )

    def _eligible(self, frame, task: str) -> str:
        rows = task_rows(frame, task)
        if rows.empty:
            return "no runs"
        if self.items is None:
            return f"no `{ITEM_FILE}`"
        if "run" not in rows:
            return "the table has no `run` column to match item scores by"
        missing = [r for r in rows.run if str(r) not in self.items.scores]
        if missing:
            return f"{len(missing)} of {len(rows)} runs have no item scores (e.g. `{missing[0]}`)"
        return ""

    def values(self, rows, task: str) -> np.ndarray:
        """One row per run: the table metric, then its item-resampled means when the task is bootstrapped."""
        base = rows[MAIN_METRIC[task]].to_numpy(dtype=float)[:, None]
        if task not in self.weights:
            return base
        resampled = []
        for run in rows.run.astype(str):
            if run not in self._cache:
                self._cache[run] = self.items.scores[run] @ self.weights[task]
            resampled.append(self._cache[run])
        return np.hstack([base, np.stack(resampled)])

    def prior_values(self, task: str) -> np.ndarray | None:
        """The answer prior as a run's value array (item-resampled when paired by item is possible)."""
        if self.prior is None or task != "vqa":
            return None
        if task in self.weights and "prior" not in self.why_not:
            return np.concatenate([[self.prior.accuracy], self.prior.items @ self.weights[task]])
        return np.full(1 + (self.resamples if task in self.weights else 0), self.prior.accuracy)

    def interval(self, per_seed: dict, denominator: dict | None = None) -> Interval | None:
        """Mean over seeds of per-seed value arrays (divided by the mean of `denominator`'s), with its interval."""
        seeds = sorted(s for s in per_seed if denominator is None or s in denominator)
        if not seeds:
            return None
        values = np.stack([per_seed[s] for s in seeds])
        scale = np.stack([denominator[s] for s in seeds]) if denominator is not None else np.ones_like(values)
        k = len(seeds)
        point = float(values[:, 0].mean() / scale[:, 0].mean())
        if k < MIN_SEEDS or not np.isfinite(point):
            return Interval(point, math.nan, math.nan, k)
        t = Interval.of(values[:, 0]).scaled(1 / scale[:, 0].mean())
        if values.shape[1] == 1:
            return t if denominator is None else Interval(t.mean, t.low, t.high, t.n)  # no test of a ratio
        draws = np.random.default_rng([BOOTSTRAP_SEED, k]).integers(0, k, size=(k, values.shape[1] - 1))
        columns = np.arange(values.shape[1] - 1)
        resampled = values[:, 1:][draws, columns].mean(0) / scale[:, 1:][draws, columns].mean(0)
        tail = 100 * (1 - LEVEL) / 2
        low, high = np.nanpercentile(resampled, [tail, 100 - tail])
        # The bootstrap's one-sided p-value: the share of resamples at or below zero.
        p = max(t.p, float(np.mean(resampled <= 0))) if denominator is None else math.nan
        return Interval(point, min(float(low), t.low), max(float(high), t.high), k, p)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values over one family of m tests, in the order given: the k-th smallest p-value
    is multiplied by m - k + 1, and an adjusted p-value is never below one ranked before it. A test holds at the
    family-wise error ALPHA when its adjusted p-value is below ALPHA."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def seed_arrays(rows, values: np.ndarray, key: str) -> dict[int, dict]:
    """seed -> {key value -> mean value array of that seed's rows at it}."""
    out: dict[int, dict] = {}
    for seed, x, value in zip(rows.seed, rows[key], values, strict=True):
        out.setdefault(int(seed), {}).setdefault(x, []).append(value)
    return {s: {x: np.mean(v, axis=0) for x, v in by_x.items()} for s, by_x in out.items()}


def seed_slopes(rows, x: str, values: np.ndarray) -> tuple[dict, dict]:
    """Per seed: the OLS slope of the value arrays on log10(x), and the value at the largest x (seeds with two or
    more distinct positive x only)."""
    slopes, levels = {}, {}
    for seed, points in seed_arrays(rows, values, x).items():
        xs = sorted(v for v in points if v > 0)
        if len(xs) >= 2:
            ys = np.stack([points[v] for v in xs])
            slopes[seed] = np.polyfit(np.log10(np.asarray(xs, dtype=float)), ys, 1)[0]
            levels[seed] = points[xs[-1]]
    return slopes, levels


def per_seed_mean(rows, values: np.ndarray) -> dict[int, np.ndarray]:
    """seed -> the mean value array of that seed's rows."""
    out: dict[int, list] = {}
    for seed, value in zip(rows.seed, values, strict=True):
        out.setdefault(int(seed), []).append(value)
    return {s: np.mean(v, axis=0) for s, v in out.items()}
