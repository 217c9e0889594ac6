"""The embedded default's quality report and model card: `python -m training embedded-report`.

Runs the checks the card promises (zero-shot vs full fine-tuning on captioning; zero-shot, the answer
prior and LoRA on VQA) with the project's own trainer, and writes `quality.json` and `README.md` beside
the model. Every number in the card comes from these runs.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from training import runs
from training.config import RunConfig
from training.data.dataset import load_dataset
from training.metrics.vqa import vqa_scores
from training.paths import DEFAULT_MODEL_DIR, REPO_ROOT
from training.tasks import majority_answer
from training.trainer import train

CHECKS = {
    "caption-zero-shot": RunConfig(task="caption", method="zero-shot"),
    "caption-full": RunConfig(task="caption", method="full"),
    "vqa-zero-shot": RunConfig(task="vqa", method="zero-shot"),
    "vqa-lora": RunConfig(task="vqa", method="lora"),
}


def answer_prior(task_dataset) -> dict:
    """VQA accuracy of always answering each question type's most common training answer."""
    train_split, test = task_dataset.split("train"), task_dataset.split("test")
    per_type: dict[str, Counter] = {}
    for example in train_split:
        per_type.setdefault(example.question_type, Counter())[majority_answer(example.answers)] += 1
    prior = {qtype: counts.most_common(1)[0][0] for qtype, counts in per_type.items()}
    predictions = [prior.get(e.question_type, "") for e in test]
    result = vqa_scores(predictions, [e.answers for e in test], [e.question_type for e in test])
    result.pop("per_sample", None)
    return {**result, "answers": prior}


def run_checks(model_dir: Path, work_dir: Path) -> dict:
    results: dict = {}
    for name, template in CHECKS.items():
        same = model_dir.resolve() == DEFAULT_MODEL_DIR.resolve()
        config = RunConfig(**{**template.to_dict(), "base_model": None if same else str(model_dir)})
        run_dir = work_dir / name
        started = time.perf_counter()
        if not (run_dir / runs.EVAL).exists():
            train(config, run_dir, install_signals=False)
        info = runs.read_json(run_dir / runs.CONFIG)
        evaluation = runs.read_json(run_dir / runs.EVAL)
        results[name] = {
            "command": info["command"], "trainable_params": info["trainable_params"],
            "total_steps": info["total_steps"], "wall_s": evaluation.get("wall_s"), "metrics": evaluation["metrics"],
            "measured_s": round(time.perf_counter() - started, 1),
        }  # fmt: skip
    results["vqa-answer-prior"] = {"metrics": answer_prior(load_dataset(None, "vqa"))}
    return results


def verdicts(results: dict) -> list[tuple[str, bool, str]]:
    zs_cider = results["caption-zero-shot"]["metrics"]["CIDEr-D"]
    full_cider = results["caption-full"]["metrics"]["CIDEr-D"]
    prior = results["vqa-answer-prior"]["metrics"]
    zs_vqa, lora_vqa = results["vqa-zero-shot"]["metrics"], results["vqa-lora"]["metrics"]
    below_prior = [t for t, acc in lora_vqa.get("per_type", {}).items() if acc <= prior["per_type"].get(t, 0)]
    slowest = max(results[name]["wall_s"] or 0 for name in CHECKS)
    return [
        ("Zero-shot captioning reaches at least half the CIDEr-D of full fine-tuning",
         zs_cider >= 0.5 * full_cider, f"{zs_cider:.3f} vs {full_cider:.3f} ({zs_cider / full_cider:.0%})"),
        ("Zero-shot VQA is near or below the answer prior",
         zs_vqa["accuracy"] <= prior["accuracy"] + 5, f"{zs_vqa['accuracy']:.1f} % vs prior {prior['accuracy']:.1f} %"),
        ("LoRA on 100 % of the VQA data ends at least 20 points above the prior",
         lora_vqa["accuracy"] >= prior["accuracy"] + 20,
         f"{lora_vqa['accuracy']:.1f} % vs prior {prior['accuracy']:.1f} %"),
        ("LoRA is above the prior on every question type", not below_prior,
         "all types" if not below_prior else "not on: " + ", ".join(below_prior)),
        ("A default run finishes within 5 minutes on CPU", slowest <= 300, f"slowest default run {slowest:.0f} s"),
    ]  # fmt: skip


def model_card(model_dir: Path, results: dict, notes: list[str] | None = None) -> str:
    meta = runs.read_json(model_dir / "pretrain.json") or {}
    config = meta.get("config", {})
    prior = results["vqa-answer-prior"]["metrics"]
    dense, patch = "", ""
    if config.get("dense_weight"):
        dense = (f", plus (weight {config['dense_weight']:g}) a dense objective on the vision tower: a linear head "
                 "on every output patch token names the shape, colour, size and grid cell of the object the patch "
                 "shows, or background (the stand-in for real BLIP's ImageNet-initialised ViT; the head is dropped)")
        final = (meta.get("history") or [{}])[-1].get("patch_accuracy") or {}
        if final:
            patch = "; final patch accuracy on object patches: " + ", ".join(f"{k} {v:.0%}" for k, v in final.items())
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
        f"{100 * config.get('sentence_share', 0):.0f} % complete sentences using the caption task's phrases.",
        f"- Objective: captioning (language modelling on the text, conditioned on the image){dense}; AdamW, "
        f"lr {config.get('lr')}, {config.get('warmup_steps')} warm-up steps then cosine decay, batch "
        f"{config.get('batch_size')}, {config.get('steps')} steps.",
        f"- Wall time: {meta.get('minutes')} minutes on the project's 2-core CPU machine; final caption loss "
        f"{meta.get('final_loss')}{patch}.",
        "",
        "## Quality (test splits, measured by `python -m training embedded-report`)",
        "",
        "| check | result | passed |",
        "|---|---|---|",
    ]
    for text, passed, detail in verdicts(results):
        lines.append(f"| {text} | {detail} | {'yes' if passed else 'no'} |")
    lines += ["", "| run | metric | value | steps | wall time |", "|---|---|---|---|---|"]
    for name in CHECKS:
        metrics = results[name]["metrics"]
        key = "CIDEr-D" if "CIDEr-D" in metrics else "accuracy"
        lines.append(f"| {name} | {key} | {metrics[key]:.3f} | {results[name]['total_steps']} | "
                     f"{results[name]['wall_s']:.0f} s |")  # fmt: skip
    lines += ["", "VQA accuracy per question type (%):", "", "| type | answer prior | zero-shot | LoRA |",
              "|---|---|---|---|"]  # fmt: skip
    for qtype in sorted(prior["per_type"]):
        zs = results["vqa-zero-shot"]["metrics"]["per_type"].get(qtype, 0)
        lora = results["vqa-lora"]["metrics"]["per_type"].get(qtype, 0)
        lines.append(f"| {qtype} | {prior['per_type'][qtype]:.1f} | {zs:.1f} | {lora:.1f} |")
    lines += ["", "The commands of the runs above:", ""]
    lines += [f"- `{results[name]['command'].replace(str(REPO_ROOT) + '/', '')}`" for name in CHECKS]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines.append("")
    return "\n".join(lines)


def report(model_dir: str | Path = DEFAULT_MODEL_DIR, work_dir: str | Path | None = None,
           notes: list[str] | None = None) -> dict:  # fmt: skip
    model_dir = Path(model_dir)
    work = Path(work_dir) if work_dir else model_dir.parent / ".quality-runs"
    work.mkdir(parents=True, exist_ok=True)
    results = run_checks(model_dir, work)
    if notes:
        results["notes"] = notes
    runs.write_json(model_dir / "quality.json", results)
    (model_dir / "README.md").write_text(model_card(model_dir, results, notes))
    return results
