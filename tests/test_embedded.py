"""The embedded default: the shipped model and datasets load offline and behave as the model card says."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from training.compare import GivenImage
from training.data import scenes
from training.data.dataset import load_dataset
from training.data.examples import Example
from training.methods.vlmodel import VLModel
from training.model.base_model import load_base_model
from training.model.pixels import PixelCache
from training.paths import DEFAULT_DATASETS, DEFAULT_MODEL_DIR
from training.run.evaluation import predict
from training.run.tasks import Encoder, prompt_text


@pytest.fixture(scope="module")
def embedded() -> VLModel:
    return VLModel(load_base_model(None))


def test_the_shipped_datasets_load_with_the_sizes_they_declare():
    for task in ("caption", "vqa"):
        declared = json.loads((DEFAULT_DATASETS[task] / "dataset.json").read_text())
        loaded = load_dataset(None, task)
        assert {s: len(loaded.split(s)) for s in ("train", "validation", "test")} == declared["splits"]


def test_the_model_is_small_safetensors_and_loads():
    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 20 * 1024**2
    assert not list(DEFAULT_MODEL_DIR.glob("*.bin")) and not list(DEFAULT_MODEL_DIR.glob("*.pt"))
    # Load time is a figure of the benchmark (`python -m training bench`), not an assertion here.
    base = load_base_model(None)
    assert sum(p.numel() for p in base.model.parameters()) < 5_000_000
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "python -m training pretrain" in card and "CIDEr-D" in card


def decode(vl: VLModel, task: str, examples) -> list[str]:
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    with torch.no_grad():
        embeds = vl.encode_images(PixelCache(vl.base.processor)(examples))
    prompts = [encoder.prompt_ids(prompt_text(task, e.question)) for e in examples]
    return [encoder.decode(task, ids) for ids in vl.generate(embeds, prompts)]


def test_zero_shot_captions_describe_the_scene_in_the_worlds_words(embedded):
    examples = load_dataset(None, "caption").split("test")[:8]
    captions = decode(embedded, "caption", examples)
    vocabulary = set(scenes.vocabulary_words())
    for caption in captions:
        words = scenes.text_words(caption)
        assert words and set(words) <= vocabulary
        named = set(words) & set(scenes.SHAPES) | set(words) & set(scenes.COLORS)
        assert named, caption
    shapes_right = sum(
        any(s in c and s in " ".join(e.captions) for s in scenes.SHAPES)
        for c, e in zip(captions, examples, strict=True)
    )
    assert shapes_right >= 4


def test_a_vqa_answer_ends_at_its_first_comma_or_full_stop_and_a_caption_is_kept_whole(embedded):
    encoder = Encoder(embedded.tokenizer, embedded.bos_id, embedded.sep_id, embedded.pad_id, embedded.max_positions)
    repeated, sentence = encoder.words("circle , circle , circle"), encoder.words("red . it is red")
    assert encoder.decode("vqa", repeated) == "circle" and encoder.decode("vqa", sentence) == "red"
    assert encoder.decode("caption", repeated) == "circle, circle, circle"
    assert encoder.decode("vqa", encoder.words(", circle")) == ""  # the rule holds from the first token on


def test_zero_shot_answers_are_scored_up_to_their_first_comma_or_full_stop(embedded):
    examples = load_dataset(None, "vqa").split("test")[:50]
    encoder = Encoder(embedded.tokenizer, embedded.bos_id, embedded.sep_id, embedded.pad_id, embedded.max_positions)
    answers = predict(embedded, "vqa", examples, PixelCache(embedded.base.processor), encoder)
    encoder.answer_end_ids = frozenset()  # the first edition's decoding: everything up to [SEP] or the limit
    whole = predict(embedded, "vqa", examples, PixelCache(embedded.base.processor), encoder)
    assert sum("," in w or "." in w for w in whole) >= 3  # "shapes blue circle, a large purple square and ..."
    assert answers == [w.split(",")[0].split(".")[0].strip() for w in whole]


def test_pretraining_runs_both_objectives_and_saves_a_loadable_model(tmp_path):
    from training.pretraining.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        steps=3,
        batch_size=4,
        warmup_steps=1,
        pool_images=8,
        hidden=32,
        vision_layers=1,
        text_layers=1,
        heads=2,
        clause_share=0.5,
        caption_frames=False,
    )
    out = pretrain(config, tmp_path / "tiny-scene-blip")
    meta = json.loads((out / "pretrain.json").read_text())
    assert meta["command"].endswith(
        "--steps 3 --pool-images 8 --clause-share 0.5 --no-caption-frames"
    )  # reproduces the recipe
    assert meta["config"]["dense_weight"] > 0 and set(meta["history"][-1]["patch_accuracy"]) == set(
        scenes.PATCH_LABEL_HEADS
    )
    vl = VLModel(load_base_model(str(out)))
    assert not any("linear" in name for name, _ in vl.model.named_parameters())  # the patch head is not saved
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    image = scenes.render_scene(scenes.sample_scene(scenes.scene_rng("pretrain", "train", 0)))
    pixels = PixelCache(vl.base.processor)([Example(GivenImage(image), "scene")])
    with torch.no_grad():
        generated = vl.generate(vl.encode_images(pixels), [encoder.prompt_ids(prompt_text("caption"))], 5)
    assert len(generated) == 1 and len(generated[0]) <= 5


def test_second_edition_pretraining_adds_the_object_objective_and_the_annotators_words(tmp_path):
    from training.pretraining.pretrain import PretrainConfig, pretrain

    config = PretrainConfig.for_edition(2)
    assert config.object_weight > 0 and config.position_share < 1
    config.steps, config.batch_size, config.warmup_steps, config.pool_images = 2, 4, 1, 8
    config.hidden, config.vision_layers, config.text_layers, config.heads = 32, 1, 1, 2
    out = pretrain(config, tmp_path / "tiny-v2")
    meta = json.loads((out / "pretrain.json").read_text())
    assert "--edition 2 --pool-images 8" in meta["command"]
    assert set(meta["history"][-1]["object_accuracy"]) == set(scenes.PATCH_LABEL_HEADS)
    vocabulary = load_base_model(str(out)).tokenizer.get_vocab()
    assert {"above", "against", "including"} <= set(vocabulary)
    with pytest.raises(ValueError, match="edition"):
        PretrainConfig.for_edition(3)


# Two steps, short decodes, a LoRA budget the tiny model can reach: the report's bookkeeping, not its quality.
TINY_RUNS = {"max_steps": 2, "max_new_tokens": 4, "eval_limit": 2, "budget": "2%"}


def test_embedded_report_measures_every_figure_from_runs_it_makes(
    tmp_path, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset
):
    from training.errors import UserError
    from training.pretraining.embedded import CAPTION_CANDIDATES, VALIDATION, report, study_schedule

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    datasets = {"caption": str(tiny_caption_dataset), "vqa": str(tiny_vqa_dataset)}
    work = tmp_path / "quality-runs"
    results = report(model_dir, work, datasets=datasets, overrides=TINY_RUNS, seeds=(0, 1), probe_scenes=(12, 6))

    quality = json.loads((model_dir / "quality.json").read_text())
    runs_made = {name: r for name, r in quality.items() if isinstance(r, dict) and "command" in r}
    assert set(runs_made) == {
        "caption-zero-shot",
        "caption-full",
        "caption-full-tuned",
        "caption-full-tuned-seed1",
        "caption-lora-tuned",
        "caption-lora-tuned-seed1",
        "vqa-zero-shot",
        "vqa-lora",
    }
    for name, run in runs_made.items():
        assert (work / name / "eval.json").is_file()  # made now, into the empty work folder
        assert run["measured_s"] > 0 and run["measured_s"] >= run["wall_s"] - 0.5, name
        assert run["total_steps"] == (0 if "zero-shot" in name else 2)
    room = quality["caption-headroom"]
    read_back = {
        name: json.loads((work / name / VALIDATION).read_text())["metrics"]["CIDEr-D"]
        for name in runs_made
        if name.startswith("caption")
    }
    assert room["zero_shot"] == read_back["caption-zero-shot"]
    for name in CAPTION_CANDIDATES:
        scores = [read_back[name], read_back[f"{name}-seed1"]]
        assert room["candidates"][name]["CIDEr-D"] == scores
        assert room["candidates"][name]["spread"] == max(scores) - min(scores)
    assert room["best"] == max(CAPTION_CANDIDATES, key=lambda n: room["candidates"][n]["mean"])
    assert room["margin"] == room["best_mean"] - room["zero_shot"]
    card = (model_dir / "README.md").read_text()
    assert f"zero-shot captioning CIDEr-D {room['zero_shot']:.3f}" in card
    assert f"{room['best_mean']:.3f}" in card and "seed spread" in card
    assert results["caption-headroom"] == room
    for name in CAPTION_CANDIDATES:
        test = [runs_made[name]["metrics"]["CIDEr-D"], runs_made[f"{name}-seed1"]["metrics"]["CIDEr-D"]]
        assert room["candidates"][name]["test"] == test
        assert room["candidates"][name]["test_sd"] == pytest.approx(abs(test[0] - test[1]) / 2**0.5)
    assert "seed SDs" in card and "of the best fine-tuned CIDEr-D on validation" in card
    probed = quality["vision-probe"]
    assert (probed["train_scenes"], probed["test_scenes"]) == (12, 6) and set(probed["accuracy"]) == {
        "shape",
        "color",
        "size",
        "cell",
    }
    assert f"shape {probed['accuracy']['shape']:.1%}" in card
    # The headroom runs train under the study's caption schedule (the one their learning rates were tuned under);
    # the checks are the app's defaults.
    schedule = study_schedule("caption")
    assert schedule["epochs"] == 3 and schedule["patience"] == 3 and schedule["min_steps"] == 300
    for name in runs_made:
        config = json.loads((work / name / "config.json").read_text())["config"]
        tuned = name.startswith("caption-") and "-tuned" in name
        assert (config["epochs"], config["min_steps"]) == ((3, 300) if tuned else (None, None)), name
        assert config["towers"] == ("text" if name.startswith("caption-lora") else "both"), name

    with pytest.raises(UserError, match="empty --work-dir"):
        report(model_dir, work, datasets=datasets, overrides=TINY_RUNS, seeds=(0, 1), probe_scenes=(12, 6))


def test_a_run_is_scored_on_the_validation_split_whatever_its_folder_is_called(
    tmp_path, tiny_model_dir, tiny_caption_dataset
):
    from training.pretraining.embedded import VALIDATION, score_on_validation
    from training.run.config import RunConfig
    from training.run.trainer import train

    run_dir = tmp_path / "lora-lr0.006-s0"  # a dot, which no adapter name may hold
    config = RunConfig(
        task="caption", method="lora", base_model=str(tiny_model_dir), dataset=str(tiny_caption_dataset), **TINY_RUNS
    )
    train(config, run_dir, install_signals=False)
    metrics = score_on_validation(run_dir)
    written = json.loads((run_dir / VALIDATION).read_text())
    assert written["split"] == "validation" and written["metrics"] == metrics
    assert metrics["num_examples"] == len(load_dataset(str(tiny_caption_dataset), "caption").split("validation"))


def test_pretrain_refuses_a_clause_share_outside_zero_to_one(tmp_path, capsys):
    from training.cli import main

    assert main(["pretrain", "--out", str(tmp_path / "m"), "--clause-share", "1.5"]) == 2
    assert "--clause-share 1.5 is outside [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--edition", "3"], "--edition 3 is not an edition"), (["--object-weight", "-1"], "--object-weight -1")],
)
def test_pretrain_refuses_an_unknown_edition_or_a_negative_object_weight(tmp_path, capsys, flags, message):
    from training.cli import main

    assert main(["pretrain", "--out", str(tmp_path / "m"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_stopped_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from training.pretraining import checkpoint, pretrain

    def tiny() -> pretrain.PretrainConfig:
        config = pretrain.PretrainConfig.for_edition(2)
        config.steps, config.batch_size, config.warmup_steps, config.pool_images = 6, 4, 1, 8
        config.hidden, config.vision_layers, config.text_layers, config.heads = 32, 1, 1, 2
        return config

    whole = pretrain.pretrain(tiny(), tmp_path / "whole", checkpoint_every=2)
    assert not checkpoint.exists(whole)  # a finished pre-training leaves no state behind

    steps = {"done": 0}
    clip = torch.nn.utils.clip_grad_norm_

    def dies_at_step_five(*args, **kwargs):
        steps["done"] += 1
        if steps["done"] == 5:
            raise KeyboardInterrupt("killed")
        return clip(*args, **kwargs)

    monkeypatch.setattr(pretrain.torch.nn.utils, "clip_grad_norm_", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(tiny(), tmp_path / "stopped", checkpoint_every=2)
    monkeypatch.setattr(pretrain.torch.nn.utils, "clip_grad_norm_", clip)
    assert json.loads((tmp_path / "stopped" / checkpoint.FOLDER / checkpoint.FIELDS).read_text())["step"] == 4

    other = tiny()
    other.lr = 0.5
    with pytest.raises(ValueError, match="lr"):  # another recipe never resumes this state
        pretrain.pretrain(other, tmp_path / "stopped", checkpoint_every=2)

    midway, step = pretrain.model_from_state(tmp_path / "stopped")  # what `probe --model OUT` reads midway
    saved = load_file(str(tmp_path / "stopped" / checkpoint.FOLDER / checkpoint.TENSORS))
    assert step == 4 and torch.equal(next(midway.model.parameters()), saved["weight.0"])

    resumed = pretrain.pretrain(tiny(), tmp_path / "stopped", checkpoint_every=2)
    expected, got = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    history = json.loads((resumed / "pretrain.json").read_text())["history"]
    assert [row["step"] for row in history] == [1]  # logged every 50 steps and at the first, across the stop
