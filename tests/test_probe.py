"""The vision probe: object-by-object features pooled over covered patches, held-out scenes, one linear probe
per attribute; and the object-level pre-training head it checks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.data import scenes
from training.methods.vlmodel import VLModel
from training.model.base_model import load_base_model
from training.pretraining.pretrain import ObjectHead
from training.pretraining.probe import ATTRIBUTES, object_features, probe, probe_scenes


class PatchLabelTower:
    """A stand-in for a VLModel whose vision tower outputs, for every patch, the one-hot shape label of the object
    that covers it (times `knows`) plus unit noise (when `noisy`). It reads the scenes it is shown from a queue,
    in the order the probe renders them."""

    def __init__(self, scene_queue: list[scenes.Scene], knows: float = 1.0, noisy: bool = True) -> None:
        vision = SimpleNamespace(image_size=64, patch_size=8)
        self.model = SimpleNamespace(config=SimpleNamespace(vision_config=vision), eval=lambda: None)
        processor = SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3)
        self.base = SimpleNamespace(processor=SimpleNamespace(image_processor=processor))
        self.queue, self.knows, self.noisy = list(scene_queue), knows, noisy
        self.noise = torch.Generator().manual_seed(0)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = [self.queue.pop(0) for _ in range(len(pixels))]
        labels = torch.from_numpy(np.stack([scenes.patch_labels(s, 64, 8)[0] for s in batch]))
        tokens = self.knows * torch.nn.functional.one_hot(labels, len(scenes.SHAPES) + 1).float()
        if self.noisy:
            tokens = tokens + torch.randn(tokens.shape, generator=self.noise)
        return torch.cat([torch.zeros(len(batch), 1, tokens.shape[2]), tokens], dim=1)  # token 0: [CLS]


def test_object_features_pool_the_patches_each_object_covers():
    scene_list = probe_scenes("validation", 6)
    features, labels = object_features(PatchLabelTower(scene_list, noisy=False), scene_list, batch_size=4)
    colors = tuple(scenes.COLORS)
    expected = [
        [scenes.SHAPES.index(o.shape), colors.index(o.color), scenes.SIZES.index(o.size), o.cell]
        for s in scene_list
        for o in s.objects
    ]
    assert labels.tolist() == expected
    # Every patch an object covers carries its shape, so the mean of their one-hots is exactly that shape.
    assert torch.equal(features.argmax(1) - 1, torch.from_numpy(labels[:, 0]))
    assert torch.allclose(features.max(1).values, torch.ones(len(features)))


def test_the_probe_finds_what_a_tower_knows_and_not_what_it_does_not():
    shown = probe_scenes("validation", 100) + probe_scenes("test", 50)
    knowing, blind = PatchLabelTower(shown, knows=3.0), PatchLabelTower(shown, knows=0.0)
    knows = probe(knowing, train_count=100, test_count=50)["accuracy"]
    guesses = probe(blind, train_count=100, test_count=50)["accuracy"]
    assert set(knows) == set(ATTRIBUTES)
    assert knows["shape"] > 0.95
    assert guesses["shape"] < 0.4  # five shapes: chance is 0.2
    assert knows["color"] < 0.4  # the stand-in tower knows shape only


def test_the_probe_refuses_scenes_pre_training_draws():
    with pytest.raises(ValueError, match="held out"):
        probe_scenes("train", 3)


def test_the_probe_runs_on_a_real_model(tiny_model_dir):
    result = probe(VLModel(load_base_model(str(tiny_model_dir))), train_count=20, test_count=10)
    assert result["train_scenes"] == 20 and result["test_scenes"] == 10
    assert result["test_objects"] == sum(len(s.objects) for s in probe_scenes("test", 10))
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())


def test_object_head_pools_each_object_and_names_its_labels():
    scene = scenes.sample_scene(scenes.scene_rng("pretrain", "train", 3))
    labels = torch.from_numpy(scenes.patch_labels(scene, 64, 8)).unsqueeze(0)  # [1, 4, 64]
    owner = labels[0, 3]
    # Tokens that are the patch's own labels: a head reading them can be fitted exactly.
    tokens = torch.nn.functional.one_hot(labels[0, 0], 6).float().unsqueeze(0)
    head = ObjectHead(6)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
        head.linear.weight[:6] = torch.eye(6) * 10  # the shape classifier reads the one-hot
    loss, accuracy = head(tokens, labels)
    assert accuracy[0] == 1.0 and len(accuracy) == 4
    assert owner.unique().numel() - 1 == len(scene.objects)
    assert torch.isfinite(loss)
