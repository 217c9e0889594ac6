"""The CLI: the methods table, and bad arguments that stop before any work with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.budget import parse_budget
from training.catalog import METHOD_NAMES
from training.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def cli(*args, cwd=REPO, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


@pytest.mark.parametrize(
    ("text", "value", "percent"),
    [
        ("20000", 20000, False),
        ("20k", 20000, False),
        ("1.5M", 1_500_000, False),
        ("0.5%", 0.5, True),
        ("2,000", 2000, False),
        (" 7K ", 7000, False),
    ],
)
def test_budget_parses_counts_and_percentages(text, value, percent):
    budget = parse_budget(text)
    assert (budget.value, budget.percent) == (value, percent)


@pytest.mark.parametrize("text", ["", "abc", "-5", "0", "120%", "5 apples"])
def test_bad_budget_is_refused_with_an_example(text):
    with pytest.raises(UserError, match="Budget"):
        parse_budget(text)


def test_methods_json_lists_every_method_with_its_knob(tiny_model_dir):
    result = cli("methods", "--budget", "2k", "--base-model", str(tiny_model_dir), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["method"]: row for row in json.loads(result.stdout)}
    assert list(rows) == list(METHOD_NAMES)
    for row in rows.values():
        assert set(row) >= {
            "method",
            "knob",
            "value",
            "trainable_params",
            "percent",
            "min_params",
            "max_params",
            "feasible",
        }
    assert rows["lora"]["knob"] == "rank" and rows["lora"]["feasible"]
    assert rows["lora"]["min_params"] <= rows["lora"]["trainable_params"] <= rows["lora"]["max_params"]
    assert abs(rows["lora"]["trainable_params"] - 2000) <= rows["lora"]["min_params"]
    assert rows["full"]["percent"] == 100.0 and rows["zero-shot"]["trainable_params"] == 0


def test_methods_table_marks_an_unreachable_budget(tiny_model_dir):
    result = cli("methods", "--budget", "50", "--base-model", str(tiny_model_dir))
    assert result.returncode == 0
    assert "NO" in result.stdout and "rank" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "magic"], "Unknown method 'magic'"),
        (["--data-fraction", "0"], "outside (0, 1]"),
        (["--data-fraction", "1.5"], "outside (0, 1]"),
        (["--budget", "10"], "lora cannot reach a budget of 10 trainable parameters"),
        (["--dataset", "/nonexistent/data"], "does not exist"),
        (["--base-model", "no-such-org/no-such-model"], "could not be loaded"),
    ],
)
def test_bad_train_arguments_exit_with_one_clear_line(args, message, tiny_model_dir, tiny_caption_dataset, tmp_path):
    base = [
        "train",
        "--task",
        "caption",
        "--method",
        "lora",
        "--budget",
        "2k",
        "--base-model",
        str(tiny_model_dir),
        "--dataset",
        str(tiny_caption_dataset),
        "--max-steps",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    for flag_index in range(0, len(args), 2):
        position = base.index(args[flag_index]) if args[flag_index] in base else None
        if position is None:
            base += args[flag_index : flag_index + 2]
        else:
            base[position + 1] = args[flag_index + 1]
    result = cli(*base)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "run" / "weights.safetensors").exists()


def test_a_model_of_another_architecture_is_refused(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    result = cli("methods", "--budget", "1k", "--base-model", str(tmp_path / "gpt"))
    assert result.returncode == 2 and "holds a 'gpt2' model" in result.stderr


def test_a_corrupt_checkpoint_is_refused(tiny_model_dir, tmp_path):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    result = cli("methods", "--budget", "1k", "--base-model", str(corrupt))
    assert result.returncode == 2 and "corrupt" in result.stderr
