"""The trainer end to end on the tiny model: run directory contract, frozen base, stop, caching, re-evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from training.catalog import PEFT_METHODS
from training.data.dataset import load_dataset
from training.methods.vlmodel import VLModel
from training.methods.wrappers import unwrapped_name
from training.model.base_model import load_base_model
from training.model.pixels import PixelCache
from training.run import runs
from training.run.config import RunConfig
from training.run.evaluation import decode_rows, predict
from training.run.tasks import Encoder, prompt_text, training_pairs
from training.run.trainer import EXIT_STOPPED, batch_loss, load_run, precompute_features, reevaluate, train
from training.run.validation import Validator


def config(model, data, **overrides) -> RunConfig:
    values = dict(
        task="vqa",
        method="lora",
        budget="2k",
        base_model=str(model),
        dataset=str(data),
        max_steps=4,
        batch_size=4,
        eval_limit=6,
        seed=0,
    )
    values.update(overrides)
    return RunConfig(**values)


def test_a_caption_run_writes_the_whole_run_directory(tiny_model_dir, tiny_caption_dataset, tmp_path):
    run = tmp_path / "run"
    assert train(config(tiny_model_dir, tiny_caption_dataset, task="caption"), run, install_signals=False) == 0
    info = json.loads((run / "config.json").read_text())
    assert info["config"]["method"] == "lora" and info["knob"] == "rank" and info["knob_value"] >= 1
    assert info["trainable_params"] > 0 and info["total_params"] > info["trainable_params"]
    assert info["train_examples"] == 24 and info["train_pairs"] == 72 and len(info["subset_hash"]) == 16
    assert info["command"].startswith("python -m training train --task caption --method lora")
    rows = runs.read_jsonl(run / "metrics.jsonl")
    assert rows[-1]["step"] == 4 and rows[-1]["total_steps"] == 4
    assert set(rows[-1]) >= {"step", "total_steps", "epoch", "loss", "lr", "samples_per_s", "elapsed_s", "eta_s"}
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert set(metrics) >= {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"} and metrics["num_examples"] == 6
    assert len(runs.read_jsonl(run / "predictions.jsonl")) == 6
    assert set(load_file(str(run / "weights.safetensors"))) == {
        k for k in load_file(str(run / "weights.safetensors")) if "lora_" in k
    }
    assert "done:" in (run / "log.txt").read_text()
    assert runs.read_json(run / "progress.json")["phase"] == "done"


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_training_changes_outputs_and_leaves_base_weights_unchanged(
    method, tiny_model_dir, tiny_vqa_dataset, tmp_path
):
    before = {k: v.clone() for k, v in load_base_model(str(tiny_model_dir)).model.state_dict().items()}
    run = tmp_path / method
    # patience 0: a fixed schedule, so that the last step's weights are kept (under validation a run that does
    # not beat its starting weights on the tiny set keeps those, which would hide whether training moved them).
    cfg = config(tiny_model_dir, tiny_vqa_dataset, method=method, max_steps=12, lr=2e-2, patience=0)
    assert train(cfg, run, install_signals=False) == 0
    vl, adapter, _ = load_run(run)
    trained = {}
    for key, value in vl.model.state_dict().items():  # every base tensor, also inside the wrapped layers
        trained.setdefault(unwrapped_name(key), value)
    assert set(before) <= set(trained)
    assert all(torch.equal(trained[k], before[k]) for k in before)
    info = json.loads((run / "config.json").read_text())
    weights = load_file(str(run / "weights.safetensors"))
    assert sum(v.numel() for v in weights.values()) == info["trainable_params"]
    # The same adapter freshly attached (its initialisation is seeded) is the model before training.
    fresh = VLModel(load_base_model(str(tiny_model_dir)))
    fresh.attach(method, "before", "both", info["knob_value"])
    fresh.set_active("before")
    vl.set_active(adapter)
    examples = load_dataset(str(tiny_vqa_dataset), "vqa").split("train")[:16]
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    batch = training_pairs("vqa", examples)
    with torch.no_grad():
        after = batch_loss(vl, batch, encoder, PixelCache(vl.base.processor), {})
        before = batch_loss(fresh, batch, encoder, PixelCache(fresh.base.processor), {})
    assert after < before


def test_zero_shot_evaluates_without_training(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    run = tmp_path / "zs"
    assert train(config(tiny_model_dir, tiny_vqa_dataset, method="zero-shot"), run, install_signals=False) == 0
    info = json.loads((run / "config.json").read_text())
    assert info["total_steps"] == 0 and info["trainable_params"] == 0
    assert not (run / "metrics.jsonl").exists()
    assert "accuracy" in json.loads((run / "eval.json").read_text())["metrics"]


def test_full_fine_tuning_trains_every_weight_and_reloads(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    run = tmp_path / "full"
    cfg = config(tiny_model_dir, tiny_vqa_dataset, method="full", max_steps=3, patience=0)  # keep the last step
    assert train(cfg, run, install_signals=False) == 0
    info = json.loads((run / "config.json").read_text())
    assert info["trainable_params"] == info["total_params"]
    trained, adapter, _ = load_run(run)
    base = load_base_model(str(tiny_model_dir)).model.state_dict()
    changed = [k for k, v in trained.model.state_dict().items() if k in base and not torch.equal(v, base[k])]
    assert len(changed) > 10


def test_a_stop_request_keeps_the_weights_and_skips_evaluation(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    run = tmp_path / "stopped"
    run.mkdir()
    (run / runs.STOP).touch()
    assert train(config(tiny_model_dir, tiny_vqa_dataset, max_steps=50), run, install_signals=False) == EXIT_STOPPED
    assert (run / "weights.safetensors").exists() and not (run / "eval.json").exists()
    assert runs.read_json(run / "progress.json")["phase"] == "stopped"


def test_cached_image_features_give_the_same_loss_as_the_vision_tower(tiny_model_dir, tiny_vqa_dataset):
    base = load_base_model(str(tiny_model_dir))
    vl = VLModel(base)
    vl.attach("lora", "a", "text", 2)
    vl.set_active("a")
    examples = load_dataset(str(tiny_vqa_dataset), "vqa").split("train")[:8]
    pixels = PixelCache(base.processor)
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    batch = training_pairs("vqa", examples)
    features = precompute_features(vl, examples, pixels)
    with torch.no_grad():
        cached = batch_loss(vl, batch, encoder, pixels, features)
        direct = batch_loss(vl, batch, encoder, pixels, {})
    assert torch.allclose(cached, direct, atol=1e-6)


def test_decoding_from_cached_features_in_wide_batches_gives_the_plain_paths_predictions(
    tiny_model_dir, tiny_vqa_dataset
):
    """Validation decodes every question at once from features computed once per run; the plain path runs the
    vision tower per narrow batch. The features are the same bits, each row's tokens the same, and its logits the
    same up to float rounding (a matrix product's sums group differently at another batch width)."""
    base = load_base_model(str(tiny_model_dir))
    vl = VLModel(base)
    vl.attach("lora", "a", "text", 2, seed=1)
    with torch.no_grad():  # LoRA starts as the identity: give it an effect
        for name, param in vl.model.named_parameters():
            if "lora" in name:
                param.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    vl.set_active("a")
    vl.model.eval()
    dataset = load_dataset(str(tiny_vqa_dataset), "vqa")
    examples = dataset.split("validation") + dataset.split("test")
    pixels = PixelCache(base.processor)
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    features = precompute_features(vl, examples, pixels)
    embeds = torch.stack([features[e.image_id] for e in examples])
    assert torch.equal(embeds, torch.cat([vl.encode_images(pixels([e])) for e in examples]))
    prompts = [encoder.prompt_ids(prompt_text("vqa", e.question)) for e in examples]
    wide_tokens, wide_logits = vl.generate(embeds, prompts, 6, return_logits=True)
    for start in range(0, len(examples), 3):
        tokens, logits = vl.generate(embeds[start : start + 3], prompts[start : start + 3], 6, return_logits=True)
        assert tokens == wide_tokens[start : start + 3]
        for narrow, wide in zip(logits, wide_logits[start : start + 3], strict=True):
            assert torch.allclose(narrow, wide, atol=1e-5, rtol=0)
    plain = predict(vl, "vqa", examples, pixels, encoder, batch_size=3, max_new_tokens=6)
    cached = predict(vl, "vqa", examples, pixels, encoder, max_new_tokens=6, features=features)
    assert decode_rows(vl) >= len(examples)  # one batch
    assert cached == plain and len(set(plain)) > 2
    validator = Validator("vqa", examples, pixels, encoder, max_new_tokens=6, patience=1)
    plain_score, _ = validator.score(vl)
    validator.features = features
    assert validator.score(vl)[0] == plain_score


def test_decoding_batches_are_as_wide_as_the_cross_attention_cache_allows():
    def model(image_size, patch_size, layers, hidden):
        vision = SimpleNamespace(image_size=image_size, patch_size=patch_size)
        text = SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden)
        return SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(vision_config=vision, text_config=text)))

    assert decode_rows(model(64, 8, 4, 160)) == 1024  # the embedded default: 0.3 MB a row, capped
    assert decode_rows(model(384, 16, 12, 768)) == 64  # BLIP-base: 42 MB a row, never narrower than 64
    assert decode_rows(model(128, 16, 4, 256)) == 512 * 2**20 // (2 * 4 * 65 * 256 * 4)


def test_reevaluate_reproduces_the_recorded_metrics(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    run = tmp_path / "run"
    train(config(tiny_model_dir, tiny_vqa_dataset), run, install_signals=False)
    recorded = json.loads((run / "eval.json").read_text())["metrics"]
    again = reevaluate(run, device="cpu")
    assert again["accuracy"] == recorded["accuracy"] and again["per_type"] == recorded["per_type"]


def test_data_fraction_trains_on_a_nested_subset(tiny_model_dir, tiny_vqa_dataset, tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    train(
        config(tiny_model_dir, tiny_vqa_dataset, method="zero-shot", data_fraction=0.25), small, install_signals=False
    )
    train(config(tiny_model_dir, tiny_vqa_dataset, method="zero-shot", data_fraction=0.5), large, install_signals=False)
    a, b = (json.loads((r / "config.json").read_text()) for r in (small, large))
    assert (a["train_examples"], b["train_examples"]) == (8, 16)
    assert a["subset_hash"] != b["subset_hash"]


def test_the_run_directory_rounds_step_records_in_metrics_jsonl_and_progress(tmp_path):
    run = runs.RunDirectory(tmp_path / "run")
    run.write_step(runs.StepRecord(5, 10, 0.123456, 0.43274999, 1e-3, 12.34567, 1.23456, 3.0))
    row = {
        "step": 5,
        "total_steps": 10,
        "epoch": 0.123,
        "loss": 0.43275,
        "lr": 1e-3,
        "samples_per_s": 12.35,
        "elapsed_s": 1.23,
        "eta_s": 3.0,
    }
    assert runs.read_jsonl(run.path / runs.METRICS) == [row]
    assert runs.read_json(run.path / runs.PROGRESS) == {"phase": "training", **row}
    run.set_phase("evaluating", eval_done=2, eval_total=6)
    assert runs.read_json(run.path / runs.PROGRESS) == {**row, "phase": "evaluating", "eval_done": 2, "eval_total": 6}
