"""What the vision tower knows: a linear probe on its frozen features, object by object.

`python -m training probe [--model DIR]`. Every object of a held-out scene is represented by the mean of the
vision tower's output tokens over the patches the object covers (the patches `scenes.patch_labels` gives it),
and one linear classifier per attribute (shape, colour, size, grid cell) is fitted on the objects of
PROBE_TRAIN scenes and scored on those of PROBE_TEST scenes. Both sets come from the pre-training corpus's
validation and test streams, which pre-training never draws (it draws only its train stream), so the probe
measures what the tower generalises to, not what it memorised.
"""

from __future__ import annotations

import numpy as np
import torch

from training.data import scenes

ATTRIBUTES = ("shape", "color", "size", "cell")
PROBE_TRAIN = 2000  # scenes whose objects fit the probe (about 5 000 objects)
PROBE_TEST = 1000  # held-out scenes whose objects score it (about 2 500 objects)
_FIT_STEPS = 400


def probe_scenes(split: str, count: int, seed: int = 0) -> list[scenes.Scene]:
    """count scenes of the pre-training corpus's `split` stream ('validation' or 'test': never pre-trained on)."""
    if split == "train":
        raise ValueError("the probe's scenes must be held out: the pre-training corpus draws its train stream")
    return [scenes.sample_scene(scenes.scene_rng("pretrain", split, index, seed)) for index in range(count)]


def object_features(vl, scene_list: list[scenes.Scene], batch_size: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    """[objects, hidden] pooled frozen features and [objects, 4] labels (0-based shape, colour, size, cell).

    An object's feature is the mean of the tower's output patch tokens over the patches it covers."""
    vision = vl.model.config.vision_config
    size, patch = vision.image_size, vision.patch_size
    ip = vl.base.processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    colors = tuple(scenes.COLORS)
    features, labels = [], []
    vl.model.eval()
    for start in range(0, len(scene_list), batch_size):
        chunk = scene_list[start : start + batch_size]
        images = np.stack([np.asarray(scenes.render_scene(s, size), dtype=np.uint8) for s in chunk])
        pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        with torch.no_grad():
            tokens = vl.encode_images(pixels)[:, 1:].float().cpu()  # token 0 is [CLS]
        for scene, patch_tokens in zip(chunk, tokens, strict=True):
            # One object per grid cell, so the cell label says which object owns a patch.
            owner = scenes.patch_labels(scene, size, patch)[3]
            for obj in scene.objects:
                covered = torch.from_numpy(owner == obj.cell + 1)
                if not covered.any():
                    continue
                features.append(patch_tokens[covered].mean(0))
                labels.append(
                    (scenes.SHAPES.index(obj.shape), colors.index(obj.color), scenes.SIZES.index(obj.size), obj.cell)
                )
    return torch.stack(features), np.asarray(labels, dtype=np.int64)


def fit_linear(features: torch.Tensor, targets: torch.Tensor, classes: int, seed: int = 0) -> torch.nn.Linear:
    """A softmax classifier on standardised features, full-batch Adam with a little weight decay."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(_FIT_STEPS):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(features), targets).backward()
        optimizer.step()
    return linear


def probe(vl, train_count: int = PROBE_TRAIN, test_count: int = PROBE_TEST, seed: int = 0) -> dict:
    """Held-out accuracy of a linear probe per attribute, object by object, on the frozen vision features."""
    train_x, train_y = object_features(vl, probe_scenes("validation", train_count, seed))
    test_x, test_y = object_features(vl, probe_scenes("test", test_count, seed))
    center, scale = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - center) / scale, (test_x - center) / scale
    classes = (len(scenes.SHAPES), len(scenes.COLORS), len(scenes.SIZES), 9)
    accuracy = {}
    for column, (name, count) in enumerate(zip(ATTRIBUTES, classes, strict=True)):
        linear = fit_linear(train_x, torch.from_numpy(train_y[:, column]), count, seed)
        with torch.no_grad():
            predicted = linear(test_x).argmax(1).numpy()
        accuracy[name] = float((predicted == test_y[:, column]).mean())
    return {
        "accuracy": accuracy,
        "train_objects": len(train_y),
        "test_objects": len(test_y),
        "train_scenes": train_count,
        "test_scenes": test_count,
    }
