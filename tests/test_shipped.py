"""The adapters the app ships: `python -m training ship-adapters` builds them from a grid's runs, and a fresh app
offers them in Compare for both tasks (or hides them, with a sentence, when they do not fit its base model)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from gradio_client import Client

from app.shipped import ID_PREFIX, load_shipped
from app.tabs.compare import run_choices
from tests.test_app_server import launch, shut_down, tiny_settings
from training.cli import main as cli
from training.compare import Comparer
from training.run import runs
from training.run.config import RunConfig
from training.run.launch import train_in_process
from training.study.shipped import MANIFEST
from training.sweeps.grid import load_spec
from training.sweeps.table import folder_sha

pytestmark = pytest.mark.slow  # a real server, and two tiny trainings

POINTS = ("caption__lora__b2k__f1__s0", "vqa__lora__b2k__f1__s0")
GRID_SCORES = {0: 40.0, 1: 55.0}  # the VQA point's accuracy over two seeds in the grid's table


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset) -> Path:
    """A tiny grid with its sweep file, its runs of the reference budget on all the data, and a results table."""
    root = tmp_path_factory.mktemp("grid")
    sweep = root / "tiny.yaml"
    sweep.write_text(
        f"name: tiny\nout: {root / 'out'}\nresults: {root / 'results'}\nbase_model: {tiny_model_dir}\n"
        f"datasets: {{caption: {tiny_caption_dataset}, vqa: {tiny_vqa_dataset}}}\n"
        "tasks: {caption: {max_steps: 3, eval_limit: 4}, vqa: {max_steps: 3, eval_limit: 4}}\n"
        "methods: [zero-shot, full, lora]\nseeds: [0, 1]\nsettings: {batch_size: 4, towers: text, lr: 0.01}\n"
        "data_axis: {budget: 2k, fractions: [0.5, 1.0]}\n"
    )
    spec = load_spec(sweep)
    for point in spec.points():
        if point.name in POINTS:
            out = root / "out" / "runs" / point.name
            assert train_in_process([*spec.run_config(point).to_cli_args(), "--out", str(out)]) == 0
    (root / "results").mkdir()
    with open(root / "results" / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["run", "task", "method", "seed", "accuracy"])
        writer.writeheader()
        for seed, score in GRID_SCORES.items():
            writer.writerow(
                {
                    "run": f"vqa__lora__b2k__f1__s{seed}",
                    "task": "vqa",
                    "method": "lora",
                    "seed": seed,
                    "accuracy": score,
                }
            )
    return root


@pytest.fixture(scope="module")
def shipped(grid) -> Path:
    out = grid / "adapters"
    assert cli(["ship-adapters", "--sweep", str(grid / "tiny.yaml"), "--out", str(out), "--work", str(grid / "w")]) == 0
    return out


def test_the_grid_points_are_shipped_with_what_they_are_and_where_they_came_from(grid, shipped, tiny_model_dir):
    manifest = json.loads((shipped / MANIFEST).read_text())
    assert [entry["name"] for entry in manifest["adapters"]] == list(POINTS)
    assert manifest["base_model"]["sha"] == folder_sha(str(tiny_model_dir)) and manifest["reference_budget"] == "2k"
    assert not (grid / "w").exists()  # both runs were copied from the grid's folder, none trained again
    for name in POINTS:
        run_dir = grid / "out" / "runs" / name
        record = json.loads((shipped / f"{name}.json").read_text())
        info, evaluation = runs.read_json(run_dir / runs.CONFIG), runs.read_json(run_dir / runs.EVAL)
        task = name.split("__")[0]
        assert (record["method"], record["task"], record["budget"], record["data_fraction"]) == (
            "lora",
            task,
            "2k",
            1.0,
        )
        assert record["trainable_params"] == info["trainable_params"] == 2048 and record["grid_point"] == name
        assert record["base_model"]["sha"] == manifest["base_model"]["sha"]
        metric = "accuracy" if task == "vqa" else "CIDEr-D"
        assert record["test"]["value"] == evaluation["metrics"][metric]
        assert record["built"]["commit"] and record["built"]["command"].startswith("python -m training ship-adapters")
        assert record["built"]["how"].startswith("copied from the grid's run")
        weights = shipped / record["weights"]["file"]
        assert weights.stat().st_size == record["weights"]["bytes"] < 2048 * 4 + 1024  # the adapter alone
        assert record["weights"]["dtype"] == (
            "float16" if record["weights"]["float16_check"]["same_outputs"] else "float32"
        )
    vqa = json.loads((shipped / f"{POINTS[1]}.json").read_text())
    assert vqa["grid_seed_range"] == {"metric": "accuracy", "seeds": [0, 1], "min": 40.0, "max": 55.0, "mean": 47.5}
    assert json.loads((shipped / f"{POINTS[0]}.json").read_text())["grid_seed_range"] is None  # not in the table


def test_a_fresh_app_offers_the_shipped_adapters_for_both_tasks_and_compares_one(
    grid, shipped, tmp_path, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset
):
    app, url = launch(
        tiny_settings(tmp_path / "home", tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset, shipped_dir=shipped)
    )
    try:
        client = Client(url, verbose=False)
        for name in POINTS:
            task = name.split("__")[0]
            listed = client.predict(task, api_name="/list_runs")
            assert [run["id"] for run in listed] == [ID_PREFIX + name]
            words = f"tiny-{task}"  # the dataset it was trained on (the embedded ones: scene-caption, scene-VQA)
            assert listed[0]["shipped"] == f"LoRA, 2k parameters, shipped with the app (trained on {words}, 100 % data)"
            offered = run_choices(app.services, task)
            assert [value for _, value in offered["choices"]] == [ID_PREFIX + name]
            assert "ship with the app" in offered["info"]
        question = "what color is the square ?"
        columns = client.predict("vqa", [ID_PREFIX + POINTS[1]], question, 0, api_name="/compare")
        picture = app.services.test_images("vqa")[0].examples[0].image.load()
        trained = Comparer(str(tiny_model_dir)).compare(
            picture, "vqa", [grid / "out" / "runs" / POINTS[1]], question, max_new_tokens=RunConfig().max_new_tokens
        )
        assert [c["method"] for c in columns] == ["zero-shot", "lora"]
        assert columns[1]["output"] == trained[1].output  # the shipped adapter says what the trained run says
        assert columns[1]["test_score"] == {
            "accuracy": json.loads((shipped / f"{POINTS[1]}.json").read_text())["test"]["value"]
        }
        assert app.services.runs() == []  # Runs lists jobs only: the shipped adapters are not there to delete
        with pytest.raises(Exception, match="read-only"):
            app.services.delete(ID_PREFIX + POINTS[1], "someone")
    finally:
        shut_down(app)


def tampered(shipped: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "adapters"
    shutil.copytree(shipped, copy)
    return copy


def test_adapters_of_another_base_model_are_hidden_with_a_log_line(shipped, tmp_path, tiny_model_dir, caplog):
    folder = tampered(shipped, tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["base_model"]["sha"] = "0123456789abcdef"  # a second edition of the embedded model, say
    (folder / MANIFEST).write_text(json.dumps(manifest))
    found, skipped = load_shipped(folder, str(tiny_model_dir), tmp_path / "scratch")
    assert found == [] and len(skipped) == 1
    assert "trained on base model 0123456789abcdef" in skipped[0] and "they are hidden" in skipped[0]
    assert skipped[0] in caplog.text and "ship-adapters" in skipped[0]


def test_a_tampered_adapter_is_skipped_and_the_others_kept(shipped, tmp_path, tiny_model_dir):
    folder = tampered(shipped, tmp_path)
    weights = folder / f"{POINTS[0]}.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of one weight
    found, skipped = load_shipped(folder, str(tiny_model_dir), tmp_path / "scratch")
    assert [adapter.id for adapter in found] == [ID_PREFIX + POINTS[1]]
    assert skipped == [f"{POINTS[0]}: {weights.name} is not the file the manifest lists (its digest differs): skipped."]


def test_an_unreadable_manifest_offers_none_with_a_sentence(shipped, tmp_path, tiny_model_dir):
    folder = tampered(shipped, tmp_path)
    (folder / MANIFEST).write_text("{not json")
    found, skipped = load_shipped(folder, str(tiny_model_dir), tmp_path / "scratch")
    assert found == [] and "cannot be read" in skipped[0] and "ship-adapters" in skipped[0]
    assert load_shipped(tmp_path / "nowhere", str(tiny_model_dir), tmp_path / "scratch") == ([], [])
