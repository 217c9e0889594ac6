"""The embedded default: the shipped model and datasets load offline and behave as the model card says."""

from __future__ import annotations

import json

import pytest
import torch

from training.base_model import load_base_model
from training.compare import GivenImage
from training.data import scenes
from training.data.dataset import DEFAULT_DATASETS, Example, load_dataset
from training.paths import DEFAULT_MODEL_DIR
from training.pixels import PixelCache
from training.tasks import Encoder, prompt_text
from training.vlmodel import VLModel


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
    return [encoder.decode(ids) for ids in vl.generate(embeds, prompts)]


def test_zero_shot_captions_describe_the_scene_in_the_worlds_words(embedded):
    examples = load_dataset(None, "caption").split("test")[:8]
    captions = decode(embedded, "caption", examples)
    vocabulary = set(scenes.vocabulary_words())
    for caption in captions:
        words = scenes.text_words(caption)
        assert words and set(words) <= vocabulary
        named = set(words) & set(scenes.SHAPES) | set(words) & set(scenes.COLORS)
        assert named, caption
    shapes_right = sum(any(s in c and s in " ".join(e.captions) for s in scenes.SHAPES)
                       for c, e in zip(captions, examples, strict=True))  # fmt: skip
    assert shapes_right >= 4


def test_zero_shot_model_answers_a_question_with_some_text(embedded):
    example = load_dataset(None, "vqa").split("test")[0]
    (answer,) = decode(embedded, "vqa", [example])
    assert isinstance(answer, str)


def test_pretraining_runs_both_objectives_and_saves_a_loadable_model(tmp_path):
    from training.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(steps=3, batch_size=4, warmup_steps=1, pool_images=8, hidden=32, vision_layers=1,
                            text_layers=1, heads=2)  # fmt: skip
    out = pretrain(config, tmp_path / "tiny-scene-blip")
    meta = json.loads((out / "pretrain.json").read_text())
    assert meta["config"]["dense_weight"] > 0 and set(meta["history"][-1]["patch_accuracy"]) == set(
        scenes.PATCH_LABEL_HEADS)  # fmt: skip
    vl = VLModel(load_base_model(str(out)))
    assert not any("linear" in name for name, _ in vl.model.named_parameters())  # the patch head is not saved
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    image = scenes.render_scene(scenes.sample_scene(scenes.scene_rng("pretrain", "train", 0)))
    pixels = PixelCache(vl.base.processor)([Example(GivenImage(image), "scene")])
    with torch.no_grad():
        generated = vl.generate(vl.encode_images(pixels), [encoder.prompt_ids(prompt_text("caption"))], 5)
    assert len(generated) == 1 and len(generated[0]) <= 5
