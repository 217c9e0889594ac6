"""The resident worker (training/launch/resident.py, training/run/resident.py): a run trained by a worker that has
already trained other runs (other methods, full fine-tuning among them) gives exactly what a fresh process gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from training.launch.executor import RunSpec, run_all, run_one
from training.launch.process import ProcessExecutor
from training.launch.resident import ResidentExecutor
from training.run import runs
from training.run.config import RunConfig
from training.run.resident import Resident


def run_config(model, data, **overrides) -> RunConfig:
    values = dict(
        task="vqa",
        method="lora",
        budget="2k",
        towers="text",  # the vision tower stays frozen: its image features are cached, and kept by the worker
        base_model=str(model),
        dataset=str(data),
        max_steps=6,
        val_every=2,
        patience=3,
        batch_size=4,
        eval_limit=6,
        lr=0.01,
        seed=0,
    )
    values.update(overrides)
    return RunConfig(**values)


def run_args(model, data, **overrides) -> list[str]:
    return run_config(model, data, **overrides).to_cli_args()


def outcome(run_dir) -> dict:
    """What a run decided and scored, and the weights it saved (everything but its clock)."""
    evaluation = runs.read_json(run_dir / runs.EVAL)
    metrics = {k: v for k, v in evaluation["metrics"].items() if not k.endswith("_s")}
    validation = {k: v for k, v in evaluation["validation"].items() if not k.endswith("_s")}
    return {
        "metrics": metrics,
        "validation": validation,
        "curve": [(v["step"], v["value"]) for v in runs.read_jsonl(run_dir / runs.VALIDATION)],
        "losses": [(r["step"], r["loss"]) for r in runs.read_jsonl(run_dir / runs.METRICS)],
        "predictions": runs.read_jsonl(run_dir / "predictions.jsonl"),
    }


def twin_dataset(source: Path, out: Path) -> Path:
    """A copy of the dataset folder `source` with every picture changed (colours inverted) under the same file name."""
    shutil.copytree(source, out)
    pictures = [p for p in out.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    assert pictures
    for path in pictures:
        with Image.open(path) as image:
            inverted = ImageOps.invert(image.convert("RGB"))
        inverted.save(path)
    return out


def test_the_worker_keeps_each_datasets_pictures_apart_even_under_the_same_ids(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    """Two datasets may give the same id to different pictures: a worker that trained on one must not hand its
    preprocessed images or frozen-tower features to a run on the other. (Checked on the store itself: the tiny
    model's losses hardly depend on its images, so a whole run would not show the mix-up.)"""
    twin = twin_dataset(tiny_vqa_dataset, tmp_path / "twin")
    resident, device = Resident(), torch.device("cpu")
    base = resident.base_model(str(tiny_model_dir), device)
    keys = [(str(tiny_vqa_dataset), "vqa"), (str(twin), "vqa")]
    examples = [resident.dataset(*key).split("train")[:4] for key in keys]
    assert [e.image_id for e in examples[0]] == [e.image_id for e in examples[1]]
    pixels = [resident.pixels(base, device, key)(found) for key, found in zip(keys, examples, strict=True)]
    assert not torch.equal(pixels[0], pixels[1])
    features = [
        resident.image_features(base, device, found, lambda p=p: {"embeds": p}, key)
        for key, found, p in zip(keys, examples, pixels, strict=True)
    ]
    assert torch.equal(features[1]["embeds"], pixels[1])


def test_a_run_in_a_reused_worker_gives_what_a_fresh_process_gives_bit_for_bit(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    target = run_args(tiny_model_dir, tiny_vqa_dataset)
    fresh = run_one(ProcessExecutor(), RunSpec("fresh", str(tmp_path / "fresh"), target, threads=1))
    assert fresh.finished, fresh.error

    executor = ResidentExecutor(1)
    (worker,) = executor.workers
    try:
        before = [
            run_args(tiny_model_dir, tiny_vqa_dataset, lr=0.05),  # LoRA on the same images, another rate
            run_args(tiny_model_dir, tiny_vqa_dataset, method="full", towers="both", lr=0.001),
            run_args(tiny_model_dir, tiny_vqa_dataset, method="prompt", towers="both", seed=1),
            run_args(tiny_model_dir, tiny_vqa_dataset, data_fraction=0.5),  # features of other training images
        ]
        for index, args in enumerate(before):
            result = run_one(executor, RunSpec(f"before{index}", str(tmp_path / f"before{index}"), args, threads=1))
            assert result.finished, result.error
        pid = worker.process.pid
        reused = run_one(executor, RunSpec("reused", str(tmp_path / "reused"), target, threads=1))
        assert reused.finished, reused.error
        assert worker.process.pid == pid, "the worker did not train the runs in one process"
    finally:
        executor.close()
    assert worker.process.exitcode == 0 and not worker.busy

    expected, got = outcome(tmp_path / "fresh"), outcome(tmp_path / "reused")
    assert len(expected["curve"]) == 4 and expected["validation"]["best_step"] in (0, 2, 4, 6)
    assert got == expected
    # The earlier LoRA run trained at another rate on the same data: it did end elsewhere (the check can fail).
    assert outcome(tmp_path / "before0")["losses"] != expected["losses"]
    weights = load_file(str(tmp_path / "fresh" / runs.WEIGHTS))
    reused_weights = load_file(str(tmp_path / "reused" / runs.WEIGHTS))
    assert weights.keys() == reused_weights.keys() and weights
    assert all(torch.equal(weights[name], reused_weights[name]) for name in weights)
    # config.json alike too, but for the run's folder in its command and its start time
    configs = [runs.read_json(tmp_path / side / runs.CONFIG) for side in ("fresh", "reused")]
    for config in configs:
        del config["command"], config["started_at"]
    assert configs[0] == configs[1] and configs[1]["feature_cache"]


def test_a_stopped_run_ends_its_worker_and_the_next_run_starts_a_fresh_one(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    executor = ResidentExecutor(1)
    (worker,) = executor.workers
    try:
        first = tmp_path / "first"
        first.mkdir()
        (first / runs.STOP).touch()  # the run stops before its first step, as on a STOP file from the app
        stopped = run_one(executor, RunSpec("first", str(first), run_args(tiny_model_dir, tiny_vqa_dataset), 1))
        assert stopped.returncode == runs.EXIT_STOPPED and worker.process.exitcode == 0
        assert runs.read_json(first / runs.PROGRESS)["phase"] == "stopped"
        bad = run_one(executor, RunSpec("bad", str(tmp_path / "bad"), ["--task", "vqa", "--method", "nope"], 1))
        assert bad.returncode == 2 and "nope" in bad.error
        after = run_one(
            executor, RunSpec("after", str(tmp_path / "after"), run_args(tiny_model_dir, tiny_vqa_dataset), 1)
        )
        assert after.finished, after.error
    finally:
        executor.close()


def test_tuning_runs_in_its_resident_worker_give_the_fresh_process_summaries(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    from training.study.tuning import TuningRuns, train_for_tuning

    configs = [run_config(tiny_model_dir, tiny_vqa_dataset, lr=lr) for lr in (0.05, 0.01)]
    resident = TuningRuns()
    try:
        summaries = [resident(config, tmp_path / f"resident{i}") for i, config in enumerate(configs)]
    finally:
        resident.close()
    expected = train_for_tuning(configs[1], tmp_path / "fresh")
    assert runs.read_json(tmp_path / "resident1" / runs.EVAL)["split"] is None  # --no-test, as tuning asks

    def choices(summary: dict) -> dict:
        return {k: v for k, v in summary.items() if k != "train_s"}

    assert choices(summaries[1]) == choices(expected) and expected["train_loss"] > 0
    assert choices(summaries[0]) != choices(summaries[1])  # the run before it, at another rate, ended elsewhere


def test_the_sweeps_local_executor_runs_a_job_alike_in_its_resident_worker_and_in_a_fresh_process(
    tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    from training.commands.sweep import local_executor

    args = run_args(tiny_model_dir, tiny_vqa_dataset, max_steps=2)
    for fresh, side in ((False, "resident"), (True, "fresh")):
        with local_executor(1, fresh_process=fresh) as executor:
            (result,) = list(run_all(executor, [RunSpec(side, str(tmp_path / side), args)]))
        assert result.finished, result.error
        assert executor.describe()["runs_in"] == ("resident workers" if side == "resident" else "a fresh process each")
    assert outcome(tmp_path / "resident") == outcome(tmp_path / "fresh")


def test_a_relative_run_folder_is_one_folder_for_the_launcher_and_the_run(
    tiny_model_dir, tiny_vqa_dataset, tmp_path, monkeypatch
):
    """A run launched with a relative run folder and another working folder (the replay bench's older commit) writes
    where its launcher looks: its log and its results in the same folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    args = run_args(tiny_model_dir, tiny_vqa_dataset, max_steps=2)
    result = run_one(ProcessExecutor(threads=1), RunSpec("rel", "runs/rel", args, cwd=str(tmp_path / "elsewhere")))
    assert result.finished, result.error
    assert (tmp_path / "runs" / "rel" / runs.EVAL).is_file() and (tmp_path / "runs" / "rel" / runs.LOG).is_file()
    assert not (tmp_path / "elsewhere" / "runs").exists()
