"""A run from the Train tab's defaults follows the study's protocol: at a grid point it lands on the grid's curve."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from app.services import Services
from app.settings import Settings
from app.tabs import train
from training.paths import RESULTS_DIR
from training.run import runs
from training.run.config import RunConfig
from training.run.trainer import train as run_training
from training.sweeps.protocol import departures, study_settings


@pytest.fixture
def embedded(tmp_path) -> Services:
    """The app as a person starts it: the embedded model and datasets, the shipped results."""
    services = Services(Settings(home=tmp_path / "home"))
    yield services
    services.close()


def test_the_train_forms_defaults_are_the_studys_protocol(embedded: Services):
    config = embedded.run_config(task="vqa", method="lora", budget=train.DEFAULT_BUDGET, data_fraction=0.1)
    study = study_settings("vqa")
    assert (
        (config.towers, config.epochs, config.min_steps, config.patience, config.batch_size)
        == (
            study["towers"],
            study["epochs"],
            study["min_steps"],
            study["patience"],
            study["batch_size"],
        )
        == ("text", 10, 300, 3, 32)
    )
    assert config.lr is None and departures(config) == []  # the rate tuned on validation (results/lr.csv)
    form = dict(task="vqa", method="lora", budget="18k", data_fraction=0.1, max_steps=0, lr=0, base_model="embedded")
    assert "✅ **The study's settings**" in train.protocol_text(embedded, {**form, "dataset": "embedded"})
    left = train.protocol_text(embedded, {**form, "epochs": 5, "towers": "both", "dataset": "embedded"})
    assert left.startswith(
        "⚠️ **Leaves the study's protocol:** towers both (study: text); an epoch cap of 5 (study: 10)"
    )
    assert departures(dataclasses.replace(config, dataset="/data/mine")) == [
        "another dataset (the grid used the embedded scenes)"
    ]


def test_the_expected_time_of_a_protocol_run_comes_from_the_grids_runs_like_it(embedded: Services):
    grid = pd.read_csv(RESULTS_DIR / "runs.csv")
    like = grid[(grid.task == "vqa") & (grid.method == "lora") & (grid.budget == "18k") & (grid.data_fraction == 0.1)]
    config = embedded.run_config(task="vqa", method="lora", budget="18k", data_fraction=0.1)
    seconds, low, high, n = embedded.reference_time(config)
    # Each grid run's pace stretched to the 300-step floor that early stopping may not undercut.
    paces = like.wall_s - like.train_s + like.train_s / like.steps_run * like.steps_run.clip(lower=300)
    assert n == len(like) == 3 and (low, high) == pytest.approx((paces.min(), paces.max()))
    assert seconds == pytest.approx(paces.median())
    text = train.describe_size(
        embedded, dict(task="vqa", method="lora", data_fraction=0.1, max_steps=0, dataset="embedded", budget="18k")
    )
    assert "from 3 runs like it in the reference grid" in text
    assert embedded.reference_time(dataclasses.replace(config, towers="both")) is None  # off the protocol


@pytest.mark.slow
@pytest.mark.long  # a whole protocol run: the 300-step floor at batch 32
def test_a_train_tab_default_run_at_a_grid_point_lands_within_the_grids_seed_range(embedded: Services, tmp_path):
    """VQA, LoRA at the grid's data-axis budget and 5 % of the data: the grid's three seeds, against one run made
    exactly as the Train tab would queue it (several minutes on 2 CPU cores)."""
    config = embedded.run_config(task="vqa", method="lora", budget=train.DEFAULT_BUDGET, data_fraction=0.05)
    config, _, _, _ = embedded.prepare(config)
    assert config == RunConfig.from_dict(config.to_dict())  # the job queue stores it as plain data
    assert run_training(config, tmp_path / "run", install_signals=False) == 0
    accuracy = runs.read_json(tmp_path / "run" / runs.EVAL)["metrics"]["accuracy"]
    grid = pd.read_csv(RESULTS_DIR / "runs.csv")
    point = grid[(grid.task == "vqa") & (grid.method == "lora") & (grid.budget == "18k") & (grid.data_fraction == 0.05)]
    low, high = point.accuracy.min(), point.accuracy.max()
    assert len(point) == 3
    # Within the grid's seed range, widened by that range once each way (one seed against three).
    spread = high - low
    assert low - spread <= accuracy <= high + spread, (accuracy, low, high)


def test_a_sweep_from_the_page_follows_the_protocol_unless_its_settings_leave_it(embedded: Services):
    from app.tabs import sweep

    form = dict(
        name="grid",
        task="vqa",
        methods=["lora", "parallel-adapter"],
        budgets="18k",
        fractions="0.05",
        seeds="0",
        max_steps=0,
        batch_size=32,
        eval_limit=0,
    )
    text = sweep.summary(embedded, {**form, "towers": "text"})
    assert "Every run follows the study's protocol" in text and "from the reference grid's runs like them" in text
    plan = sweep.sweeps.draft(embedded, sweep.sweep_form(embedded, **form, towers="text"))
    assert {(c.towers, c.epochs, c.min_steps, c.patience) for c in plan.configs} == {("text", 10, 300, 3)}
    left = sweep.summary(embedded, {**form, "towers": "both"})
    assert "⚠️ **They leave the study's protocol:** towers both (study: text)" in left
