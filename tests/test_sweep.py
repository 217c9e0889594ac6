"""Sweeps: grid expansion, feasibility filter, resume after a kill, the results table, the Ray executor."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.method_table import BUDGETED
from training.budget import parse_budget
from training.catalog import METHOD_NAMES
from training.cli import main
from training.errors import UserError
from training.paths import REPO_ROOT
from training.sweeps.grid import GridPoint, budget_label, filter_feasible, load_spec, parse_spec

REQUIRED_COLUMNS = {
    "task",
    "method",
    "family",
    "budget",
    "trainable_params",
    "trainable_percent",
    "data_fraction",
    "train_examples",
    "seed",
    "train_s",
    "wall_s",
    "peak_mem_mb",
    "base_model",
    "dataset",
    "subset_hash",
    "torch",
    "transformers",
    "peft",
}


def names(spec) -> list[str]:
    return [p.name for p in spec.points()]


def test_cross_product_expands_every_combination_and_runs_each_baseline_once():
    spec = parse_spec(
        {
            "tasks": ["caption", "vqa"],
            "methods": ["zero-shot", "full", "prompt", "lora"],
            "budgets": ["1k", "2k"],
            "fractions": [0.5, 1],
            "seeds": [0, 1],
        }
    )
    points = names(spec)
    assert len(points) == len(set(points)) == 2 * 2 + 2 * 2 * 2 + 2 * (2 * 2 * 2 * 2)
    assert [n for n in points if "zero-shot" in n] == [
        "caption__zero-shot__s0",
        "vqa__zero-shot__s0",
        "caption__zero-shot__s1",
        "vqa__zero-shot__s1",
    ]
    assert sorted(n for n in points if n.startswith("vqa__full")) == [
        "vqa__full__f0.5__s0",
        "vqa__full__f0.5__s1",
        "vqa__full__f1__s0",
        "vqa__full__f1__s1",
    ]
    assert "vqa__lora__b2k__f0.5__s1" in points


def test_every_method_without_a_budget_runs_once_per_fraction_and_seed(monkeypatch):
    """Not only full fine-tuning: any method the catalog marks as taking no budget (a fixed count)."""
    monkeypatch.setattr("training.sweeps.grid.NO_BUDGET_METHODS", ("zero-shot", "full", "prefix"))
    spec = parse_spec(
        {
            "tasks": ["vqa"],
            "methods": ["full", "prefix", "lora"],
            "budgets": ["1k", "2k"],
            "data_axis": {"budget": "1k", "fractions": [0.25]},
            "fractions": [0.5, 1],
            "seeds": [0],
        }
    )
    points = names(spec)
    assert sorted(n for n in points if "prefix" in n) == [
        "vqa__prefix__f0.25__s0",
        "vqa__prefix__f0.5__s0",
        "vqa__prefix__f1__s0",
    ]
    assert len([n for n in points if "lora" in n]) == 5


def test_axes_vary_one_thing_at_a_time_and_share_their_crossing_point():
    spec = parse_spec(
        {
            "tasks": ["vqa"],
            "methods": ["lora", "full"],
            "seeds": [0],
            "data_axis": {"budget": "2k", "fractions": [0.25, 0.5, 1.0]},
            "budget_axis": {"fraction": 1.0, "budgets": ["1k", "2000", "4k"]},
        }
    )
    assert names(spec) == [
        "vqa__full__f0.25__s0",
        "vqa__full__f0.5__s0",
        "vqa__full__f1__s0",
        "vqa__lora__b1k__f1__s0",
        "vqa__lora__b2k__f0.25__s0",
        "vqa__lora__b2k__f0.5__s0",
        "vqa__lora__b2k__f1__s0",
        "vqa__lora__b4k__f1__s0",
    ]


def test_budgets_may_differ_per_method():
    budgets = {"*": ["8k"], "prompt": ["500", "0.5%"]}
    spec = parse_spec(
        {
            "tasks": ["vqa"],
            "methods": ["prompt", "lora"],
            "seeds": [0],
            "budget_axis": {"fraction": 1, "budgets": budgets},
        }
    )
    assert names(spec) == ["vqa__prompt__b500__f1__s0", "vqa__prompt__b0.5pct__f1__s0", "vqa__lora__b8k__f1__s0"]


@pytest.mark.parametrize(
    ("text", "label"),
    [("20000", "20k"), ("1.5M", "1.5M"), ("3.2k", "3.2k"), ("750", "750"), ("0.5%", "0.5pct"), ("12345", "12345")],
)
def test_budget_labels_are_compact_and_safe_in_file_names(text, label):
    assert budget_label(parse_budget(text)) == label


def test_run_config_takes_settings_then_the_tasks_overrides_then_the_point(tiny_model_dir, tiny_vqa_dataset):
    spec = parse_spec(
        {
            "tasks": {"vqa": {"max_steps": 7}},
            "methods": ["lora"],
            "seeds": [3],
            "settings": {"batch_size": 4, "max_steps": 99, "eval_limit": 5},
            "base_model": str(tiny_model_dir),
            "datasets": {"vqa": str(tiny_vqa_dataset)},
            "budget_axis": {"fraction": 0.5, "budgets": ["2k"]},
        }
    )
    config = spec.run_config(spec.points()[0])
    assert (config.task, config.method, config.budget, config.data_fraction, config.seed) == (
        "vqa",
        "lora",
        "2000",
        0.5,
        3,
    )
    assert (config.batch_size, config.max_steps, config.eval_limit) == (4, 7, 5)
    assert config.base_model == str(tiny_model_dir) and config.dataset == str(tiny_vqa_dataset)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"methods": ["lora"], "budgets": ["1k"], "fractions": [1], "colour": 1}, "Unknown keys"),
        ({"methods": ["vera"], "budgets": ["1k"], "fractions": [1]}, "Unknown method 'vera'"),
        ({"methods": ["lora"], "budgets": ["1k"]}, "needs both `budgets` and `fractions`"),
        ({"methods": ["lora"], "budgets": ["lots"], "fractions": [1]}, "Budget 'lots' is not understood"),
        ({"methods": ["lora"], "data_axis": {"budget": "1k"}}, "`data_axis` must be a mapping"),
        ({"methods": ["lora"], "budgets": ["1k"], "fractions": [2]}, "outside (0, 1]"),
        ({"methods": ["lora"], "budgets": ["1k"], "fractions": [1], "settings": {"learning_rate": 1}}, "learning_rate"),
        ({"methods": ["lora"], "budgets": ["1k"], "fractions": [1], "tasks": ["ocr"]}, "Unknown task 'ocr'"),
        ({"methods": ["lora"]}, "gives no grid"),
    ],
)
def test_a_bad_sweep_file_is_a_user_error_naming_the_problem(data, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(data)


def test_points_a_method_cannot_reach_are_skipped_with_the_reason(tiny_model_dir):
    spec = parse_spec(
        {
            "tasks": ["vqa"],
            "methods": ["zero-shot", "prompt", "lora"],
            "seeds": [0],
            "base_model": str(tiny_model_dir),
            "budget_axis": {"fraction": 1, "budgets": ["500", "2k", "100k"]},
        }
    )
    kept, skipped = filter_feasible(spec, spec.points())
    assert [p.name for p in kept] == [
        "vqa__zero-shot__s0",
        "vqa__prompt__b500__f1__s0",
        "vqa__prompt__b2k__f1__s0",
        "vqa__lora__b2k__f1__s0",
    ]
    assert {s.point.name: s.reason for s in skipped} == {
        "vqa__prompt__b100k__f1__s0": "prompt trains 64-8,192 parameters, not 100k",
        "vqa__lora__b500__f1__s0": "lora trains 768-24,576 parameters, not 500",
        "vqa__lora__b100k__f1__s0": "lora trains 768-24,576 parameters, not 100k",
    }


def test_the_shipped_sweep_files_describe_the_papers_grid_and_a_small_one(tmp_path):
    from training.data import scenes
    from training.model.base_model import build_blip, save_base_model
    from training.pretraining.pretrain import EXTRA_WORDS, PretrainConfig

    embedded = REPO_ROOT / "assets" / "scene-blip"
    if not (embedded / "config.json").is_file():  # the embedded model's architecture, untrained, for the counts
        c = PretrainConfig()
        base = build_blip(
            scenes.vocabulary_words() + EXTRA_WORDS,
            image_size=c.image_size,
            patch_size=c.patch_size,
            vision_hidden=c.hidden,
            vision_layers=c.vision_layers,
            text_hidden=c.hidden,
            text_layers=c.text_layers,
            heads=c.heads,
            max_positions=c.max_positions,
        )
        embedded = save_base_model(base, tmp_path / "scene-blip-shape")
    paper = load_spec(REPO_ROOT / "sweeps" / "paper.yaml")
    paper.base_model = str(embedded)
    kept, _ = filter_feasible(paper, paper.points())
    assert set(paper.tasks) == {"caption", "vqa"} and paper.seeds == [0, 1, 2]
    assert set(paper.methods) == set(METHOD_NAMES)  # the paper grid runs every method of the catalog
    assert {0.01, 0.05, 0.1, 0.25, 0.5, 1.0} <= set(paper.data_axis[1])
    for task in paper.tasks:
        for method in BUDGETED:
            budgets = sorted(
                {
                    p.budget.resolve(1)
                    for p in kept
                    if p.task == task and p.method == method and p.fraction == 1.0 and p.seed == 0
                }
            )
            assert len(budgets) >= 4, method
            steps = [math.log10(b / a) for a, b in zip(budgets, budgets[1:], strict=False)]
            assert max(steps) - min(steps) < 0.05, f"{method}: budgets {budgets} are not evenly spaced on a log scale"
        assert sum(1 for p in kept if p.task == task and p.method == "zero-shot") == 3
        # IA3 has no knob: one run per data fraction and seed, whatever the budget axis says.
        ia3 = [p for p in kept if p.task == task and p.method == "ia3"]
        assert all(p.budget is None for p in ia3) and len(ia3) == 3 * len(paper.data_axis[1])
    smoke = load_spec(REPO_ROOT / "sweeps" / "smoke.yaml")
    assert len(smoke.points()) <= 16 and smoke.results != Path("results")


def test_the_second_edition_grid_is_the_first_on_its_own_model_captions_and_rates():
    """sweeps/paper-v2.yaml changes the world and where its tables go, nothing of the grid or the protocol."""
    first = yaml.safe_load((REPO_ROOT / "sweeps" / "paper.yaml").read_text())
    second = yaml.safe_load((REPO_ROOT / "sweeps" / "paper-v2.yaml").read_text())
    assert {k for k in first.keys() | second.keys() if first.get(k) != second.get(k)} == {
        "name",
        "out",
        "results",
        "base_model",
        "datasets",
    }
    spec = load_spec(REPO_ROOT / "sweeps" / "paper-v2.yaml")
    assert spec.results == Path("results/edition-2")
    assert json.loads((Path(spec.base_model) / "pretrain.json").read_text())["config"]["edition"] == 2
    assert json.loads((Path(spec.datasets["caption"]) / "dataset.json").read_text())["edition"] == 2
    assert (Path(spec.datasets["vqa"]) / "dataset.json").is_file()


def write_sweep(path: Path, model: Path, vqa: Path, caption: Path | None = None, **grid) -> Path:
    data = {
        "name": "t",
        "base_model": str(model),
        "datasets": {"vqa": str(vqa), "caption": str(caption or vqa)},
        "tasks": {"vqa": {"max_steps": 2, "eval_limit": 4}},
        "settings": {"batch_size": 4},
        "seeds": [0],
        "estimate_s": {"vqa": 5},
        **grid,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def processes_using(folder: Path) -> list[int]:
    """Processes with a file in `folder` open (a run keeps its log.txt open) or naming it on their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            targets = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in command or any(t.startswith(str(folder)) for t in targets):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_killed_sweep_resumes_where_it_stopped_with_one_table_row_per_point(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    config = write_sweep(
        tmp_path / "sweep.yaml",
        tiny_model_dir,
        tiny_vqa_dataset,
        methods=["zero-shot", "prompt", "lora"],
        budget_axis={"fraction": 1.0, "budgets": ["2k"]},
    )
    out, results = tmp_path / "out", tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "training",
        "sweep",
        "--config",
        str(config),
        "--out",
        str(out),
        "--results",
        str(results),
    ]
    first, second = out / "runs" / "vqa__zero-shot__s0", out / "runs" / "vqa__prompt__b2k__f1__s0"
    sweep = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300  # generous: a loaded machine is slow, and the wait ends when the files appear
    while not ((first / "eval.json").exists() and (second / "log.txt").exists()) and time.time() < deadline:
        assert sweep.poll() is None, sweep.stdout.read()
        time.sleep(0.1)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    sweep.stdout.close()
    finished_at = (first / "eval.json").stat().st_mtime_ns
    assert not (second / "eval.json").exists()
    time.sleep(0.5)
    assert processes_using(second) == [], "the killed sweep left its run process behind"
    (second / "half-done").touch()
    assert len(read_table(results / "runs.csv")) == 1

    assert main(["sweep", "--config", str(config), "--out", str(out), "--results", str(results)]) == 0
    assert (first / "eval.json").stat().st_mtime_ns == finished_at, "a finished run was run again"
    assert (second / "eval.json").exists() and not (second / "half-done").exists()
    rows = read_table(results / "runs.csv")
    assert [r["run"] for r in rows] == ["vqa__zero-shot__s0", "vqa__prompt__b2k__f1__s0", "vqa__lora__b2k__f1__s0"]
    assert REQUIRED_COLUMNS | {"accuracy", "accuracy_color", "accuracy_shape", "base_model_sha", "dataset_sha"} <= set(
        rows[0]
    )
    for row in rows:
        run_dir = out / "runs" / row["run"]
        info = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "eval.json").read_text())["metrics"]
        assert int(row["trainable_params"]) == info["trainable_params"]
        assert float(row["accuracy"]) == metrics["accuracy"]
        assert float(row["accuracy_color"]) == metrics["per_type"]["color"]
        assert row["torch"] == info["versions"]["torch"] and row["subset_hash"] in ("", info["subset_hash"])
        assert row["dataset"] == "tiny-vqa" and len(row["base_model_sha"]) == 16
    zero, prompt, lora = rows
    assert zero["data_fraction"] == "" and zero["budget"] == "" and zero["train_examples"] == "0"
    assert (prompt["budget"], prompt["family"], prompt["data_fraction"]) == ("2k", "embedding composition", "1.0")
    assert lora["family"] == "layer composition" and lora["train_examples"] == "32"
    assert zero["train_loss"] == "" and float(lora["train_loss"]) > 0 and float(prompt["train_loss"]) > 0
    meta = json.loads((results / "sweep.json").read_text())
    assert (meta["grid_size"], meta["done"], meta["failed"], meta["remaining"]) == (3, 3, 0, 0)
    assert len(meta["sessions"]) == 2 and meta["finished_at"] and meta["machine"]["cpu_count"] == os.cpu_count()
    assert meta["command"].startswith("python -m training sweep") and meta["datasets"]["vqa"]["sha"]


def endless_sweep(tmp_path, model, data) -> Path:
    """A sweep file of one LoRA run that trains until it is stopped."""
    return write_sweep(
        tmp_path / "sweep.yaml",
        model,
        data,
        methods=["lora"],
        tasks={"vqa": {"max_steps": 100_000}},
        budget_axis={"fraction": 1.0, "budgets": ["2k"]},
    )


def start_training_command(*args: str) -> subprocess.Popen:
    """`python -m training ARGS` in a process of its own, its output kept for the assertions."""
    return subprocess.Popen(
        [sys.executable, "-m", "training", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_training(process: subprocess.Popen, run_dirs) -> Path:
    """The first of `run_dirs()` whose progress.json says it is training (within 5 minutes)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        for run in run_dirs():
            progress = run / "progress.json"
            if progress.exists() and json.loads(progress.read_text()).get("phase") == "training":
                return run
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.1)
    raise AssertionError("no run started training")


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_its_run_and_keeps_the_table(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    config = endless_sweep(tmp_path, tiny_model_dir, tiny_vqa_dataset)
    out, results = tmp_path / "out", tmp_path / "results"
    run = out / "runs" / "vqa__lora__b2k__f1__s0"
    sweep = start_training_command("sweep", "--config", str(config), "--out", str(out), "--results", str(results))
    wait_until_training(sweep, lambda: [run])
    sweep.send_signal(signal.SIGTERM)
    output, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130 and "interrupted: 0 of 1 runs finished" in output
    assert json.loads((run / "progress.json").read_text())["phase"] == "stopped"
    assert not (run / "eval.json").exists() and processes_using(run) == []
    assert read_table(results / "runs.csv") == [] and json.loads((results / "sweep.json").read_text())["remaining"] == 1


@pytest.mark.slow
def test_sigterm_stops_a_tuning_and_its_run_in_the_resident_worker(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    """tune, like sweep: SIGTERM stops the run in flight after its step (no process left), and says how to go on."""
    config = endless_sweep(tmp_path, tiny_model_dir, tiny_vqa_dataset)
    work = tmp_path / "work"
    tuning = start_training_command("tune", "--config", str(config), "--work-dir", str(work))
    run = wait_until_training(tuning, lambda: [p.parent for p in work.glob("*/progress.json")])
    tuning.send_signal(signal.SIGTERM)
    output, _ = tuning.communicate(timeout=60)
    assert tuning.returncode == 130 and "run the same command to go on" in output, output
    assert json.loads((run / "progress.json").read_text())["phase"] == "stopped"
    assert processes_using(run) == []


def test_a_finished_sweep_runs_nothing_and_dry_run_prints_the_plan(tiny_model_dir, tiny_vqa_dataset, tmp_path, capsys):
    config = write_sweep(
        tmp_path / "sweep.yaml",
        tiny_model_dir,
        tiny_vqa_dataset,
        methods=["prompt", "lora"],
        budget_axis={"fraction": 1.0, "budgets": ["500", "2k"]},
    )
    args = ["sweep", "--config", str(config), "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r")]
    assert main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "4 grid points, 1 skipped" in printed and "3 runs: 0 finished, 3 to run now" in printed
    assert "skipped 1 x lora trains 768-24,576 parameters, not 500" in printed
    assert "estimated wall time of the 3 runs to go: 15s" in printed
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow
def test_the_ray_executor_runs_each_run_as_a_task_on_a_local_instance(
    tiny_model_dir, tiny_vqa_dataset, tmp_path, capsys
):
    ray = pytest.importorskip("ray")
    config = write_sweep(
        tmp_path / "sweep.yaml",
        tiny_model_dir,
        tiny_vqa_dataset,
        methods=["zero-shot", "lora"],
        budget_axis={"fraction": 0.5, "budgets": ["2k"]},
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        code = main(
            [
                "sweep",
                "--config",
                str(config),
                "--executor",
                "ray",
                "--num-cpus",
                "1",
                "--out",
                str(tmp_path / "out"),
                "--results",
                str(tmp_path / "r"),
            ]
        )
    finally:
        ray.shutdown()
    assert code == 0, capsys.readouterr()
    rows = read_table(tmp_path / "r" / "runs.csv")
    assert [r["run"] for r in rows] == ["vqa__zero-shot__s0", "vqa__lora__b2k__f0.5__s0"]
    assert rows[1]["train_examples"] == "16" and rows[1]["accuracy"] != ""
    assert (
        rows[0]["towers"] == ""
        and rows[1]["towers"]
        == json.loads((tmp_path / "out" / "runs" / rows[1]["run"] / "config.json").read_text())["config"]["towers"]
    )
    meta = json.loads((tmp_path / "r" / "sweep.json").read_text())
    assert meta["executor"] == "ray" and meta["num_cpus"] == 1 and meta["done"] == 2


def test_grid_point_names_are_stable():
    point = GridPoint("vqa", "lora", parse_budget("20000"), 0.25, 1)
    assert point.name == "vqa__lora__b20k__f0.25__s1"


def test_a_sweep_that_requires_tuned_learning_rates_refuses_to_run_without_them(
    tiny_model_dir, tiny_vqa_dataset, tmp_path, capsys, monkeypatch
):
    from training.run import rates
    from training.study import tuning

    table = tmp_path / "lr.csv"
    monkeypatch.setenv(rates.LR_TABLE_ENV, str(table))
    config = write_sweep(
        tmp_path / "sweep.yaml",
        tiny_model_dir,
        tiny_vqa_dataset,
        methods=["zero-shot", "prompt", "lora"],
        budget_axis={"fraction": 1.0, "budgets": ["2k"]},
        require_tuned_lr=True,
    )
    args = ["sweep", "--config", str(config), "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r")]
    assert main(args) != 0
    refusal = capsys.readouterr().err
    refusal = " ".join(refusal.split())
    assert "lr.csv lacks a finished one for 2 of them (vqa prompt (both) at 2k, vqa lora (both) at 2k)." in refusal
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "r" / "runs.csv").exists()
    assert main([*args, "--dry-run"]) == 0  # the plan is still shown, with what is missing
    assert (
        "no tuned learning rate in lr.csv for: vqa prompt (both) at 2k, vqa lora (both) at 2k"
        in capsys.readouterr().out
    )

    rows = [
        {
            "task": "vqa",
            "method": m,
            "towers": "both",
            "options": "{}",
            "lr": 0.01,
            "complete": c,
            "budget": "2000",  # the grid's 2k: rows serve runs of their own budget and base model
            "base_model": str(tiny_model_dir),
        }
        for m, c in (("prompt", True), ("lora", False))
    ]
    tuning.write_rows(table, rows, tuning.LR_COLUMNS)
    assert main(args) != 0  # LoRA's tuning is not finished
    printed = capsys.readouterr()
    assert (
        "tuning not complete in lr.csv (a seed to go, or the best not bracketed): vqa lora (both) at 2k" in printed.out
    )
    assert "no tuned learning rate" not in printed.out and "1 of them (vqa lora (both) at 2k)" in " ".join(
        printed.err.split()
    )
    assert main([*args, "--only", "zero-shot|prompt"]) == 0  # the points whose methods are tuned can start
    assert (
        "tuning not complete in lr.csv (a seed to go, or the best not bracketed): vqa lora" in capsys.readouterr().out
    )
    tuning.write_rows(table, [{**row, "complete": True} for row in rows], tuning.LR_COLUMNS)
    assert main([*args, "--only", "lora"]) == 0
    assert "tuning not complete" not in capsys.readouterr().out


def test_the_paper_sweep_requires_tuned_learning_rates():
    assert load_spec(REPO_ROOT / "sweeps" / "paper.yaml").require_tuned_lr
    with pytest.raises(UserError, match="true or false"):
        parse_spec({"methods": ["zero-shot"], "require_tuned_lr": "yes"})


def test_the_training_loss_is_the_mean_over_the_half_epoch_up_to_the_kept_checkpoint(tmp_path):
    from training.run import runs
    from training.run.runs import training_loss

    for step in range(1, 21):  # 10 steps an epoch; the loss falls by 0.1 a step
        runs.append_jsonl(tmp_path / runs.METRICS, {"step": step, "epoch": step / 10, "loss": 3.0 - 0.1 * step})
    # kept checkpoint at step 10 (epoch 1.0): steps 5..10 (epochs 0.5..1.0) -> losses 2.5 .. 2.0
    assert training_loss(tmp_path, 10) == pytest.approx(sum(3.0 - 0.1 * s for s in range(5, 11)) / 6)
    assert training_loss(tmp_path, None) == pytest.approx(sum(3.0 - 0.1 * s for s in range(15, 21)) / 6)
    assert training_loss(tmp_path / "nothing", 10) is None


def test_a_grid_rerun_under_another_schedule_does_not_inherit_the_old_grids_sessions(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    def run(out: str, **grid) -> dict:
        config = write_sweep(tmp_path / "sweep.yaml", tiny_model_dir, tiny_vqa_dataset, methods=["zero-shot"], **grid)
        args = ["sweep", "--config", str(config), "--out", str(tmp_path / out), "--results", str(tmp_path / "r")]
        assert main(args) == 0
        return json.loads((tmp_path / "r" / "sweep.json").read_text())

    first = run("old")
    assert len(first["sessions"]) == 1
    # The same grid with a new time estimate carries on: a second session of it.
    assert len(run("old", estimate_s={"vqa": 9})["sessions"]) == 2
    # The same name, another schedule (the old 150-step grid against the protocol's): a grid of its own, whose
    # wall time does not count the old one's sessions.
    fresh = run("new", tasks={"vqa": {"epochs": 1, "eval_limit": 4}})
    assert len(fresh["sessions"]) == 1 and fresh["wall_s"] == fresh["sessions"][0]["wall_s"]
    assert fresh["started_at"] != first["started_at"] or fresh["sessions"][0] != first["sessions"][0]


@pytest.mark.slow
def test_a_grid_goes_on_from_a_fresh_clone_whose_results_hold_the_finished_runs(
    tiny_model_dir, tiny_vqa_dataset, tmp_path, capsys
):
    """The run folders stay on the machine that ran them; the committed results folder is what a fresh clone has.
    Its rows (and item scores) count as finished for the same grid on the same files, and only those."""
    config = write_sweep(
        tmp_path / "sweep.yaml",
        tiny_model_dir,
        tiny_vqa_dataset,
        methods=["zero-shot", "lora"],
        budget_axis={"fraction": 1.0, "budgets": ["2k"]},
    )
    results = tmp_path / "results"

    def sweep(out: str, *extra: str) -> str:
        capsys.readouterr()
        args = ["sweep", "--config", str(config), "--out", str(tmp_path / out), "--results", str(results), *extra]
        assert main(args) == 0
        return capsys.readouterr().out

    sweep("machine-a")
    table, items = read_table(results / "runs.csv"), (results / "item_scores.jsonl").read_text()
    assert [r["run"] for r in table] == ["vqa__zero-shot__s0", "vqa__lora__b2k__f1__s0"] and items.count("\n") == 2

    printed = sweep("machine-b", "--dry-run")
    assert "2 runs: 2 finished, 0 to run now" in printed
    sweep("machine-b")
    assert not (tmp_path / "machine-b" / "runs").exists() or not any((tmp_path / "machine-b" / "runs").iterdir())
    assert read_table(results / "runs.csv") == table and (results / "item_scores.jsonl").read_text() == items
    meta = json.loads((results / "sweep.json").read_text())
    assert (meta["done"], meta["remaining"], len(meta["sessions"])) == (2, 0, 2)

    # A row made on other dataset files is stale: that point runs again (here), the other one is carried.
    stale = [dict(r, dataset_sha="0" * 16) if r["run"] == "vqa__lora__b2k__f1__s0" else r for r in table]
    with open(results / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(stale)
    assert "2 runs: 1 finished, 1 to run now" in sweep("machine-c", "--dry-run")
    sweep("machine-c")
    assert [p.name for p in (tmp_path / "machine-c" / "runs").iterdir()] == ["vqa__lora__b2k__f1__s0"]
    rows = read_table(results / "runs.csv")
    assert [r["run"] for r in rows] == [r["run"] for r in table] and rows[1]["dataset_sha"] == table[1]["dataset_sha"]
    assert rows[0] == table[0] and (results / "item_scores.jsonl").read_text().count("\n") == 2

    # Another grid under the same name (a changed schedule) carries nothing over.
    config.write_text(config.read_text().replace("max_steps: 2", "max_steps: 3"))
    assert "2 runs: 0 finished, 2 to run now" in sweep("machine-d", "--dry-run")


def test_the_estimate_counts_the_step_floor_of_small_shares(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    from training.sweeps.runner import Estimator, floor_shares

    # 32 training questions x 2 epochs at batch 4: 16 steps on all the data; a floor of 8 steps is half of that.
    config = write_sweep(
        tmp_path / "sweep.yaml",
        tiny_model_dir,
        tiny_vqa_dataset,
        methods=["zero-shot", "lora"],
        budget_axis={"fraction": 1.0, "budgets": ["2k"]},
        tasks={"vqa": {"epochs": 2}},
        settings={"batch_size": 4, "min_steps": 8},
    )
    spec = load_spec(config)
    assert floor_shares(spec) == {"vqa": 0.5}
    estimator = Estimator({"vqa": 130}, floors=floor_shares(spec))
    at = lambda method, fraction: estimator.expected(GridPoint("vqa", method, None, fraction, 0))  # noqa: E731
    assert at("lora", 1.0) == 130 and at("lora", 0.75) == 30 + 100 * 0.75
    assert at("lora", 0.1) == at("lora", 0.5) == 30 + 100 * 0.5  # the floor, not the share, sets the length
    assert at("zero-shot", None) == 130
    # A fixed step count (max_steps) has no floor to count.
    capped = load_spec(write_sweep(tmp_path / "capped.yaml", tiny_model_dir, tiny_vqa_dataset, methods=["zero-shot"]))
    assert floor_shares(capped) == {} and Estimator({"vqa": 130}).expected(GridPoint("vqa", "lora", None, 0.1, 0)) == 40


def test_the_estimate_scales_measured_runs_by_their_share_and_keeps_zero_shot_apart():
    from training.sweeps.runner import Estimator

    estimator = Estimator({"vqa": 1000}, floors={"vqa": 0.25})
    point = lambda method, fraction: GridPoint("vqa", method, None, fraction, 0)  # noqa: E731
    estimator.observe(point("zero-shot", None), 20)
    assert estimator.expected(point("lora", 1.0)) == 1000  # a zero-shot run says nothing of training time
    assert estimator.expected(point("zero-shot", None)) == 20
    estimator.observe(point("full", 0.01), 30 + 50)  # the floor's share: 200 s per full share
    estimator.observe(point("full", 1.0), 30 + 400)
    assert estimator.expected(point("full", 0.5)) == 30 + 300 * 0.5
    assert estimator.expected(point("lora", 0.5)) == 30 + 300 * 0.5  # no lora run or estimate: the trained runs
    assert estimator.expected(point("lora", 0.01)) == 30 + 300 * 0.25
    # The file's estimate for the method itself comes before other methods' runs.
    assert Estimator({"vqa": {"lora": 130}}, seen=estimator.seen).expected(point("lora", 1.0)) == 130


def test_item_scores_keep_a_tasks_question_types_once_and_the_report_reads_them(tmp_path):
    from training.study.report import load_item_scores
    from training.sweeps.table import write_item_scores

    types = ["yes/no", "color", "count"]
    lines = [
        {"run": "caption__a", "task": "caption", "metric": "CIDEr-D", "scores": [1 / 3, 2.0, 0.5]},
        *(
            {
                "run": f"vqa__{n}",
                "task": "vqa",
                "metric": "accuracy",
                "scores": [100.0, 200 / 3, 0.0],
                "question_types": types,
            }
            for n in "abc"
        ),
        {
            "run": "vqa__odd",
            "task": "vqa",
            "metric": "accuracy",
            "scores": [0.0, 0.0, 0.0],
            "question_types": types[::-1],
        },
    ]
    path = write_item_scores(lines, tmp_path / "item_scores.jsonl")
    stored = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["run"] for r in stored] == [r["run"] for r in lines]
    assert ["question_types" in r for r in stored] == [False, True, False, False, True]  # once, and where it differs
    assert stored[0]["scores"] == [0.333333, 2.0, 0.5] and stored[1]["scores"] == [100.0, 66.666667, 0.0]
    items = load_item_scores(path)
    assert items.question_types == {"vqa": types} and items.problems == []
    assert items.scores["vqa__c"].tolist() == [100.0, 66.666667, 0.0]
    # Rewriting what was read back (a later session carrying these lines over) changes nothing.
    assert write_item_scores(stored, tmp_path / "again.jsonl").read_text() == path.read_text()


def test_the_progress_counter_counts_each_finished_run_once_when_two_end_together(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    from training.launch.executor import PollingExecutor, RunHandle
    from training.run import runs
    from training.sweeps.runner import SweepSession, plan_sweep

    config = write_sweep(
        tmp_path / "sweep.yaml",
        tiny_model_dir,
        tiny_vqa_dataset,
        methods=["zero-shot", "lora"],
        budget_axis={"fraction": 1.0, "budgets": ["2k"]},
        seeds=[0, 1],
        out=str(tmp_path / "out"),
        results=str(tmp_path / "results"),
    )
    plan = plan_sweep(load_spec(config))
    assert len(plan.points) == 4

    class BothAtOnce(PollingExecutor):
        """Runs finish in pairs: both folders are complete on disk before the first of the two is reported."""

        slots = 2

        def describe(self) -> dict:
            return {"executor": "pairs"}

        def launch(self, spec):
            folder = Path(spec.run_dir)
            folder.mkdir(parents=True)
            runs.write_json(folder / runs.EVAL, {"metrics": {"accuracy": 50.0}})
            return RunHandle(spec)

        def poll(self, handle):
            handle.returncode = runs.EXIT_FINISHED
            return handle.returncode

    lines: list[str] = []
    session = SweepSession(plan, BothAtOnce(), "python -m training sweep", echo=lines.append, parallel=2)
    session.write_outputs = lambda: {"remaining": 0}  # the table needs real run folders; this test is the counter
    session.run()
    assert [line.split("]")[0] for line in lines] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert all("accuracy 50" in line for line in lines)
