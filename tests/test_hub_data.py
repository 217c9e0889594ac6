"""Hub-format datasets (COCO-Karpathy and VQAv2 layouts), saved locally by the test: the code a Hub id runs."""

from __future__ import annotations

import datasets
import pytest
from PIL import Image

from tests.conftest import draw_tiny
from training.data.dataset import load_dataset
from training.errors import UserError


def karpathy_table() -> datasets.Dataset:
    images = [
        draw_tiny(c, s) for c, s in [("red", "square"), ("blue", "circle"), ("green", "square"), ("yellow", "circle")]
    ]
    return datasets.Dataset.from_dict(
        {
            "image": images,
            "cocoid": [11, 12, 13, 14],
            "sentences": [
                [{"raw": "a red square", "tokens": ["a", "red", "square"]}],
                [{"raw": "a blue circle"}],
                [{"raw": "a green square"}],
                [{"raw": "a yellow circle"}],
            ],
            "split": ["train", "restval", "val", "test"],
        }
    ).cast_column("image", datasets.Image())


def test_karpathy_layout_with_a_split_column_loads_from_a_hub_style_folder(tmp_path):
    folder = tmp_path / "coco-karpathy"
    (folder / "data").mkdir(parents=True)
    karpathy_table().to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    loaded = load_dataset(str(folder), "caption")
    assert [len(loaded.split(s)) for s in ("train", "validation", "test")] == [2, 1, 1]
    first = loaded.split("train")[0]
    assert first.captions == ["a red square"] and first.image_id == "11"
    assert isinstance(first.image.load(), Image.Image) and first.image.load().mode == "RGB"


def test_vqav2_layout_loads_from_save_to_disk(tmp_path):
    images = [draw_tiny("red", "square"), draw_tiny("blue", "circle")]
    answers = [
        [{"answer": "red", "answer_confidence": "yes", "answer_id": i} for i in range(10)],
        [{"answer": "circle", "answer_confidence": "yes", "answer_id": i} for i in range(10)],
    ]
    split = datasets.Dataset.from_dict(
        {
            "image": images,
            "question": ["what color is it?", "what shape is it?"],
            "answers": answers,
            "question_type": ["what color is the", "what shape is"],
            "answer_type": ["other", "other"],
            "question_id": [1, 2],
            "image_id": [7, 8],
            "multiple_choice_answer": ["red", "circle"],
        }
    ).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(str(tmp_path / "vqav2"))
    loaded = load_dataset(str(tmp_path / "vqav2"), "vqa")
    example = loaded.split("test")[1]
    assert example.question == "what shape is it?" and example.answers == ["circle"] * 10
    assert example.question_type == "what shape is" and example.question_id == "2"


def test_a_table_without_the_needed_columns_is_explained(tmp_path):
    table = datasets.Dataset.from_dict({"image": [draw_tiny("red", "square")], "label": [3]})
    datasets.DatasetDict({"train": table.cast_column("image", datasets.Image())}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(UserError, match="no captions column"):
        load_dataset(str(tmp_path / "d"), "caption")


def test_an_unreachable_hub_id_is_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="could not be loaded as a dataset"):
        load_dataset("no-such-user/no-such-dataset", "vqa")


def test_a_test_split_without_answers_falls_back_to_validation(tmp_path):
    def split(answers):
        return datasets.Dataset.from_dict(
            {
                "image": [draw_tiny("red", "square")],
                "question": ["what color is it?"],
                "answers": [answers],
            }
        ).cast_column("image", datasets.Image())

    datasets.DatasetDict(
        {"train": split(["red"] * 10), "validation": split(["red"] * 10), "test": split([])}
    ).save_to_disk(str(tmp_path / "vqa"))
    loaded = load_dataset(str(tmp_path / "vqa"), "vqa")
    assert loaded.split("test") is loaded.split("validation") and loaded.split("test")[0].answers == ["red"] * 10


def test_a_karpathy_hub_id_with_restval_as_its_own_split_and_coco_file_paths(tmp_path, monkeypatch):
    """yerevann/coco-karpathy's layout: captions and COCO 2014 file paths, no pictures, `restval` as a split. The
    rows name images under the folder the run starts in, and restval is training data as in Karpathy's split."""
    for folder, name, colour in [
        ("train2014", "a.png", "red"),
        ("val2014", "b.png", "blue"),
        ("val2014", "c.png", "green"),
    ]:
        (tmp_path / folder).mkdir(exist_ok=True)
        draw_tiny(colour, "square").save(tmp_path / folder / name)

    def split(folder: str, name: str, cocoid: int, caption: str) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"filepath": [folder], "filename": [name], "sentences": [[caption, caption + " again"]], "cocoid": [cocoid]}
        )

    hub = datasets.DatasetDict(
        {
            "train": split("train2014", "a.png", 1, "a red square"),
            "restval": split("val2014", "b.png", 2, "a blue square"),
            "validation": split("val2014", "c.png", 3, "a green square"),
            "test": split("val2014", "c.png", 3, "a green square"),
        }
    )
    monkeypatch.setattr("training.data.hub._open", lambda name: hub)
    monkeypatch.chdir(tmp_path)
    loaded = load_dataset("yerevann/coco-karpathy", "caption")
    train = loaded.split("train")
    assert [e.image_id for e in train] == ["1", "2"] and train[1].captions == ["a blue square", "a blue square again"]
    assert train[1].image.load().getpixel((16, 16)) == draw_tiny("blue", "square").convert("RGB").getpixel((16, 16))
    assert [e.image_id for e in loaded.split("validation")] == ["3"]
