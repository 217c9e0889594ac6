"""The replay bench's bookkeeping (training/study/replay.py) on the tiny model: it launches real runs, splits their
wall time from their files, and pairs them with an older commit's runs. No timing is asserted."""

from __future__ import annotations

import pytest

from training.errors import UserError
from training.paths import REPO_ROOT
from training.run import runs
from training.study.bench import Setting, measure_validation_paths
from training.study.replay import PARTS, commit_of, measure_runs, replay_points
from training.sweeps.grid import parse_spec


def tiny_spec(model_dir, dataset_dir, methods=("lora",)):
    return parse_spec(
        {
            "name": "tiny-replay",
            "base_model": str(model_dir),
            "datasets": {"vqa": str(dataset_dir)},
            "tasks": {"vqa": {"max_steps": 6, "eval_limit": 4}},
            "methods": list(methods),
            "seeds": [0],
            "settings": {"batch_size": 4, "towers": "text", "val_every": 2, "patience": 3},
            "budget_axis": {"fraction": 1.0, "budgets": ["2k"]},
        }
    )


def test_a_replayed_point_is_split_into_parts_that_add_up_and_paired_with_the_old_code(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    spec = tiny_spec(tiny_model_dir, tiny_vqa_dataset)
    name = "vqa__lora__b2k__f1__s0"
    out = tmp_path / "bench-runs.json"
    result = measure_runs((name,), against="HEAD", work_dir=tmp_path, spec=spec, log=lambda line: None, out=out)
    assert runs.read_json(out) == result and result["complete"]
    assert [row["side"] for row in result["runs"]] == ["new", "old"]  # the first point starts with the new code
    assert result["code"]["old"]["commit"] == commit_of(REPO_ROOT)
    assert not result["code"]["old"]["uncommitted_changes"]
    for row in result["runs"]:
        assert row["returncode"] == 0, row
        run_dir = tmp_path / row["side"] / name
        evaluation = runs.read_json(run_dir / runs.EVAL)
        validations = runs.read_jsonl(run_dir / runs.VALIDATION)
        assert sum(row[f"{part}_s"] for part in PARTS) == pytest.approx(row["total_s"], abs=0.05)
        assert all(row[f"{part}_s"] >= 0 for part in PARTS if part != "writing")
        assert row["validation_s"] == pytest.approx(sum(v["seconds"] for v in validations), abs=0.01)
        assert row["test_s"] == pytest.approx(evaluation["metrics"]["eval_s"], abs=0.01)
        assert row["steps_run"] == 6 and row["validations"] == len(validations) == 4  # steps 0, 2, 4 and 6
        assert row["best_step"] == evaluation["validation"]["best_step"] == validations[-1]["best_step"]
        assert row["test_score"] == evaluation["metrics"]["accuracy"]
        assert row["val_curve"] == [v["value"] for v in validations]
        # The run's clock starts after the interpreter has imported the trainer: start and load are both real.
        assert row["start_s"] > 0.5 and row["load_s"] > 0
    summary = result["summary"]["new"]
    assert summary["finished"] == 1 and summary["runs_per_hour"] == pytest.approx(3600 / summary["total_s"], rel=0.01)
    (point,) = result["comparison"]["points"]
    assert point["point"] == name
    old, new = (next(r for r in result["runs"] if r["side"] == side) for side in ("old", "new"))
    assert point["speedup"] == pytest.approx(old["total_s"] / new["total_s"], rel=0.01)
    assert point["same_validation_curve"] == (old["val_curve"] == new["val_curve"])
    assert not list(tmp_path.glob("old-*"))  # the worktree is removed


def test_the_resident_worker_replays_the_points_in_turns_with_fresh_processes(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    spec = tiny_spec(tiny_model_dir, tiny_vqa_dataset, methods=("lora", "prompt"))
    names = ("vqa__lora__b2k__f1__s0", "vqa__prompt__b2k__f1__s0")
    result = measure_runs(names, work_dir=tmp_path, spec=spec, log=lambda line: None, resident=True)
    assert result["complete"]
    # Which side goes first alternates: resident then fresh for the first point, fresh then resident for the next.
    assert [(row["point"], row["side"]) for row in result["runs"]] == [
        (names[0], "resident"),
        (names[0], "fresh"),
        (names[1], "fresh"),
        (names[1], "resident"),
    ]
    for row in result["runs"]:
        assert row["returncode"] == 0, row
        assert sum(row[f"{part}_s"] for part in PARTS) == pytest.approx(row["total_s"], abs=0.05)
    comparison = result["comparison"]
    assert comparison["sides"] == ["resident", "fresh"]
    for point in comparison["points"]:  # the same runs, so the same choices and scores on both sides
        assert point["same_validation_curve"] and point["same_best_step"]
        assert point["test_score"]["resident"] == point["test_score"]["fresh"]
    # The second resident run found the model and data loaded: no interpreter start, and a shorter load.
    second = {row["side"]: row for row in result["runs"] if row["point"] == names[1]}
    assert second["resident"]["start_s"] < second["fresh"]["start_s"]
    # With a commit, the resident worker takes turns with that commit's code in fresh processes (a grid's whole
    # speed-up): the same run, so the same choices.
    against = measure_runs(names[:1], against="HEAD", work_dir=tmp_path / "against", spec=spec, resident=True)
    assert [row["side"] for row in against["runs"]] == ["resident", "old"]
    assert against["comparison"]["sides"] == ["resident", "old"]
    (point,) = against["comparison"]["points"]
    assert point["same_validation_curve"] and point["test_score"]["resident"] == point["test_score"]["old"]


def test_a_point_outside_the_grid_or_an_unknown_commit_is_refused(tiny_model_dir, tiny_vqa_dataset):
    spec = tiny_spec(tiny_model_dir, tiny_vqa_dataset)
    with pytest.raises(UserError, match="not a point of the sweep"):
        replay_points(spec, ("vqa__lora__b9k__f1__s0",))
    with pytest.raises(UserError, match="not a commit"):
        commit_of(REPO_ROOT, "no-such-commit-anywhere")


def test_the_validation_speed_paths_are_timed_against_their_plain_paths(tiny_model_dir, tiny_vqa_dataset):
    setting = Setting(base_model=str(tiny_model_dir), task="vqa", device="cpu", dataset=str(tiny_vqa_dataset))
    rows = measure_validation_paths(repeats=1, setting=setting, budget="2k")
    assert [row["path"] for row in rows] == ["validation features", "wide decoding"]
    for row in rows:
        assert row["measured"] == "vqa validation of 8 examples"  # the tiny split: 4 images, 2 questions each
        assert row["fast_s"] > 0 and row["plain_s"] > 0
        assert row["saving"] == pytest.approx(1 - row["fast_s"] / row["plain_s"], abs=2e-3)
