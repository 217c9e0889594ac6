"""`--report-to`: the trackers write what transformers' Trainer writes, where TensorBoard and Trackio read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from training.errors import UserError
from training.paths import REPO_ROOT
from training.run.tracking import NoTracker, eval_scalars, open_tracker, training_scalars

ROWS = [
    {"step": 1, "total_steps": 3, "epoch": 0.1, "loss": 2.5, "lr": 1e-3, "samples_per_s": 40.0, "elapsed_s": 1.0},
    {"step": 2, "total_steps": 3, "epoch": 0.2, "loss": 2.0, "lr": 2e-3, "samples_per_s": 42.0, "elapsed_s": 2.0},
    {"step": 3, "total_steps": 3, "epoch": 0.3, "loss": 1.5, "lr": 1e-3, "samples_per_s": float("nan")},
]


def test_rows_and_scores_take_the_trainers_names_and_only_finite_numbers():
    assert training_scalars(ROWS[0]) == {
        "train/loss": 2.5,
        "train/learning_rate": 1e-3,
        "train/samples_per_second": 40.0,
        "train/epoch": 0.1,
    }
    assert "train/samples_per_second" not in training_scalars(ROWS[2])
    assert eval_scalars({"CIDEr-D": 0.5, "num_examples": 6, "per_sample": [1], "ok": True}) == {
        "eval/CIDEr-D": 0.5,
        "eval/num_examples": 6,
    }


def test_none_tracks_nothing_and_an_unknown_kind_is_refused(tmp_path):
    assert isinstance(open_tracker("none", tmp_path, {}), NoTracker)
    with pytest.raises(UserError, match="choose one of none, tensorboard, trackio"):
        open_tracker("wandb", tmp_path, {})


def test_a_missing_package_names_the_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "trackio", None)
    with pytest.raises(UserError, match=r"pip install tensorboard \(or pip install \"\.\[tracking\]\"\)"):
        open_tracker("tensorboard", tmp_path, {})
    with pytest.raises(UserError, match="pip install trackio"):
        open_tracker("trackio", tmp_path, {})


def test_tensorboard_event_files_hold_every_scalar_at_its_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = open_tracker("tensorboard", tmp_path, {"method": "lora", "budget": "0.5%"})
    for row in ROWS:
        tracker.log(row["step"], training_scalars(row))
    tracker.log(3, eval_scalars({"CIDEr-D": 0.42}))
    tracker.close()

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert [e.step for e in events.Scalars("train/samples_per_second")] == [1, 2]
    assert [round(e.value, 6) for e in events.Scalars("train/learning_rate")] == [1e-3, 2e-3, 1e-3]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("eval/CIDEr-D")] == [(3, 0.42)]
    assert '"budget": "0.5%"' in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_trackio_keeps_the_runs_scalars_in_its_local_store(tmp_path):
    pytest.importorskip("trackio")
    # Trackio reads TRACKIO_DIR when imported: a process of its own writes and reads back.
    code = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from training.run.tracking import TRACKIO_PROJECT, open_tracker, training_scalars
        rows = {ROWS[:2]!r}
        tracker = open_tracker("trackio", Path({str(tmp_path / "run-7")!r}), {{"method": "lora"}})
        for row in rows:
            tracker.log(row["step"], training_scalars(row))
        tracker.close()
        from trackio.sqlite_storage import SQLiteStorage
        logs = SQLiteStorage.get_logs(TRACKIO_PROJECT, "run-7")
        print("logs:", json.dumps([[log["step"], log["train/loss"]] for log in logs]))
    """)
    env = dict(
        os.environ,
        TRACKIO_DIR=str(tmp_path / "trackio"),
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="0",
        PYTHONPATH=str(REPO_ROOT),
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = [line for line in done.stdout.splitlines() if line.startswith("logs: ")]
    assert found and json.loads(found[0].removeprefix("logs: ")) == [[1, 2.5], [2, 2.0]], done.stdout
