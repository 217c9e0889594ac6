"""The embedded default's quality report and model card: `python -m training embedded-report`.

Makes, with the project's own trainer and into an empty work folder, the runs the card's checks need
(zero-shot, full fine-tuning and LoRA on captioning, each tuned one with three seeds; zero-shot and LoRA
on VQA), scores the caption runs on the validation split as well, probes the vision tower, and writes
`quality.json` and `README.md` beside the model. Every number in the card comes from these runs, and each
run's time is measured as it is made. The best fine-tuned caption candidate is chosen on validation; the test
split only checks (each candidate's margin over zero-shot in seed SDs, issue 28), never chooses.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

from training.data.dataset import load_dataset
from training.errors import UserError
from training.methods.vlmodel import VLModel
from training.model.base_model import load_base_model
from training.model.pixels import PixelCache
from training.paths import DEFAULT_MODEL_DIR, REPO_ROOT
from training.pretraining.probe import PROBE_TEST, PROBE_TRAIN, probe
from training.run import runs
from training.run.config import RunConfig
from training.run.evaluation import evaluate
from training.run.tasks import Encoder, answer_prior
from training.run.trainer import load_run, train
from training.sweeps.protocol import STUDY_SWEEP, study_settings

VALIDATION = "validation.json"
# The fine-tuned caption runs whose best (by mean validation CIDEr-D over HEADROOM_SEEDS) is set against
# zero-shot captioning: fine-tuning has headroom when it wins by more than its seed spread. They are the setting
# the study's headroom requirement names, "100 % data and tuned": no learning rate is given, so each takes its
# method's rate from results/lr.csv, and they run under the schedule that rate was tuned under (STUDY_SWEEP's
# caption epoch cap, patience, step floor, batch and test subset), at the tuning budget (18k) where a method has
# a knob. The checks (CHECKS) are separate runs: the app's defaults, whose time on the CPU the card reports.
CAPTION_CANDIDATES = {
    "caption-full-tuned": RunConfig(task="caption", method="full"),
    "caption-lora-tuned": RunConfig(task="caption", method="lora", towers="text", budget="18k"),
}
HEADROOM_SEEDS = (0, 1, 2)
# Issue 28's targets for the caption task: zero-shot between these shares of the best fine-tuned CIDEr-D
# (it already captions, and fine-tuning has room), and each candidate above zero-shot on test by this many seed SDs.
ZERO_SHOT_SHARE = (0.25, 0.70)
MARGIN_SDS = 5

CHECKS = {
    "caption-zero-shot": RunConfig(task="caption", method="zero-shot"),
    "caption-full": RunConfig(task="caption", method="full"),
    "vqa-zero-shot": RunConfig(task="vqa", method="zero-shot"),
    "vqa-lora": RunConfig(task="vqa", method="lora"),
}


def score_on_validation(run_dir: str | Path) -> dict:
    """Score a finished run's weights on its dataset's validation split and write validation.json beside them.

    The figures that choose anything (a learning rate, the best fine-tuned run) are these; the test split that
    the trainer scores at the end is reported, never used to choose.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    vl, adapter, info = load_run(run_dir)
    vl.set_active(adapter)
    config = RunConfig.from_dict(info["config"])
    examples = load_dataset(config.dataset, config.task).split("validation")
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    metrics, _ = evaluate(
        vl, config.task, examples, PixelCache(vl.base.processor), encoder, max_new_tokens=config.max_new_tokens
    )
    runs.write_json(
        run_dir / VALIDATION,
        {
            "task": config.task,
            "split": "validation",
            "metrics": metrics,
            "wall_s": round(time.perf_counter() - started, 2),
        },
    )
    return metrics


def study_schedule(task: str, sweep: Path = STUDY_SWEEP) -> dict:
    """The RunConfig fields of the study's schedule for a task, without the towers, which each candidate sets."""
    return {k: v for k, v in study_settings(task, sweep).items() if k != "towers"}


def planned_runs(seeds: tuple[int, ...] = HEADROOM_SEEDS) -> dict[str, RunConfig]:
    """Every run the report makes: the checks, and each caption candidate with every seed under the study's
    schedule."""
    planned = dict(CHECKS)
    schedule = study_schedule("caption")
    for name in CAPTION_CANDIDATES:
        for seed in seeds:
            planned[candidate_run(name, seed)] = dataclasses.replace(CAPTION_CANDIDATES[name], **schedule, seed=seed)
    return planned


def candidate_run(name: str, seed: int) -> str:
    return name if seed == CAPTION_CANDIDATES[name].seed else f"{name}-seed{seed}"


def run_checks(
    model_dir: Path,
    work_dir: Path,
    datasets: dict[str, str] | None = None,
    overrides: dict | None = None,
    seeds: tuple[int, ...] = HEADROOM_SEEDS,
    probe_scenes: tuple[int, int] = (PROBE_TRAIN, PROBE_TEST),
) -> dict:
    """Make every planned run into work_dir now and read its figures back; datasets and overrides (RunConfig
    fields such as max_steps) replace the defaults, for a quick report on another model or in the tests.
    probe_scenes: the held-out scenes that fit and score the vision probe."""
    datasets = datasets or {}
    same = model_dir.resolve() == DEFAULT_MODEL_DIR.resolve()
    results: dict = {}
    for name, template in planned_runs(seeds).items():
        config = dataclasses.replace(
            template,
            base_model=None if same else str(model_dir),
            dataset=datasets.get(template.task),
            **(overrides or {}),
        )
        run_dir = work_dir / name
        if run_dir.exists():
            raise UserError(
                f"{run_dir} already holds a run: give embedded-report an empty --work-dir, so that "
                "every figure in the card is measured by this command."
            )
        started = time.perf_counter()
        train(config, run_dir, install_signals=False)
        validation = score_on_validation(run_dir) if config.task == "caption" else None
        info = runs.read_json(run_dir / runs.CONFIG)
        evaluation = runs.read_json(run_dir / runs.EVAL)
        results[name] = {
            "command": info["command"],
            "trainable_params": info["trainable_params"],
            "lr": info["lr"],
            "lr_source": info.get("lr_source"),
            "total_steps": info["total_steps"],
            "wall_s": evaluation["wall_s"],
            "metrics": evaluation["metrics"],
            "validation": validation,
            "measured_s": round(time.perf_counter() - started, 1),
        }
    results["vqa-answer-prior"] = {"metrics": answer_prior(load_dataset(datasets.get("vqa"), "vqa"))}
    results["caption-headroom"] = headroom(results, seeds)
    results["vision-probe"] = probe(VLModel(load_base_model(str(model_dir))), *probe_scenes)
    return results


def headroom(results: dict, seeds: tuple[int, ...] = HEADROOM_SEEDS) -> dict:
    """Validation CIDEr-D of zero-shot and of the best fine-tuned candidate (mean over seeds, and its spread)."""
    candidates = {}
    for name in CAPTION_CANDIDATES:
        scores = [results[candidate_run(name, seed)]["validation"]["CIDEr-D"] for seed in seeds]
        test = [results[candidate_run(name, seed)]["metrics"]["CIDEr-D"] for seed in seeds]
        candidates[name] = {
            "seeds": list(seeds),
            "CIDEr-D": scores,
            "mean": statistics.mean(scores),
            "spread": max(scores) - min(scores),
            "test": test,
            "test_mean": statistics.mean(test),
            "test_sd": statistics.stdev(test) if len(test) > 1 else 0.0,
        }
    best = max(candidates, key=lambda name: candidates[name]["mean"])
    zero_shot = results["caption-zero-shot"]["validation"]["CIDEr-D"]
    return {
        "zero_shot": zero_shot,
        "best": best,
        "best_mean": candidates[best]["mean"],
        "best_spread": candidates[best]["spread"],
        "margin": candidates[best]["mean"] - zero_shot,
        "candidates": candidates,
    }


def verdicts(results: dict) -> list[tuple[str, bool, str]]:
    zs_cider = results["caption-zero-shot"]["metrics"]["CIDEr-D"]
    prior = results["vqa-answer-prior"]["metrics"]
    zs_vqa, lora_vqa = results["vqa-zero-shot"]["metrics"], results["vqa-lora"]["metrics"]
    below_prior = [t for t, acc in lora_vqa.get("per_type", {}).items() if acc <= prior["per_type"].get(t, 0)]
    slowest = max(results[name]["wall_s"] or 0 for name in CHECKS)
    room = results["caption-headroom"]
    share = room["zero_shot"] / room["best_mean"] if room["best_mean"] > 0 else float("inf")
    probed = results["vision-probe"]
    return [
        (
            "Fine-tuning beats zero-shot captioning on validation by more than its seed spread",
            room["margin"] > room["best_spread"],
            f"{room['best']} {room['best_mean']:.3f} (spread {room['best_spread']:.3f} over seeds "
            f"{', '.join(map(str, room['candidates'][room['best']]['seeds']))}) vs zero-shot {room['zero_shot']:.3f}: "
            f"margin {room['margin']:+.3f}",
        ),
        (
            f"Zero-shot captioning reaches {ZERO_SHOT_SHARE[0]:.0%} to {ZERO_SHOT_SHARE[1]:.0%} of the best "
            "fine-tuned CIDEr-D on validation (it captions, and has room)",
            room["best_mean"] > 0 and ZERO_SHOT_SHARE[0] <= share <= ZERO_SHOT_SHARE[1],
            f"{room['zero_shot']:.3f} vs {room['best_mean']:.3f} ({share:.0%})",
        ),
        (
            f"Full fine-tuning and LoRA beat zero-shot captioning on test by at least {MARGIN_SDS} seed SDs",
            all(c["test_mean"] - zs_cider > MARGIN_SDS * c["test_sd"] for c in room["candidates"].values()),
            "; ".join(
                f"{name} {c['test_mean']:.3f} (SD {c['test_sd']:.3f}, {len(c['test'])} seeds) vs {zs_cider:.3f}"
                for name, c in room["candidates"].items()
            ),
        ),
        (
            "Zero-shot VQA is near or below the answer prior",
            zs_vqa["accuracy"] <= prior["accuracy"] + 5,
            f"{zs_vqa['accuracy']:.1f} % vs prior {prior['accuracy']:.1f} %",
        ),
        (
            "LoRA on 100 % of the VQA data ends at least 20 points above the prior",
            lora_vqa["accuracy"] >= prior["accuracy"] + 20,
            f"{lora_vqa['accuracy']:.1f} % vs prior {prior['accuracy']:.1f} %",
        ),
        (
            "LoRA is above the prior on every question type",
            not below_prior,
            "all types" if not below_prior else "not on: " + ", ".join(below_prior),
        ),
        ("A default run finishes within 5 minutes on CPU", slowest <= 300, f"slowest default run {slowest:.0f} s"),
        (
            "A linear probe on the frozen vision features names each object's shape, colour, size and cell at "
            "least 90 % of the time (held-out scenes)",
            min(probed["accuracy"].values()) >= 0.9,
            ", ".join(f"{name} {accuracy:.1%}" for name, accuracy in probed["accuracy"].items())
            + f" on {probed['test_objects']} objects",
        ),
    ]


def model_card(model_dir: Path, results: dict, notes: list[str] | None = None) -> str:
    meta = runs.read_json(model_dir / "pretrain.json") or {}
    config = meta.get("config", {})
    prior = results["vqa-answer-prior"]["metrics"]
    dense, patch = "", ""
    if config.get("dense_weight"):
        dense = (
            f", plus (weight {config['dense_weight']:g}) a dense objective on the vision tower: a linear head "
            "on every output patch token names the shape, colour, size and grid cell of the object the patch "
            "shows, or background (the stand-in for real BLIP's ImageNet-initialised ViT; the head is dropped)"
        )
        final = (meta.get("history") or [{}])[-1].get("patch_accuracy") or {}
        if final:
            patch = "; final patch accuracy on object patches: " + ", ".join(f"{k} {v:.0%}" for k, v in final.items())
    if config.get("object_weight"):
        dense += (
            f", and (weight {config['object_weight']:g}) an object-level one: the patch tokens averaged over "
            "each object's patches name its shape, colour, size and cell (docs/embedded-world-v2.md)"
        )
    edition = config.get("edition", 1)
    placed = config.get("position_share", 1.0)
    lines = [
        "# scene-blip: the embedded default model of VL-PEFT Lab",
        "",
        "A small `BlipForConditionalGeneration` (ViT image encoder + BERT-style text decoder with cross-attention)",
        "pre-trained by this project on its procedurally generated scene world (`training/data/scenes.py`), so that",
        "the app, the CLI, the sweeps and the tests run offline on a CPU. Captioning these scenes is consistent with",
        "its pre-training; visual question answering is not (no question was seen in pre-training).",
        "",
        "## How it was made",
        f"- Command: `{meta.get('command', 'python -m training pretrain --out assets/scene-blip')}`",
        f"- Parameters: {meta.get('parameters', 0):,}; vocabulary: {meta.get('vocabulary')} word-level tokens.",
        f"- Architecture: {config.get('image_size')} px images, patch {config.get('patch_size')}, hidden "
        f"{config.get('hidden')}, {config.get('vision_layers')} vision + {config.get('text_layers')} text layers, "
        f"{config.get('heads')} heads.",
        f"- Data: {config.get('pool_images', 0):,} pre-training images (disjoint from every task split), each step "
        f"drawing fresh texts: {100 - 100 * config.get('sentence_share', 0):.0f} % noisy web-style alt-text, "
        f"{100 * config.get('sentence_share', 0):.0f} % complete sentences using the caption task's phrases "
        f"({100 * config.get('clause_share', 0.25):.0f} % of them as per-object clauses, the rest as lists in "
        f"frames the caption task {'also' if config.get('caption_frames', True) else 'never'} uses"
        + (
            f"; {100 * placed:.0f} % of the lists give each object's position, the rest name the objects only)."
            if placed < 1
            else ")."
        )
        + (
            " The caption task is the scene world's second edition: references in an annotator style that no "
            "pre-training text uses (docs/embedded-world-v2.md)."
            if edition == 2
            else ""
        ),
        f"- Objective: captioning (language modelling on the text, conditioned on the image){dense}; AdamW, "
        f"lr {config.get('lr')}, {config.get('warmup_steps')} warm-up steps then cosine decay, batch "
        f"{config.get('batch_size')}, {config.get('steps')} steps.",
        f"- Wall time: {meta.get('minutes')} minutes on the project's 2-core CPU machine; final caption loss "
        f"{meta.get('final_loss')}{patch}.",
        "",
        "## Quality (measured by `python -m training embedded-report` from the runs it makes)",
        "",
        "Headroom on the validation split: zero-shot captioning CIDEr-D "
        f"{results['caption-headroom']['zero_shot']:.3f}, best fine-tuned ({results['caption-headroom']['best']}, "
        f"mean of seeds) {results['caption-headroom']['best_mean']:.3f}. The other figures are on the test splits.",
        "",
        "| check | result | passed |",
        "|---|---|---|",
    ]
    for text, passed, detail in verdicts(results):
        lines.append(f"| {text} | {detail} | {'yes' if passed else 'no'} |")
    names = [name for name in results if "command" in results[name]]
    lines += [
        "",
        "| run | lr (from) | steps | validation | test | metric | wall time (run + validation) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        run, metrics = results[name], results[name]["metrics"]
        key = "CIDEr-D" if "CIDEr-D" in metrics else "accuracy"
        validation = f"{run['validation'][key]:.3f}" if run.get("validation") else "-"
        lr = f"{run['lr']:g} ({run.get('lr_source') or '?'})" if run["total_steps"] else "-"
        lines.append(
            f"| {name} | {lr} | {run['total_steps']} | {validation} | {metrics[key]:.3f} | {key} | "
            f"{run['measured_s']:.0f} s |"
        )
    lines += [
        "",
        "VQA accuracy per question type (%):",
        "",
        "| type | answer prior | zero-shot | LoRA |",
        "|---|---|---|---|",
    ]
    for qtype in sorted(prior["per_type"]):
        zs = results["vqa-zero-shot"]["metrics"]["per_type"].get(qtype, 0)
        lora = results["vqa-lora"]["metrics"]["per_type"].get(qtype, 0)
        lines.append(f"| {qtype} | {prior['per_type'][qtype]:.1f} | {zs:.1f} | {lora:.1f} |")
    lines += ["", "The commands of the runs above:", ""]
    lines += [f"- `{results[name]['command'].replace(str(REPO_ROOT) + '/', '')}`" for name in names]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines.append("")
    return "\n".join(lines)


def report(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    work_dir: str | Path | None = None,
    notes: list[str] | None = None,
    datasets: dict[str, str] | None = None,
    overrides: dict | None = None,
    seeds: tuple[int, ...] = HEADROOM_SEEDS,
    probe_scenes: tuple[int, int] = (PROBE_TRAIN, PROBE_TEST),
) -> dict:
    model_dir = Path(model_dir)
    work = Path(work_dir) if work_dir else model_dir.parent / ".quality-runs"
    work.mkdir(parents=True, exist_ok=True)
    results = run_checks(model_dir, work, datasets, overrides, seeds, probe_scenes)
    if notes:
        results["notes"] = notes
    runs.write_json(model_dir / "quality.json", results)
    (model_dir / "README.md").write_text(model_card(model_dir, results, notes))
    return results
