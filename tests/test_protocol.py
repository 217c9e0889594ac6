"""The study protocol: validation steers (best checkpoint, early stopping, learning rates), test is scored once."""

from __future__ import annotations

import csv
import json
import math
import os
import time

import pytest
import torch
from safetensors.torch import load_file

from training.data.dataset import load_dataset, with_validation
from training.data.examples import Example, TaskDataset
from training.errors import UserError
from training.paths import REPO_ROOT
from training.run import runs
from training.run.config import RunConfig, val_every
from training.run.rates import LR_TABLE_ENV, lookup_lr, lr_table, model_key, resolve_lr, use_sweep_table
from training.run.trainer import train
from training.run.validation import Validator, main_metric_score
from training.study.tuning import (
    LR_COLUMNS,
    TuneTarget,
    best_of,
    lr_grid,
    tune,
    write_rows,
)
from training.sweeps.table import item_scores


def config(model, data, **overrides) -> RunConfig:
    values = dict(
        task="vqa",
        method="lora",
        budget="2k",
        base_model=str(model),
        dataset=str(data),
        batch_size=4,
        eval_limit=6,
        seed=0,
        val_every=2,
    )
    values.update(overrides)
    return RunConfig(**values)


def test_a_run_validates_keeps_its_best_step_and_scores_the_test_split_once(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = config(tiny_model_dir, tiny_vqa_dataset, max_steps=8, lr=5e-2, patience=10)
    assert train(cfg, run, install_signals=False) == 0
    curve = runs.read_jsonl(run / runs.VALIDATION)
    assert [row["step"] for row in curve] == [0, 2, 4, 6, 8]  # step 0: the starting weights, a candidate too
    assert all(row["metric"] == "accuracy" for row in curve)
    best = max(curve, key=lambda row: row["value"])
    summary = json.loads((run / runs.EVAL).read_text())["validation"]
    assert summary["best"] == best["value"] and summary["best_step"] == best["step"]
    assert summary["steps_run"] == 8 and summary["stop_reason"] == "max steps" and summary["validations"] == 5
    info = json.loads((run / runs.CONFIG).read_text())
    assert info["val_examples"] == 8 and info["val_every"] == 2 and info["lr_source"] == "given"
    # The test split is scored once, by the kept checkpoint.
    assert len(runs.read_jsonl(run / runs.PREDICTIONS)) == 6


def test_a_step_floor_lengthens_a_small_share_and_early_stopping_still_ends_it(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    from training.run.config import planned_steps

    short = config(tiny_model_dir, tiny_vqa_dataset, epochs=1, lr=5e-2)
    pairs = 16  # one epoch is 4 steps at batch 4
    assert planned_steps(short, pairs) == 4
    assert planned_steps(RunConfig(**{**vars(short), "min_steps": 10}), pairs) == 10
    assert planned_steps(RunConfig(**{**vars(short), "min_steps": 2}), pairs) == 4  # the epochs already go further
    assert planned_steps(RunConfig(**{**vars(short), "min_steps": 10, "max_steps": 3}), pairs) == 3
    assert "--min-steps" in RunConfig(**{**vars(short), "min_steps": 10}).to_cli_args()
    with pytest.raises(UserError, match="--min-steps must be at least 1"):
        RunConfig(min_steps=0).validate()

    run = tmp_path / "run"
    floor = config(
        tiny_model_dir, tiny_vqa_dataset, epochs=1, lr=5e-2, min_steps=20, patience=100, val_every=5, cap_limit=1
    )
    assert train(floor, run, install_signals=False) == 0  # one epoch of the tiny set is 8 steps
    summary = json.loads((run / runs.EVAL).read_text())["validation"]
    assert summary["steps_run"] == 20 and summary["stop_reason"] == "min steps" and summary["epochs_run"] > 2
    # The floor protects the run from patience too: a run that never improves still trains all its floor's steps
    # (and, never beating step 0, ends with its starting weights).
    lazy = config(tiny_model_dir, tiny_vqa_dataset, epochs=1, lr=1e-9, min_steps=12, patience=1, val_every=2)
    assert train(lazy, tmp_path / "lazy", install_signals=False) == 0
    summary = json.loads((tmp_path / "lazy" / runs.EVAL).read_text())["validation"]
    assert summary["stop_reason"] == "min steps" and summary["steps_run"] == 12 and summary["best_step"] == 0


def test_patience_stops_a_run_that_no_longer_improves(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    run = tmp_path / "run"
    # lr 1e-9: nothing moves, so every validation ties step 0's and patience runs out; step 0 stays the best.
    cfg = config(tiny_model_dir, tiny_vqa_dataset, epochs=20, lr=1e-9, patience=2, val_every=1)
    assert train(cfg, run, install_signals=False) == 0
    summary = json.loads((run / runs.EVAL).read_text())["validation"]
    assert summary["stop_reason"] == "patience"
    assert summary["best_step"] == 0 and summary["steps_run"] == 2 and summary["validations"] == 3


def scripted_scores(monkeypatch, values) -> list[dict]:
    """Validation returns `values` in turn (the last one from then on); returns the adapter's weights at each
    validation, in order."""
    snapshots, calls = [], iter(range(10_000))

    def fake_score(self, vl):
        snapshots.append({k: v.clone() for k, v in vl.adapters["run"].state_dict().items()})
        return values[min(next(calls), len(values) - 1)], 0.0

    monkeypatch.setattr(Validator, "score", fake_score)
    return snapshots


def test_step_zero_is_a_candidate_and_a_run_that_only_harms_keeps_its_starting_weights(
    tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch
):
    snapshots = scripted_scores(monkeypatch, [0.5, 0.1, 0.4, 0.2, 0.3])
    run = tmp_path / "run"
    cfg = config(tiny_model_dir, tiny_vqa_dataset, max_steps=8, lr=5e-2, patience=10)
    assert train(cfg, run, install_signals=False) == 0
    assert [row["step"] for row in runs.read_jsonl(run / runs.VALIDATION)] == [0, 2, 4, 6, 8]
    summary = json.loads((run / runs.EVAL).read_text())["validation"]
    assert summary["best_step"] == 0 and summary["best"] == 0.5 and summary["steps_run"] == 8
    saved = load_file(str(run / runs.WEIGHTS))
    assert all(torch.equal(saved[k], snapshots[0][k]) for k in saved)  # the starting weights, restored
    assert not all(torch.equal(saved[k], snapshots[-1][k]) for k in saved)  # training did move them
    assert "the run ends with its starting weights" in (run / runs.LOG).read_text()


def test_patience_ends_a_run_only_after_its_step_floor(tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch):
    scripted_scores(monkeypatch, [0.3, 0.2])  # never better than step 0: patience runs out at step 2
    run = tmp_path / "run"
    cfg = config(tiny_model_dir, tiny_vqa_dataset, epochs=10, lr=5e-2, min_steps=9, patience=1, val_every=2)
    assert train(cfg, run, install_signals=False) == 0  # the cap is 80 steps (10 epochs of 8)
    summary = json.loads((run / runs.EVAL).read_text())["validation"]
    # Validated at the floor itself (step 9), and stopped there, not at step 2 nor at the cap.
    assert summary["stop_reason"] == "patience" and summary["steps_run"] == 9 and summary["best_step"] == 0
    assert [row["step"] for row in runs.read_jsonl(run / runs.VALIDATION)][-2:] == [8, 9]


def test_a_run_still_improving_at_its_cap_goes_on_to_its_hard_limit(
    tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch
):
    scripted_scores(monkeypatch, [0.1 * k for k in range(1, 20)])  # better at every validation
    run = tmp_path / "run"
    cfg = config(tiny_model_dir, tiny_vqa_dataset, epochs=1, lr=5e-2, patience=1, val_every=2, batch_size=8)
    assert train(cfg, run, install_signals=False) == 0  # the cap: one epoch, 4 steps; the hard limit 2x: 8
    info, summary = json.loads((run / runs.CONFIG).read_text()), json.loads((run / runs.EVAL).read_text())
    summary = summary["validation"]
    assert info["total_steps"] == 4 and info["step_limit"] == 8
    assert summary["steps_run"] == 8 and summary["stop_reason"] == "hard limit" and summary["best_step"] == 8
    assert summary["planned_steps"] == 4 and summary["step_limit"] == 8 and summary["stopped_improving"] is True
    # The learning rate decays to zero at the hard limit, not at the cap: the steps past the cap train.
    rates = {row["step"]: row["lr"] for row in runs.read_jsonl(run / runs.METRICS) if "lr" in row}
    assert rates[5] > 0
    assert "going on, to at most 8 steps" in (run / runs.LOG).read_text()


def test_a_run_that_goes_on_past_its_cap_stops_on_patience_once_it_stops_improving(
    tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch
):
    scripted_scores(monkeypatch, [0.1, 0.2, 0.3, 0.3])  # steps 0, 2, 4 (the cap) improve; step 6 does not
    run = tmp_path / "run"
    cfg = config(
        tiny_model_dir, tiny_vqa_dataset, epochs=1, lr=5e-2, patience=1, val_every=2, cap_limit=3, batch_size=8
    )
    assert train(cfg, run, install_signals=False) == 0
    summary = json.loads((run / runs.EVAL).read_text())["validation"]
    assert summary["steps_run"] == 6 and summary["stop_reason"] == "patience" and summary["best_step"] == 4
    assert summary["step_limit"] == 12 and summary["stopped_improving"] is False
    # A hard cap (cap_limit 1) ends the same run at the cap, and says it was still improving.
    hard = tmp_path / "hard"
    scripted_scores(monkeypatch, [0.1, 0.2, 0.3, 0.3])
    assert train(RunConfig(**{**vars(cfg), "cap_limit": 1.0}), hard, install_signals=False) == 0
    summary = json.loads((hard / runs.EVAL).read_text())["validation"]
    assert summary["steps_run"] == 4 and summary["stop_reason"] == "epoch cap" and summary["stopped_improving"]


def test_the_learning_rate_decays_to_zero_at_the_hard_limit():
    from training.run.trainer import lr_at

    assert lr_at(99, 100, 1.0, 0.1) == pytest.approx(1 / 90)  # no limit given: zero at the cap, as before
    assert lr_at(100, 100, 1.0, 0.1, horizon=200) == pytest.approx(100 / 190)
    assert lr_at(200, 100, 1.0, 0.1, horizon=200) == 0.0
    assert lr_at(4, 100, 1.0, 0.1, horizon=200) == pytest.approx(0.5)  # warm-up over 10 % of the cap


def test_the_best_checkpoint_is_what_is_saved(tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch):
    """Scores that peak at the third validation (step 4): the saved weights are those of that step, not the last."""
    scores = iter([0.05, 0.1, 0.9, 0.2, 0.3])
    snapshots = []

    def fake_score(self, vl):
        snapshots.append({k: v.clone() for k, v in vl.adapters["run"].state_dict().items()})
        return next(scores), 0.0

    monkeypatch.setattr(Validator, "score", fake_score)
    run = tmp_path / "run"
    assert train(config(tiny_model_dir, tiny_vqa_dataset, max_steps=8, lr=5e-2), run, install_signals=False) == 0
    saved = load_file(str(run / runs.WEIGHTS))
    assert all(torch.equal(saved[k], snapshots[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], snapshots[4][k]) for k in saved)
    summary = json.loads((run / runs.EVAL).read_text())["validation"]
    assert summary["best_step"] == 4 and summary["best"] == 0.9


def test_no_test_mode_never_reads_the_test_split(tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch):
    import training.run.trainer as trainer

    def no_test(*args, **kwargs):
        raise AssertionError("the test split was scored")

    monkeypatch.setattr(trainer, "evaluate", no_test)
    run = tmp_path / "run"
    cfg = config(tiny_model_dir, tiny_vqa_dataset, max_steps=4, lr=5e-2, score_test=False)
    assert train(cfg, run, install_signals=False) == 0
    evaluation = json.loads((run / runs.EVAL).read_text())
    assert evaluation["split"] is None and evaluation["validation"]["best_step"] in (0, 2, 4)
    assert not (run / runs.PREDICTIONS).exists()


def test_patience_zero_trains_the_fixed_schedule_without_validation(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    run = tmp_path / "run"
    assert train(config(tiny_model_dir, tiny_vqa_dataset, max_steps=3, patience=0), run, install_signals=False) == 0
    assert not (run / runs.VALIDATION).exists()
    summary = json.loads((run / runs.EVAL).read_text())["validation"]
    assert summary["best"] is None and summary["steps_run"] == 3


def test_validation_interval_is_half_an_epoch_clamped():
    cfg = RunConfig(batch_size=32)
    assert val_every(cfg, 10_000) == 100  # 313 steps an epoch
    assert val_every(cfg, 4_176) == 66
    assert val_every(cfg, 100) == 10  # 4 steps an epoch: every 2.5 epochs, not every 2 steps
    assert val_every(RunConfig(val_every=7), 10_000) == 7


def test_cli_arguments_round_trip_the_protocol_options():
    from training.cli import build_parser
    from training.run.config import config_from_args

    cfg = RunConfig(
        method="prefix",
        patience=5,
        val_every=20,
        val_limit=50,
        score_test=False,
        method_options={"reparam": True},
        cap_limit=1.5,
    )
    args = build_parser().parse_args(["train", *cfg.to_cli_args(), "--out", "x"])
    again = config_from_args(args)
    assert (again.patience, again.val_every, again.val_limit, again.score_test) == (5, 20, 50, False)
    assert again.cap_limit == 1.5
    assert again.method_options == {"reparam": True}
    with pytest.raises(UserError, match="KEY=VALUE"):
        config_from_args(build_parser().parse_args(["train", "--method-option", "reparam", "--out", "x"]))


def example(image_id: str) -> Example:
    return Example(image=None, image_id=image_id, captions=["a red square"])


def test_a_dataset_whose_test_split_is_its_validation_split_gets_a_held_out_one():
    train_split = [example(f"img{i}") for i in range(100) for _ in range(2)]
    shared = [example(f"val{i}") for i in range(10)]
    dataset = TaskDataset("d", "caption", "d", {"train": train_split, "validation": shared, "test": shared})
    carved = with_validation(dataset)
    validation, rest = carved.splits["validation"], carved.splits["train"]
    assert carved.held_out_validation and len(validation) == 10  # 5 % of 100 images, both rows of each
    assert not {e.image_id for e in validation} & {e.image_id for e in rest}
    assert len(rest) + len(validation) == len(train_split)
    assert carved.splits["test"] is shared
    # The same images whatever the order of the training split.
    reordered = TaskDataset("d", "caption", "d", {"train": train_split[::-1], "validation": [], "test": shared})
    assert {e.image_id for e in with_validation(reordered).splits["validation"]} == {e.image_id for e in validation}


def test_a_dataset_with_its_own_validation_split_is_kept(tiny_vqa_dataset):
    dataset = load_dataset(str(tiny_vqa_dataset), "vqa")
    assert not dataset.held_out_validation and len(dataset.split("validation")) == 8


def test_main_metric_matches_the_full_scorers(tiny_caption_dataset):
    from training.run.evaluation import score

    examples = load_dataset(str(tiny_caption_dataset), "caption").split("test")
    predictions = [e.captions[0] if i % 2 else "a blue circle" for i, e in enumerate(examples)]
    metrics, records = score("caption", examples, predictions)
    assert main_metric_score("caption", examples, predictions) == pytest.approx(metrics["CIDEr-D"], abs=1e-9)
    assert sum(r["CIDEr-D"] for r in records) / len(records) == pytest.approx(metrics["CIDEr-D"], abs=1e-9)


# -- learning rates --------------------------------------------------------------------------------------


def test_lr_grid_is_half_decades_around_the_centre():
    assert lr_grid(1e-3, 1, 1) == [0.000316, 0.001, 0.00316]
    assert lr_grid(1e-2, 2, 0) == [0.001, 0.00316, 0.01]


def test_best_of_reports_whether_the_optimum_is_bracketed():
    assert best_of({1e-3: [0.1, 0.2], 3e-3: [0.5, 0.4], 1e-2: [0.3, 0.3]}) == (3e-3, True)
    assert best_of({1e-3: [0.1], 3e-3: [0.2], 1e-2: [0.3]}) == (1e-2, False)
    # A tie with the rate above is not a bracket: the plateau may go on upwards.
    assert best_of({1e-3: [0.1], 3e-3: [0.3], 1e-2: [0.3]}) == (3e-3, False)
    assert best_of({1e-3: [0.1], 3e-3: [0.3], 1e-2: [0.3], 3e-2: [0.2]}) == (3e-3, True)
    # Flat (no rate beats the starting weights, every run kept step 0): its middle rate, done; widening finds the same.
    assert best_of({1e-3: [0.0, 0.0], 3e-3: [0.0, 0.0], 1e-2: [0.0, 0.0]}) == (3e-3, True)


def test_tuning_widens_the_grid_until_the_best_is_bracketed_and_resumes(tmp_path):
    """Plain prefix tuning peaks at lr 0.1, ten times its default: the grid widens upwards until bracketed."""
    calls = []

    def fake_train(config: RunConfig, run_dir) -> dict:
        calls.append((config.lr, config.seed, json.dumps(config.method_options, sort_keys=True)))
        import math

        value = -abs(math.log10(config.lr) - math.log10(3.16e-3 if config.method_options.get("reparam") else 0.1))
        value += 0.01 * config.seed - (0.05 if config.method_options.get("reparam") else 0.0)
        return {"best": value, "best_step": 10, "steps_run": 20, "epochs_run": 1.0, "stop_reason": "patience"}

    base = RunConfig(task="vqa", budget="18k", towers="text")
    targets = [
        TuneTarget("vqa", "prefix", "text", {"reparam": False}),
        TuneTarget("vqa", "prefix", "text", {"reparam": True}),
    ]
    rows = tune(targets, base, [0, 1], tmp_path, tmp_path / "work", train_fn=fake_train, echo=lambda s: None)
    plain = sorted({lr for lr, _, opts in calls if '"reparam": false' in opts})
    assert plain[-1] == pytest.approx(0.316) and plain[0] == pytest.approx(3.16e-3)  # widened twice upwards
    assert len(rows) == 1
    row = rows[0]
    assert row["method"] == "prefix" and row["lr"] == pytest.approx(0.1) and row["bracketed"] and row["complete"]
    assert json.loads(row["options"]) == {"reparam": False}  # its best beats the reparametrised form's best
    assert (tmp_path / "lr.csv").is_file() and (tmp_path / "lr-runs.csv").is_file()
    # Run again: everything is in lr-runs.csv, so nothing trains.
    calls.clear()
    tune(targets, base, [0, 1], tmp_path, tmp_path / "work", train_fn=fake_train, echo=lambda s: None)
    assert calls == []


def tune_one_vqa_target(method: str, train_fn, folder) -> list[dict]:
    """`tune` on one VQA method on the text decoder at 18k, seeds 0 and 1, with the results in `folder`."""
    target = TuneTarget("vqa", method, "text", {})
    base = RunConfig(task="vqa", budget="18k", towers="text")
    return tune([target], base, [0, 1], folder, folder / "work", train_fn=train_fn, echo=lambda s: None)


def test_two_tune_processes_on_one_target_never_train_the_same_run_twice(tmp_path, monkeypatch):
    """Both cores on one target: each run is claimed by one process; the other trains the rest or waits."""
    import threading

    from training.study import tuning

    monkeypatch.setattr(tuning, "CLAIM_POLL_S", 0.01)
    trained, lock = [], threading.Lock()

    def slow_train(config: RunConfig, run_dir) -> dict:
        with lock:
            trained.append((config.lr, config.seed))
        time.sleep(0.05)
        value = -abs(math.log10(config.lr) - math.log10(6e-2)) + 0.01 * config.seed
        return {"best": value, "best_step": 1, "steps_run": 2, "epochs_run": 1.0, "stop_reason": "patience"}

    def one_process(results: list) -> None:
        results.append(tune_one_vqa_target("lora", slow_train, tmp_path))

    outcomes: list = []
    threads = [threading.Thread(target=one_process, args=(outcomes,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 2 and outcomes[0] == outcomes[1]
    assert sorted(trained) == sorted(set(trained)), "a run was trained by both processes"
    assert len(trained) == 10  # 1.9e-3 to 0.19 (the default's grid widened twice upwards), two seeds each
    assert outcomes[0][0]["lr"] == pytest.approx(6e-2) and outcomes[0][0]["complete"]
    runs = list(csv.DictReader(open(tmp_path / "lr-runs.csv")))
    assert len(runs) == 10 and len({r["run"] for r in runs}) == 10


def test_tuning_stops_widening_at_the_learning_rate_ceiling(tmp_path):
    """A method still improving at lr 1 (IA3's rescaling vectors can) is reported as not bracketed, and no run
    is asked for at a learning rate RunConfig refuses (above 1)."""
    tried = []

    def rising(config: RunConfig, run_dir) -> dict:
        tried.append(RunConfig.from_dict(config.to_dict()).validate().lr)
        return {"best": config.lr, "best_step": 1, "steps_run": 2, "epochs_run": 1.0, "stop_reason": "patience"}

    rows = tune_one_vqa_target("ia3", rising, tmp_path)
    assert max(tried) == pytest.approx(1.0)
    assert rows[0]["lr"] == pytest.approx(1.0) and not rows[0]["bracketed"]
    assert rows[0]["complete"]  # at the ceiling the grid cannot widen: the tuning is done


def test_tuning_needs_two_seeds(tmp_path):
    with pytest.raises(UserError, match="two seeds"):
        tune([TuneTarget("vqa", "lora", "text", {})], RunConfig(), [0], tmp_path, tmp_path, train_fn=None)


def test_a_run_without_lr_takes_the_tuned_one(tmp_path):
    table = tmp_path / "lr.csv"
    write_rows(
        table,
        [
            {"task": "vqa", "method": "prefix", "towers": "text", "options": '{"reparam": true}', "lr": 0.003},
            {"task": "vqa", "method": "full", "towers": "both", "options": "{}", "lr": 0.0002},
        ],
        LR_COLUMNS,
    )
    lr, options, source = resolve_lr(RunConfig(task="vqa", method="prefix", towers="text"), 0.01, table)
    assert (lr, options) == (0.003, {"reparam": True}) and source.endswith("lr.csv")
    # Full fine-tuning's row is found whatever towers the run names.
    assert resolve_lr(RunConfig(task="vqa", method="full", towers="text"), 1e-4, table)[0] == 0.0002
    assert resolve_lr(RunConfig(task="caption", method="prefix", towers="text"), 0.01, table) == (
        0.01,
        {},
        "method default",
    )
    # Another tower setting than the tuned one: the tuned lr, and the source says so.
    lr, _, source = resolve_lr(RunConfig(task="vqa", method="prefix", towers="both"), 0.01, table)
    assert lr == 0.003 and "tuned with the method on the text decoder only" in source
    assert resolve_lr(RunConfig(task="vqa", method="prefix", towers="text", lr=0.5), 0.01, table)[2] == "given"
    # Asking for other options than the tuned ones: the tuned lr does not apply.
    other = RunConfig(task="vqa", method="prefix", towers="text", method_options={"reparam": False})
    assert lookup_lr(other, table) is None
    # The rates were found on the embedded default: a run on another base model takes its method's default,
    # unless the table has that model's own row.
    blip = RunConfig(task="vqa", method="prefix", towers="text", base_model="Salesforce/blip-vqa-base")
    assert resolve_lr(blip, 0.01, table) == (0.01, {}, "method default")
    write_rows(
        table,
        [
            {
                "task": "vqa",
                "method": "prefix",
                "towers": "text",
                "options": "{}",
                "lr": 0.02,
                "base_model": blip.base_model,
            }
        ],
        LR_COLUMNS,
    )
    assert resolve_lr(blip, 0.01, table)[0] == 0.02
    assert resolve_lr(RunConfig(task="vqa", method="prefix", towers="text"), 0.01, table)[2] == "method default"


def test_tuning_another_base_model_keeps_its_runs_and_rates_apart(tmp_path):
    def fake_train(config: RunConfig, run_dir) -> dict:
        score = 50 - abs(math.log10(config.lr) - (-2 if config.base_model else -3))  # each model its own best
        return {"best": score, "best_step": 10, "steps_run": 20, "epochs_run": 1.0, "stop_reason": "patience"}

    target = TuneTarget("vqa", "lora", "text", {})
    for base_model in (None, "some/blip"):
        tune(
            [target],
            RunConfig(task="vqa", method="lora", base_model=base_model),
            [0, 1],
            tmp_path,
            tmp_path,
            train_fn=fake_train,
            echo=lambda _: None,
        )
    rows = {r["base_model"]: r for r in csv.DictReader(open(tmp_path / "lr.csv"))}
    assert set(rows) == {"", "some/blip"} and float(rows["some/blip"]["lr"]) != float(rows[""]["lr"])
    runs_rows = list(csv.DictReader(open(tmp_path / "lr-runs.csv")))
    assert len({r["run"] for r in runs_rows}) == len(runs_rows)  # no run name shared between the two models


def test_a_model_folder_inside_the_checkout_is_named_from_its_root_so_a_worktree_finds_its_rates(tmp_path):
    """A sweep file's model folder reaches runs as an absolute path; lr.csv names it from the checkout's root, so
    the rates tuned in one checkout (a frozen worktree) serve runs in another."""
    here = str(REPO_ROOT / "assets" / "scene-blip-v2")
    assert model_key(here) == "assets/scene-blip-v2"
    assert model_key(None) == "" and model_key("Salesforce/blip-vqa-base") == "Salesforce/blip-vqa-base"
    assert model_key(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")
    table = tmp_path / "lr.csv"
    row = {"task": "vqa", "method": "lora", "towers": "text", "options": "{}", "lr": 0.004}
    write_rows(table, [{**row, "base_model": "assets/scene-blip-v2"}], LR_COLUMNS)
    assert resolve_lr(RunConfig(task="vqa", method="lora", towers="text", base_model=here), 0.01, table)[0] == 0.004
    # The embedded default (no base model) does not take another model's rate.
    assert resolve_lr(RunConfig(task="vqa", method="lora", towers="text"), 0.01, table)[2] == "method default"

    def fake_train(config: RunConfig, run_dir) -> dict:
        return {"best": 50 - abs(math.log10(config.lr) + 2), "best_step": 10, "steps_run": 20, "epochs_run": 1.0,
                "stop_reason": "patience"}  # fmt: skip

    tune([TuneTarget("vqa", "lora", "text", {})], RunConfig(task="vqa", method="lora", base_model=here), [0, 1],
         tmp_path, tmp_path, train_fn=fake_train, echo=lambda _: None)  # fmt: skip
    assert {r["base_model"] for r in csv.DictReader(open(tmp_path / "lr.csv"))} == {"assets/scene-blip-v2"}


def test_a_sweep_reads_the_rates_its_own_tuning_wrote(tmp_path, monkeypatch):
    monkeypatch.setenv(LR_TABLE_ENV, "")  # recorded, so that the value use_sweep_table sets is undone after the test
    monkeypatch.delenv(LR_TABLE_ENV)
    use_sweep_table(tmp_path / "edition-2")
    assert lr_table() == (tmp_path / "edition-2" / "lr.csv").resolve()
    use_sweep_table(tmp_path / "other")  # a table already named (by the tests, or by hand) stays
    assert lr_table() == (tmp_path / "edition-2" / "lr.csv").resolve()


def test_ship_adapters_reads_its_grids_own_rates_and_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    """ship-adapters --sweep paper-v2 must take results/edition-2/lr.csv, as that grid's runs did."""
    import training.study.shipped as shipped

    monkeypatch.setenv(LR_TABLE_ENV, "")
    monkeypatch.delenv(LR_TABLE_ENV)
    seen = {}

    def fake_ship(spec, *args):
        seen["table"] = lr_table()
        return tmp_path / "MANIFEST.json"

    monkeypatch.setattr(shipped, "_ship", fake_ship)
    shipped.ship_adapters("paper-v2", tmp_path / "out", tmp_path / "work")
    assert seen["table"] == (REPO_ROOT / "results" / "edition-2" / "lr.csv").resolve()
    assert LR_TABLE_ENV not in os.environ  # the table is the grid's for the call only


def test_item_scores_come_from_the_predictions(tmp_path):
    from training.sweeps.grid import GridPoint

    run = tmp_path / "run"
    run.mkdir()
    for acc, qtype in [(1.0, "color"), (0.3, "shape")]:
        runs.append_jsonl(run / runs.PREDICTIONS, {"accuracy": acc, "question_type": qtype})
    line = item_scores(GridPoint("vqa", "lora", None, 1.0, 0), run)
    assert line["scores"] == [1.0, 0.3] and line["question_types"] == ["color", "shape"]
    assert line["metric"] == "accuracy" and line["run"] == "vqa__lora__f1__s0"


def test_lr_table_columns_are_readable_as_csv(tmp_path):
    write_rows(tmp_path / "lr.csv", [{"task": "vqa", "lr": 0.1}], LR_COLUMNS)
    with open(tmp_path / "lr.csv") as handle:
        assert next(csv.reader(handle)) == LR_COLUMNS


def test_report_to_tensorboard_logs_loss_validation_and_test_scores(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = config(tiny_model_dir, tiny_vqa_dataset, max_steps=4, lr=5e-2, report_to="tensorboard")
    assert train(cfg, run, install_signals=False) == 0
    assert "--report-to tensorboard" in json.loads((run / runs.CONFIG).read_text())["command"]
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "eval/accuracy", "test/accuracy"} <= tags
    assert [e.step for e in events.Scalars("eval/accuracy")] == [0, 2, 4]
    losses = [row["loss"] for row in runs.read_jsonl(run / runs.METRICS)]
    assert [round(e.value, 4) for e in events.Scalars("train/loss")] == [round(v, 4) for v in losses]


def test_a_curve_is_finished_only_with_every_seed_and_a_bracketed_best_or_one_at_the_ceiling():
    from training.study.tuning import finished_curve

    done = {0.001: [1.0, 1.2], 0.00316: [2.0, 2.2], 0.01: [1.5, 1.1]}
    assert finished_curve(done, 0.00316, True)
    assert not finished_curve({**done, 0.01: [1.5]}, 0.00316, True)  # a seed of the last point to go
    assert not finished_curve({0.001: [1.0], 0.00316: [2.0], 0.01: [1.5]}, 0.00316, True)  # one seed only
    assert not finished_curve(done, 0.01, False)  # best at the high edge: the tuner widens next
    assert finished_curve({0.316: [1.0, 1.0], 1.0: [2.0, 2.0]}, 1.0, False)  # lr 1 is the ceiling
    assert not finished_curve({0.1: [1.0, 1.0], 0.316: [2.0, 2.0]}, 0.316, False)  # lr 1 is still to try


def test_a_tuning_stopped_by_its_time_limit_writes_lr_csv_that_no_run_takes_an_unfinished_rate_from(
    tmp_path, monkeypatch
):
    import training.study.tuning as tuning_module

    clock = [1000.0]
    monkeypatch.setattr(tuning_module.time, "time", lambda: clock[0])

    def fake_train(config: RunConfig, run_dir) -> dict:
        clock[0] += 40  # each run takes 40 s; the limit is 60 s, so the third run is not started
        return {"best": config.lr, "best_step": 1, "steps_run": 2, "epochs_run": 1.0, "stop_reason": "patience"}

    base = RunConfig(task="vqa", budget="18k", towers="text")
    work = tmp_path / "work"
    tune([TuneTarget("vqa", "lora", "text", {})], base, [0, 1], tmp_path, work, fake_train, lambda s: None, 1060.0)
    assert len(list(csv.DictReader(open(tmp_path / "lr-runs.csv")))) == 2
    [row] = list(csv.DictReader(open(tmp_path / "lr.csv")))
    assert (row["method"], row["complete"]) == ("lora", "False")
    run = RunConfig(task="vqa", method="lora", towers="text")
    assert lookup_lr(run, tmp_path / "lr.csv") is None  # the method's default, not a rate from half a tuning


def test_a_run_takes_the_rate_of_its_own_budget_else_the_nearest_and_says_so(tmp_path):
    table = tmp_path / "lr.csv"
    rows = [
        {"task": "vqa", "method": "lora", "towers": "text", "options": "{}", "lr": lr, "budget": budget}
        for lr, budget in [(0.006, "18000"), (0.0019, "57000"), (0.019, "5700")]
    ]
    rows.append({"task": "vqa", "method": "ia3", "towers": "text", "options": "{}", "lr": 0.1, "budget": "18000"})
    write_rows(table, rows, LR_COLUMNS)
    lora = RunConfig(task="vqa", method="lora", towers="text")
    # 57k, 57000 and 57,000 are one budget: that row, and the source names no other budget.
    for budget in ("57k", "57000", "57,000"):
        lr, _, source = resolve_lr(RunConfig(**{**vars(lora), "budget": budget}), 6e-3, table)
        assert lr == 0.0019 and source.endswith("lr.csv"), budget
    # A percentage resolves against the base model's size: 1 % of 1.8M is 18000.
    assert resolve_lr(RunConfig(**{**vars(lora), "budget": "1%"}), 6e-3, table, total_params=1_800_000)[0] == 0.006
    # No row at its budget: the nearest budget's rate (in decades), and the source says so.
    lr, _, source = resolve_lr(RunConfig(**{**vars(lora), "budget": "180k"}), 6e-3, table)
    assert lr == 0.0019 and "tuned at budget 57000, none at 180k" in source
    assert resolve_lr(RunConfig(**{**vars(lora), "budget": "2k"}), 6e-3, table)[0] == 0.019
    # A method without a knob has one row whatever the budget.
    assert resolve_lr(RunConfig(task="vqa", method="ia3", towers="text", budget="570k"), 0.1, table)[2].endswith(
        "lr.csv"
    )


def test_the_paper_grid_needs_a_row_at_every_budget_it_trains(tmp_path):
    from training.study.tuning import tuning_gaps

    table = tmp_path / "lr.csv"
    write_rows(
        table,
        [
            {"task": "vqa", "method": "lora", "towers": "text", "lr": 0.006, "budget": "18000", "complete": True},
            {"task": "vqa", "method": "lora", "towers": "text", "lr": 0.002, "budget": "57000", "complete": False},
            {"task": "vqa", "method": "full", "towers": "both", "lr": 1e-4, "budget": "18000", "complete": True},
        ],
        LR_COLUMNS,
    )
    configs = [RunConfig(task="vqa", method="lora", towers="text", budget=b) for b in ("18k", "57k", "180k", "570k")]
    configs.append(RunConfig(task="vqa", method="full", towers="text", budget="570k"))
    missing, unfinished = tuning_gaps(configs, table)
    assert missing == ["vqa lora (text) at 180k", "vqa lora (text) at 570k"]
    assert unfinished == ["vqa lora (text) at 57k"]


def test_tuning_covers_each_budget_and_centres_a_budget_on_its_tuned_neighbour(tmp_path):
    """LoRA's best rate falls with its budget: 18k is tuned from the default's grid (widened once upwards, to
    0.06), 57k from the three points around 18k's rate, where its own best is bracketed at once; each budget
    gets its own lr.csv row."""
    calls = []

    def fake_train(config: RunConfig, run_dir) -> dict:
        calls.append((config.budget, config.lr))
        peak = {"18k": 1.9e-2, "57k": 1.5e-2}[config.budget]
        value = -abs(math.log10(config.lr) - math.log10(peak)) + 0.01 * config.seed
        return {"best": value, "best_step": 10, "steps_run": 20, "epochs_run": 1.0, "stop_reason": "patience"}

    targets = [TuneTarget("vqa", "lora", "text", {}, budget) for budget in ("18k", "57k")]
    base = RunConfig(task="vqa", budget="18k", towers="text")
    rows = tune(targets, base, [0, 1], tmp_path, tmp_path / "work", train_fn=fake_train, echo=lambda s: None)
    assert sorted({lr for b, lr in calls if b == "18k"}) == [0.0019, 0.006, 0.019, 0.06]  # 0.06: widened once
    assert sorted({lr for b, lr in calls if b == "57k"}) == [0.00601, 0.019, 0.0601]  # centred on 18k's 0.019
    assert [(r["budget"], r["lr"], r["complete"]) for r in rows] == [("18000", 0.019, True), ("57000", 0.019, True)]
    run_names = [r["run"] for r in csv.DictReader(open(tmp_path / "lr-runs.csv"))]
    assert len(set(run_names)) == len(run_names) == len(calls)


def test_tune_run_again_trains_nothing_more_and_a_budget_never_moves_to_a_later_neighbour(tmp_path):
    """The same command in the next session: every target's grid is the one it had (18k is not re-centred on 5.7k's
    or 57k's rate, tuned after it), so nothing is trained again and no near-duplicate rate appears."""
    calls = []

    def fake_train(config: RunConfig, run_dir) -> dict:
        calls.append((config.budget, config.lr))
        peak = {"18k": 1.9e-2, "5.7k": 6e-2, "57k": 6e-3}[config.budget]
        value = -abs(math.log10(config.lr) - math.log10(peak)) + 0.01 * config.seed
        return {"best": value, "best_step": 10, "steps_run": 20, "epochs_run": 1.0, "stop_reason": "patience"}

    targets = [TuneTarget("vqa", "lora", "text", {}, budget) for budget in ("18k", "5.7k", "57k")]
    base = RunConfig(task="vqa", budget="18k", towers="text")
    first = tune(targets, base, [0, 1], tmp_path, tmp_path / "work", train_fn=fake_train, echo=lambda s: None)
    trained = len(calls)
    again = tune(targets, base, [0, 1], tmp_path, tmp_path / "work", train_fn=fake_train, echo=lambda s: None)
    assert len(calls) == trained, calls[trained:]
    assert again == first


def test_a_neighbours_best_at_the_ceiling_gives_a_grid_under_it_not_a_failure(tmp_path):
    """Prompt tuning peaking at lr 1 at 18k: 5.7k is tuned at 0.316 and 1 (3.16 is over RunConfig's limit) and its
    best at the ceiling finishes it; the targets after it are still tuned."""
    calls = []

    def fake_train(config: RunConfig, run_dir) -> dict:
        calls.append((config.method, config.budget, config.lr))
        value = config.lr if config.method == "prompt" else -abs(math.log10(config.lr) - math.log10(1.9e-2))
        summary = {"best_step": 10, "steps_run": 20, "epochs_run": 1.0, "stop_reason": "patience"}
        return {"best": value + 0.001 * config.seed, **summary}

    targets = [TuneTarget("vqa", "prompt", "text", {}, b) for b in ("18k", "5.7k")]
    targets.append(TuneTarget("vqa", "lora", "text", {}, "18k"))
    base = RunConfig(task="vqa", budget="18k", towers="text")
    rows = tune(targets, base, [0, 1], tmp_path, tmp_path / "work", train_fn=fake_train, echo=lambda s: None)
    assert sorted({lr for m, b, lr in calls if (m, b) == ("prompt", "5.7k")}) == [0.316, 1.0]
    assert sorted((r["method"], r["budget"], r["lr"], r["complete"]) for r in rows) == [
        ("lora", "18000", 0.019, True),
        ("prompt", "18000", 1.0, True),
        ("prompt", "5700", 1.0, True),
    ]


def test_prompt_tuning_is_tuned_up_to_the_rates_its_literature_uses(tmp_path):
    """Lester et al. train prompt vectors at 0.3: the first grid reaches 0.316 and 1 (RunConfig takes lr 1)."""
    from training.study.tuning import first_grid, tuning_plan

    target = TuneTarget("vqa", "prompt", "text", {}, "18k")
    base = RunConfig(task="vqa", budget="18k", towers="text")
    centre, below, above, _ = first_grid(target, base, [])
    assert lr_grid(centre, below, above) == [0.0316, 0.1, 0.316, 1.0]
    assert RunConfig(lr=1.0).validate().lr == 1.0
    with pytest.raises(UserError, match="out of range"):
        RunConfig(lr=1.5).validate()
    plan = tuning_plan([target, TuneTarget("vqa", "prompt", "text", {}, "5.7k")], base, [0, 1], [])
    assert plan[0].runs_to_go == 8 and "0.0316, 0.1, 0.316, 1" in plan[0].text
    assert plan[1].runs_to_go == 6 and "around the rate tuned at budget 18k, once it is tuned" in plan[1].text


def test_the_tuning_estimate_follows_the_finished_runs_own_times():
    """The dry run's time: a method's finished tuning runs give its own figure; a method of the same task without
    any gets the sweep file's estimate_s scaled as the task's finished runs compare with theirs."""
    from types import SimpleNamespace

    from training.study.tuning import TuningClock

    spec = SimpleNamespace(estimate_s={"caption": {"full": 600, "lora": 200}, "vqa": {"lora": 100}})
    empty = TuningClock.from_rows(spec, [])
    assert empty.seconds("caption", "lora") == 200 and "estimate_s" in empty.source()
    rows = [
        {"task": "caption", "method": "full", "train_s": "300"},
        {"task": "caption", "method": "full", "train_s": "400"},  # mean 350: 0.583 of the file's 600
        {"task": "caption", "method": "full", "train_s": ""},  # a run still going has no time yet
    ]
    clock = TuningClock.from_rows(spec, rows)
    assert clock.seconds("caption", "full") == 350
    assert clock.seconds("caption", "lora") == pytest.approx(200 * 350 / 600)
    assert clock.seconds("vqa", "lora") == 100  # another task's runs say nothing of this one
    assert "2 finished tuning runs" in clock.source()
