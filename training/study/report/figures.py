"""The report's figures: data size and parameter size per task, and the family gaps (plotly, written as PNG)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from training.catalog import MAIN_METRIC, METHOD_COLOURS
from training.study.report.curves import data_curves, param_curves
from training.study.report.finding_families import family_gaps
from training.study.report.stats import Stats

COLORS = METHOD_COLOURS


def build_figures(frame) -> dict:
    """name -> plotly figure, for the three findings."""
    figures = {}
    tasks = [t for t in MAIN_METRIC if (frame.task == t).any()] or list(MAIN_METRIC)
    for name, curves_of, x_title in (
        ("data_size", data_curves, "data fraction (log)"),
        ("param_size", param_curves, "trainable parameters (log)"),
    ):
        fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[f"{t}: {MAIN_METRIC[t]}" for t in tasks])
        for col, task in enumerate(tasks, 1):
            for curve in curves_of(frame, task):
                fig.add_trace(
                    go.Scatter(
                        x=curve.xs,
                        y=curve.means,
                        error_y={"type": "data", "array": curve.sds},
                        mode="lines+markers",
                        name=curve.method,
                        legendgroup=curve.method,
                        showlegend=col == 1,
                        line={"color": COLORS.get(curve.method)},
                    ),
                    1,
                    col,
                )
            _baselines(fig, frame, task, col, include_full=name == "param_size")
            fig.update_xaxes(type="log", title_text=x_title, row=1, col=col)
        fig.update_layout(width=1100, height=430, template="plotly_white", margin={"t": 50, "b": 40})
        figures[name] = fig
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[f"{t}: {MAIN_METRIC[t]}" for t in tasks])
    stats = Stats(frame, None)
    for col, task in enumerate(tasks, 1):
        _, pooled, _ = family_gaps(frame, task, stats)
        shown = [g for g in pooled if g.gap]
        fig.add_trace(
            go.Bar(
                x=[f"{g.layer} - {g.embedding}" for g in shown],
                y=[g.gap.mean for g in shown],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [g.gap.high - g.gap.mean if g.gap.known else 0 for g in shown],
                    "arrayminus": [g.gap.mean - g.gap.low if g.gap.known else 0 for g in shown],
                },
                showlegend=False,
            ),
            1,
            col,
        )
        fig.update_xaxes(type="category", row=1, col=col)
        fig.update_yaxes(title_text="layer - embedding" if col == 1 else None, row=1, col=col)
    fig.update_layout(
        width=1100,
        height=480,
        template="plotly_white",
        margin={"t": 80, "b": 40},
        title="each layer method minus each embedding method at matched cells (95 % t-interval across seeds)",
    )
    figures["families"] = fig
    return figures


def _baselines(fig, frame, task: str, col: int, include_full: bool) -> None:
    metric = MAIN_METRIC[task]
    if metric not in frame:
        return
    rows = frame[frame.task == task]
    zero = rows[rows.method == "zero-shot"][metric].mean()
    if np.isfinite(zero):
        fig.add_hline(
            y=float(zero),
            line_dash="dash",
            line_color="black",
            row=1,
            col=col,
            annotation_text="zero-shot",
            annotation_position="bottom right",
        )
    full = rows[(rows.method == "full") & (rows.data_fraction == rows.data_fraction.max())]
    if include_full and not full.empty:
        fig.add_trace(
            go.Scatter(
                x=[float(full.trainable_params.mean())],
                y=[float(full[metric].mean())],
                error_y={"type": "data", "array": [float(full[metric].std() or 0)]},
                mode="markers",
                marker={"symbol": "diamond", "size": 11, "color": COLORS["full"]},
                name="full",
                showlegend=col == 1,
            ),
            1,
            col,
        )


def render_figures(figures: dict, folder: Path) -> str | None:
    """Write the figures as PNG (plotly + kaleido, which drives a local Chrome/Chromium); None, or why not."""
    folder.mkdir(parents=True, exist_ok=True)
    if "BROWSER_PATH" not in os.environ:
        found = next(
            (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
        )
        if found:
            os.environ["BROWSER_PATH"] = found
    try:
        figs = list(figures.values())
        pio.write_images(
            figs,
            [str(folder / f"{name}.png") for name in figures],
            width=[f.layout.width for f in figs],
            height=[f.layout.height for f in figs],
        )
    except Exception as exc:  # kaleido missing, or no browser it can start: the text report still stands
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return None
