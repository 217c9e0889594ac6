"""Plotly figures: the live loss curve and Explore's metric-vs-data and metric-vs-parameters plots."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from app.format import METHOD_LABELS
from app.results import ALL, MINE, SWEEP, SWEPT, aggregate, metric_label
from training.catalog import CATALOG, METHOD_COLOURS, NO_BUDGET_METHODS

METHOD_COLORS = METHOD_COLOURS
# Baselines that a held value does not apply to: no budget for either, no data for zero-shot.
HELD_EXEMPT = {
    "budget": NO_BUDGET_METHODS,
    "data_fraction": tuple(m for m, i in CATALOG.items() if i.fixed_towers == "none"),
}
AXIS_TITLES = {"data_fraction": "share of the training data", "trainable_params": "trainable parameters"}
LAYOUT = dict(
    template="plotly_white",
    margin=dict(l=60, r=20, t=60, b=50),
    height=400,
    showlegend=True,
    legend=dict(orientation="h", yanchor="top", y=-0.25),
)


def loss_curve(
    rows: list[dict],
    validation: list[dict] | None = None,
    title: str = "Training loss and validation score",
    kept: bool = True,
) -> go.Figure:
    """The loss per logged step and, on a second axis, the validation score at each validation, the best one
    ringed: 'kept checkpoint' when the run ended by itself and kept it (`kept`), else 'best so far'."""
    figure = go.Figure(layout=dict(LAYOUT, title=title, height=300))
    if rows:
        figure.add_trace(
            go.Scatter(
                x=[r["step"] for r in rows],
                y=[r["loss"] for r in rows],
                mode="lines+markers",
                name="training loss",
                line=dict(color=METHOD_COLORS["lora"]),
            )
        )
    if validation:
        metric = metric_label(validation[-1]["metric"])
        figure.add_trace(
            go.Scatter(
                x=[v["step"] for v in validation],
                y=[v["value"] for v in validation],
                mode="lines+markers",
                name=f"validation {metric}",
                yaxis="y2",
                line=dict(color=METHOD_COLORS["prompt"], dash="dot"),
            )
        )
        best = validation[-1]["best_step"]
        ringed = [v for v in validation if v["step"] == best]
        figure.add_trace(
            go.Scatter(
                x=[v["step"] for v in ringed],
                y=[v["value"] for v in ringed],
                mode="markers",
                name="kept checkpoint" if kept else "best validation so far",
                yaxis="y2",
                marker=dict(size=14, symbol="circle-open", color=METHOD_COLORS["prompt"]),
            )
        )
        figure.update_layout(
            yaxis2=dict(title=f"validation {metric} (higher is better)", overlaying="y", side="right"),
            margin=dict(LAYOUT["margin"], r=70),  # room for the right axis' title
        )
    if not rows and not validation:
        figure.add_annotation(
            text="The curve appears once training has started.",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
        )
    figure.update_xaxes(title="step")
    # The left axis only: update_yaxes would title the validation axis "loss" too.
    figure.update_layout(yaxis=dict(title="training loss (lower is better)"))
    return figure


def metric_figure(frame: pd.DataFrame, x: str, metric: str, held: tuple[str, str] | None = None) -> go.Figure:
    """A line per method of the metric against x, error bars over seeds; the user's runs as stars, the runs of
    the sweeps they queued from the page as dotted lines.

    `held` = (column, value) keeps only the sweep rows with that value (e.g. one budget for the data plot).
    """
    label = metric_label(metric)
    title = f"{label} vs {AXIS_TITLES[x]}"
    if held and held[1] != ALL:
        title += f" ({'budget' if held[0] == 'budget' else 'data'} {held[1]})"
    figure = go.Figure(layout=dict(LAYOUT, title=title))
    if x == "trainable_params":
        figure.update_xaxes(title=AXIS_TITLES[x], type="log")
    else:  # shares of 1, 5 and 10 % would crowd together on a linear axis
        figure.update_xaxes(title=AXIS_TITLES[x], type="log", tickformat=".0%")
    figure.update_yaxes(title=label)
    if frame.empty or metric not in frame.columns:
        figure.add_annotation(
            text="Nothing to draw yet: finish a run in the Train tab.",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
        )
        return figure
    frame = frame.copy()
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    if x == "data_fraction":  # ticks at the shares the runs used: a log axis' own crowd (1%1%1%, 60%70%80%90%)
        figure.update_xaxes(tickvals=sorted(pd.to_numeric(frame[x], errors="coerce").dropna().unique()))
    sweep, mine, swept = (frame[frame["source"] == source] for source in (SWEEP, MINE, SWEPT))
    if held and held[1] != ALL:  # your runs (stars, dotted lines) obey the held value as the sweep's lines do
        sweep, mine, swept = _held(sweep, held), _held(mine, held), _held(swept, held)
    _baseline_line(figure, sweep, metric)
    _method_lines(figure, sweep, x, metric, label)
    _method_lines(figure, swept, x, metric, label, own=True)
    mine = mine[mine["method"] != "zero-shot"].dropna(subset=[metric, x]).copy()
    if "not_comparable" not in mine.columns:
        mine["not_comparable"] = ""
    mine["not_comparable"] = mine["not_comparable"].fillna("").astype(str)
    mine["label"] = mine["label"] if "label" in mine.columns else mine["run_id"]
    for (method, off), group in mine.groupby(["method", mine["not_comparable"] != ""], sort=False):
        name = f"your {METHOD_LABELS.get(method, method)}" + (" (not comparable)" if off else "")
        figure.add_trace(
            go.Scatter(
                x=group[x],
                y=group[metric],
                mode="markers",
                name=name,
                # A run that leaves the study's protocol is hollow: drawn, but not a point of the curves.
                marker=dict(
                    symbol="star-open" if off else "star",
                    size=14,
                    color=METHOD_COLORS.get(method),
                    line=dict(width=2 if off else 1, color=METHOD_COLORS.get(method) if off else "#000"),
                ),
                legendgroup=method,
                customdata=group[["label", "not_comparable"]],
                hovertemplate="%{customdata[0]}<br>"
                + (f"{label} %{{y:.3g}}<br>not comparable: %{{customdata[1]}}" if off else f"{label} %{{y:.3g}}"),
            )
        )
    return figure


def _method_lines(figure: go.Figure, frame: pd.DataFrame, x: str, metric: str, label: str, own: bool = False) -> None:
    """A line per method of the mean over seeds, with error bars where there are several; `own`: the runs of a
    sweep queued from the page, dotted, beside the precomputed ones."""
    lines = aggregate(frame[frame["method"] != "zero-shot"], x, metric)
    for method, group in lines.groupby("method", sort=False):
        has_spread = bool((group["n"] > 1).any())
        name = METHOD_LABELS.get(method, method)
        figure.add_trace(
            go.Scatter(
                x=group[x],
                y=group["mean"],
                mode="lines+markers",
                name=f"your sweep: {name}" if own else name,
                line=dict(color=METHOD_COLORS.get(method), dash="dot" if own else None),
                legendgroup=method,
                marker=dict(symbol="diamond", size=9) if own else None,
                error_y=dict(type="data", array=group["std"], visible=True) if has_spread else None,
                customdata=group[["n"]],
                hovertemplate=f"%{{x}}<br>{label} %{{y:.3g}}<br>%{{customdata[0]}} run(s)",
            )
        )


def _held(frame: pd.DataFrame, held: tuple[str, str]) -> pd.DataFrame:
    """The rows at the held value (a budget, a data fraction), and the baselines it does not apply to."""
    column, value = held
    if column not in frame.columns:
        return frame
    return frame[frame["method"].isin(HELD_EXEMPT[column]) | (frame[column].astype(str) == value)]


def _baseline_line(figure: go.Figure, sweep: pd.DataFrame, metric: str) -> None:
    """Zero-shot has no data or parameters to vary: a dashed horizontal line at its mean."""
    zero = sweep[sweep["method"] == "zero-shot"][metric].dropna()
    if not zero.empty:
        figure.add_hline(
            y=float(zero.mean()),
            line=dict(dash="dash", color=METHOD_COLORS["zero-shot"]),
            annotation_text="zero-shot",
            annotation_position="top left",
        )
