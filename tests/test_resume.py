"""A run whose process dies resumes from its last saved state and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from training.run import resume, runs
from training.run.config import RunConfig
from training.run.trainer import TrainingLoop, train


class Died(Exception):
    """Stands for the process being killed: nothing after it runs."""


def config(model, data, method: str = "lora", max_steps: int = 24, **overrides) -> RunConfig:
    """A VQA run on the tiny BLIP that validates (and so saves its state) every 5 steps and never stops early."""
    values = dict(
        task="vqa",
        method=method,
        budget="2k",
        base_model=str(model),
        dataset=str(data),
        max_steps=max_steps,
        batch_size=4,
        eval_limit=6,
        val_every=5,
        val_limit=6,
        patience=50,
        lr=2e-2,
        seed=0,
    )
    return RunConfig(**{**values, **overrides})


def die_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the loop die right after validating `step`: its records are written, its state is not saved."""
    original = TrainingLoop.validate

    def validate(self, at: int) -> bool:
        exhausted = original(self, at)
        if at == step:
            raise Died
        return exhausted

    monkeypatch.setattr(TrainingLoop, "validate", validate)


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_a_run_killed_mid_training_resumes_and_ends_with_the_uninterrupted_runs_weights(
    method, tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch
):
    cfg = config(tiny_model_dir, tiny_vqa_dataset, method)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    monkeypatch.setattr(resume, "discard", lambda run_dir: None)  # keep the last state to compare it
    assert train(cfg, whole, install_signals=False) == 0

    with monkeypatch.context() as patch:
        die_at(patch, 15)
        with pytest.raises(Died):
            train(cfg, broken, install_signals=False)
    assert resume.saved_step(broken) == 10
    assert max(row["step"] for row in runs.read_jsonl(broken / runs.VALIDATION)) == 15  # written after the save

    assert train(cfg, broken, install_signals=False, resume=True) == 0
    assert "resumed at step 10" in (broken / runs.LOG).read_text()
    # Every tensor of the last saved state (trained weights, best checkpoint, optimizer moments, torch's random
    # state) and the kept weights are those of the run that was never interrupted, bit for bit.
    for name in (f"{resume.FOLDER}/{resume.TENSORS}", runs.WEIGHTS):
        expected, got = load_file(str(whole / name)), load_file(str(broken / name))
        assert expected.keys() == got.keys(), name
        assert all(torch.equal(expected[key], got[key]) for key in expected), name
    state = load_file(str(whole / resume.FOLDER / resume.TENSORS))
    trained = sorted(float(t.abs().sum()) for key, t in state.items() if key.startswith("weight."))
    start = sorted(float(t.abs().sum()) for t in load_file(str(whole / runs.WEIGHTS)).values())  # best: step 0
    assert trained != start  # the state compared holds trained weights, not the starting ones
    # The records of the steps the dead process ran after its state are replaced, not doubled.
    for name in (runs.METRICS, runs.VALIDATION):
        steps = [row["step"] for row in runs.read_jsonl(broken / name)]
        assert steps == [row["step"] for row in runs.read_jsonl(whole / name)], name
    validation = [(r["step"], r["value"]) for r in runs.read_jsonl(broken / runs.VALIDATION)]
    assert validation == [(r["step"], r["value"]) for r in runs.read_jsonl(whole / runs.VALIDATION)]
    eval_whole = json.loads((whole / runs.EVAL).read_text())["metrics"]["accuracy"]
    assert json.loads((broken / runs.EVAL).read_text())["metrics"]["accuracy"] == eval_whole


def test_a_run_stopped_on_request_saves_its_state_at_the_last_step_and_resume_without_one_starts_afresh(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    cfg = config(tiny_model_dir, tiny_vqa_dataset, "lora")
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.STOP).touch()  # asked to stop before its first step
    assert train(cfg, run, install_signals=False, resume=True) != 0  # no saved state: starts afresh, then stops
    assert resume.saved_step(run) == 0
    (run / runs.STOP).unlink()
    assert train(cfg, run, install_signals=False, resume=True) == 0
    assert "resumed at step 0" in (run / runs.LOG).read_text()
    assert (run / runs.EVAL).is_file()
    assert resume.saved_step(run) is None and not (run / resume.FOLDER).exists()  # finished: nothing to resume


def test_a_state_of_another_method_is_refused_with_a_reason(tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        die_at(patch, 15)
        with pytest.raises(Died):
            train(config(tiny_model_dir, tiny_vqa_dataset, "lora"), run, install_signals=False)
    with pytest.raises(ValueError, match="another method or budget"):
        train(config(tiny_model_dir, tiny_vqa_dataset, "serial-adapter"), run, install_signals=False, resume=True)
