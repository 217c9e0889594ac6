# ruff: noqa: F811 (the fixtures imported from tests.test_app are arguments of the tests)
"""Runs compared: ticked runs' curves overlaid from their metrics.jsonl and validation.jsonl, settings side by side
with the differing rows marked, scores in one table. Handlers called directly (no server); the run files are
written with the trainer's own RunDirectory."""

from __future__ import annotations

import re

from app.services import Services
from app.tabs import runs_compared
from tests.test_app import make_services, services  # noqa: F401 (fixtures)
from tests.test_runs_tab import ended
from training.run.runs import RunDirectory, StepRecord, ValidationRecord


def logged(services: Services, job_id: str, losses: list[float], scores: list[float], accuracy: float) -> None:
    """What a finished run's directory holds: its steps, validations, config and test scores."""
    run = RunDirectory(services.run(job_id).run_dir)
    for step, loss in enumerate(losses, start=1):
        run.write_step(StepRecord(step, len(losses), step / 10, loss, 1e-3, 50.0, step * 0.5, None))
    for step, score in zip(range(2, 2 * len(scores) + 1, 2), scores, strict=True):
        run.write_validation(ValidationRecord(step, step / 10, "accuracy", score, max(scores), 2, 0.1, step * 0.5))
    run.write_config({"trainable_params": 20480, "train_examples": 40, "lr": 0.006})
    run.write_eval({"metrics": {"accuracy": accuracy, "num_examples": 12}, "validation": {"best_step": 2}})


def test_three_ticked_runs_give_three_curves_each_marked_differences_and_one_score_table(services: Services):
    ids = [
        ended(services, "finished", task="vqa", method=method, seed=seed)
        for method, seed in (("lora", 0), ("lora", 1), ("serial-adapter", 0))
    ]
    for n, job_id in enumerate(ids):
        logged(services, job_id, [3.0 - n / 10, 2.0, 1.5 - n / 10], [10.0 + n, 20.0 + n], accuracy=40.0 + n)

    compared = runs_compared.compare_runs(services, ids)
    note, figure, settings, scores = (compared[name] for name in ("note", "curves", "settings", "scores"))

    assert note == "3 runs compared."
    losses = [t for t in figure.data if t.meta == "loss"]
    validations = [t for t in figure.data if t.meta == "validation"]
    assert [list(t.y) for t in losses] == [[3.0 - n / 10, 2.0, 1.5 - n / 10] for n in range(3)]
    assert [list(t.y) for t in validations] == [[10.0 + n, 20.0 + n] for n in range(3)]
    assert len({t.line.color for t in losses}) == 3
    labels = [services.run(job_id).label for job_id in ids]  # in words: method, budget, data, seed, time
    assert [t.name for t in losses] == labels and labels[1].startswith("LoRA 2k · 100 % of ") and "seed 1" in labels[1]
    assert not any(job_id in settings + scores for job_id in ids)  # no job id in either table
    marked = re.findall(r'<tr class="vl-differs-row"[^>]*><th>≠ ([^<]+)</th>', settings)
    assert marked == ["method", "seed"]  # the only settings the three runs differ in
    assert "2 of 20 settings differ" in settings
    assert settings.count('class="vl-same-row"') == 18
    assert "<td><b>42.0 %</b></td>" in scores and scores.count("<b>") == 1  # the best accuracy, in bold
    assert "num_examples" not in scores


def test_fewer_than_two_or_more_than_four_runs_are_asked_for_again(services: Services):
    assert runs_compared.compare_runs(services, [])["note"] == runs_compared.TICK
    too_many = runs_compared.compare_runs(services, ["a", "b", "c", "d", "e"])
    note, figure = too_many["note"], too_many["curves"]
    assert note.startswith("5 runs are ticked: untick some, at most 4") and figure is None
