"""Dataset folders: loading, validation errors that name split, line and field, nested fractions."""

from __future__ import annotations

import json
import shutil

import pytest

from training.data.dataset import load_dataset, nested_fraction, subset_hash
from training.errors import UserError


def test_folder_dataset_loads_every_split(tiny_caption_dataset, tiny_vqa_dataset):
    captions = load_dataset(str(tiny_caption_dataset), "caption")
    assert [len(captions.split(s)) for s in ("train", "validation", "test")] == [24, 4, 6]
    assert len(captions.split("train")[0].captions) == 3
    assert captions.split("train")[0].image.load().size == (32, 32)
    vqa = load_dataset(str(tiny_vqa_dataset), "vqa")
    first = vqa.split("test")[0]
    assert first.question.startswith("what") and len(first.answers) == 10 and first.question_type == "color"


def test_a_dataset_of_the_other_task_is_refused(tiny_caption_dataset):
    with pytest.raises(UserError, match="is a caption dataset, not a vqa one"):
        load_dataset(str(tiny_caption_dataset), "vqa")


@pytest.fixture
def broken(tiny_caption_dataset, tmp_path):
    """A copy of the tiny caption dataset to damage."""
    target = tmp_path / "broken"
    shutil.copytree(tiny_caption_dataset, target)
    return target


def rewrite_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_bad_json_line_is_named(broken):
    rewrite_line(broken / "train" / "metadata.jsonl", 3, "{not json")
    with pytest.raises(UserError, match=r"train/metadata.jsonl line 3: not valid JSON"):
        load_dataset(str(broken), "caption")


def test_missing_field_is_named(broken):
    rewrite_line(broken / "test" / "metadata.jsonl", 2, json.dumps({"file_name": "0001.png"}))
    with pytest.raises(UserError, match=r"test/metadata.jsonl line 2: missing field 'captions'"):
        load_dataset(str(broken), "caption")


def test_missing_image_is_named(broken):
    (broken / "validation" / "0002.png").unlink()
    with pytest.raises(UserError, match=r"validation/metadata.jsonl line 3: image file '0002.png'.*missing"):
        load_dataset(str(broken), "caption")


def test_unreadable_image_is_named(broken):
    (broken / "train" / "0000.png").write_bytes(b"this is not a png")
    readable = r"train/metadata.jsonl line 1: image file '0000.png' is not a readable image: .* Images must be PNG"
    with pytest.raises(UserError, match=readable + r".* Replace the file with the picture, or remove its line\.$"):
        load_dataset(str(broken), "caption")


def test_empty_split_is_refused(broken):
    (broken / "test" / "metadata.jsonl").write_text("")
    with pytest.raises(UserError, match="test split needs at least one example"):
        load_dataset(str(broken), "caption")


def test_folder_without_splits_is_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train/, validation/ or test/"):
        load_dataset(str(tmp_path / "empty"), "caption")


def test_nested_fractions_are_subsets_and_seeded():
    small, large = nested_fraction(1000, 0.05, seed=3), nested_fraction(1000, 0.25, seed=3)
    assert len(small) == 50 and len(large) == 250
    assert set(small) <= set(large)
    assert nested_fraction(1000, 0.05, seed=3) == small
    assert nested_fraction(1000, 0.05, seed=4) != small
    assert nested_fraction(10, 0.01, seed=0) and len(nested_fraction(10, 1.0, seed=0)) == 10


def test_subset_hash_changes_with_the_subset(tiny_caption_dataset):
    train = load_dataset(str(tiny_caption_dataset), "caption").split("train")
    assert subset_hash(train[:5]) == subset_hash(train[:5]) != subset_hash(train[:6])
