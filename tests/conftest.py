"""Shared fixtures: a tiny BLIP and tiny datasets that the tests build and save locally (no downloads)."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

# Runs that name no learning rate take one from results/lr.csv, tuned for the embedded default at 18k parameters.
# The tests' tiny models must not train at those rates, and the suite must not depend on how far the tuning has
# got: every test (and every process a test starts, which inherits the environment) sees a table that does not
# exist unless the test writes one there or points this variable at its own.
os.environ["VLPEFT_LR_TABLE"] = str(Path(tempfile.mkdtemp(prefix="vlpeft-lr-")) / "lr.csv")

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")
TINY_WORDS = (
    "a picture of there is an the red green blue yellow square circle small large question : what color is "
    "shape answer ? yes no how many 1 2 one two in"
).split()


def draw_tiny(color: str, shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    box = (6, 6, size - 6, size - 6)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLORS[color])
    return image


def write_tiny_dataset(root: Path, task: str, sizes: dict[str, int], seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "task": task}))
    for split, count in sizes.items():
        folder = root / split
        folder.mkdir(exist_ok=True)
        with open(folder / "metadata.jsonl", "w") as meta:
            for index in range(count):
                color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
                name = f"{index:04d}.png"
                draw_tiny(color, shape).save(folder / name)
                image_id = f"{split}-{index}"
                if task == "caption":
                    row = {
                        "file_name": name,
                        "image_id": image_id,
                        "captions": [
                            f"a {color} {shape}",
                            f"there is a {color} {shape}",
                            f"a picture of a {color} {shape}",
                        ],
                    }
                    meta.write(json.dumps(row) + "\n")
                else:
                    for q, (question, answer, qtype) in enumerate(
                        [
                            (f"what color is the {shape} ?", color, "color"),
                            (f"what shape is the {color} shape ?", shape, "shape"),
                        ]
                    ):
                        row = {
                            "file_name": name,
                            "image_id": image_id,
                            "question": question,
                            "answers": [answer] * 9 + ["no"],
                            "question_type": qtype,
                            "question_id": f"{image_id}-{q}",
                        }
                        meta.write(json.dumps(row) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from training.model.base_model import build_blip, save_base_model

    base = build_blip(
        list(TINY_WORDS),
        image_size=32,
        patch_size=8,
        vision_hidden=32,
        vision_layers=2,
        text_hidden=32,
        text_layers=2,
        heads=2,
        max_positions=48,
        seed=0,
    )
    return save_base_model(base, tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture(scope="session")
def tiny_caption_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(
        tmp_path_factory.mktemp("data") / "tiny-caption", "caption", {"train": 24, "validation": 4, "test": 6}
    )


@pytest.fixture(scope="session")
def tiny_vqa_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(
        tmp_path_factory.mktemp("data") / "tiny-vqa", "vqa", {"train": 16, "validation": 4, "test": 6}
    )
