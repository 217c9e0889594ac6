"""The parts of the GPU check (scripts/gpu_check.sh) that need no GPU, run here on the CPU: bf16 autocast
against fp32 per method with the fast paths, the bench's settings, one job through the queue, the summary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from training.paths import REPO_ROOT
from training.run.config import RunConfig
from training.study import gpu_check
from training.study.bench import Setting, measure_training


@pytest.mark.slow
def test_bf16_autocast_matches_fp32_for_every_method_and_the_fast_paths_are_used(tiny_model_dir, tiny_vqa_dataset):
    result = gpu_check.precision_check(
        str(tiny_model_dir), "cpu", task="vqa", dataset=str(tiny_vqa_dataset), batch_size=4, budget="2k"
    )
    rows = {row["method"]: row for row in result["methods"]}
    assert list(rows) == list(gpu_check.CHECK_METHODS)
    for method, row in rows.items():
        assert row["ok"], row
        assert row["loss_fp32"] != row["loss_autocast"], method  # autocast really ran in bf16
        assert row["decode_fast_path"]["ok"] and row["decode_fast_path"]["layers_built"] > 0, method
    truncation = rows["prompt"]["fast_path"]
    assert truncation["ok"] and truncation["positions_seen"][0] < truncation["positions_seen"][1]
    assert result["ok"] and result["device"] == "cpu"


def test_the_bench_measures_a_chosen_base_model_task_and_device(tiny_model_dir, tiny_vqa_dataset):
    setting = Setting(str(tiny_model_dir), "vqa", "cpu", str(tiny_vqa_dataset))
    row = measure_training("lora", "both", 2, 4, "2k", setting)
    assert row["device"] == "cpu" and row["precision"] == "float32" and row["batch_size"] == 4
    assert row["trainable_params"] > 0 and row["step_s"] > 0 and row["full_step_s"] > 0 and row["peak_mem_mb"] > 0


def test_one_job_runs_through_the_queue_and_a_worker_process(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    config = RunConfig(
        task="vqa",
        method="lora",
        budget="2k",
        base_model=str(tiny_model_dir),
        dataset=str(tiny_vqa_dataset),
        max_steps=2,
        batch_size=4,
        eval_limit=4,
    )
    result = gpu_check.run_queue_job(config, tmp_path, timeout_s=300)
    assert result["state"] == "finished", result
    assert result["device"] == "cpu" and result["precision"] == "float32" and result["total_steps"] == 2
    assert result["metrics"]["num_examples"] == 4


def test_collect_joins_the_pieces_and_evaluates_the_targets(tmp_path):
    def row(method, budget, speedup, peak):
        return {"method": method, "towers": "both", "budget": budget, "speedup_vs_full": speedup, "peak_mem_mb": peak}

    bench = {
        "train": [
            row("full", "0.5%", 1.0, 1000.0),
            row("lora", "0.5%", 1.5, 500.0),
            row("prompt", "0.5%", 0.8, 700.0),
            row("prompt", "1k", 2.0, 100.0),
        ]
    }
    (tmp_path / "bench-base.json").write_text(json.dumps(bench))
    (tmp_path / "job.json").write_text(json.dumps({"state": "finished"}))
    out = tmp_path / "results" / "bench-gpu.json"
    code = subprocess.run(
        [sys.executable, "-m", "training", "gpu-check", "collect", "--pieces", str(tmp_path), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert code.returncode == 0, code.stderr
    result = json.loads(out.read_text())
    assert result["job"] == {"state": "finished"} and "bench-default" not in result
    assert result["targets_base_size"] == [
        {
            "method": "lora",
            "speedup_vs_full": 1.5,
            "memory_share_of_full": 0.5,
            "meets_speedup": True,
            "meets_memory": True,
        },
        {
            "method": "prompt",
            "speedup_vs_full": 0.8,
            "memory_share_of_full": 0.7,
            "meets_speedup": False,
            "meets_memory": False,
        },
    ]


def test_the_gpu_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "gpu_check.sh")]).returncode == 0
