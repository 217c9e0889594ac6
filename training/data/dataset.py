"""Task datasets: captioning and VQA examples from a local folder or a Hugging Face Hub dataset.

Folder format (the Hugging Face `imagefolder` convention): `DIR/{train,validation,test}/metadata.jsonl`
with the images beside it. Captioning lines: `{"file_name", "captions": [...]}`; VQA lines:
`{"file_name", "question", "answers": [...]}`, optionally `question_type`, `question_id`, `image_id`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.data.examples import Example, ImageFile, TaskDataset, unreadable_image
from training.data.hub import load_hub_dataset
from training.errors import UserError
from training.paths import DEFAULT_DATASETS

SPLITS = ("train", "validation", "test")


def _read_split(folder: Path, split: str, task: str) -> list[Example]:
    meta = folder / split / "metadata.jsonl"
    if not meta.is_file():
        return []
    examples = []
    required = ("file_name", "captions") if task == "caption" else ("file_name", "question", "answers")
    with meta.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{meta} line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: not valid JSON ({exc.msg}). Fix or remove that line.") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object with {', '.join(required)}.")
            for key in required:
                if key not in row:
                    raise UserError(f"{where}: missing field {key!r} (a {task} dataset needs {', '.join(required)}).")
            image_path = folder / split / str(row["file_name"])
            if not isinstance(row["file_name"], str) or not image_path.resolve().is_relative_to(
                (folder / split).resolve()
            ):
                raise UserError(
                    f"{where}: field 'file_name' ({str(row['file_name'])[:80]!r}) must be a path inside "
                    f"the {split}/ folder, like '0001.png'."
                )
            if not image_path.is_file():
                raise UserError(f"{where}: image file {row['file_name']!r} (field 'file_name') is missing.")
            _check_image_header(image_path, where)
            image_id = str(row.get("image_id") or f"{split}/{row['file_name']}")
            if task == "caption":
                captions = row["captions"]
                if isinstance(captions, str):
                    captions = [captions]
                if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
                    raise UserError(f"{where}: field 'captions' must be a non-empty list of strings.")
                examples.append(Example(ImageFile(str(image_path)), image_id, captions=captions))
            else:
                answers = row["answers"]
                if not isinstance(row["question"], str) or not row["question"].strip():
                    raise UserError(f"{where}: field 'question' must be a non-empty string.")
                if not isinstance(answers, list) or not answers:
                    raise UserError(f"{where}: field 'answers' must be a non-empty list.")
                answers = [a["answer"] if isinstance(a, dict) else str(a) for a in answers]
                question_id = str(row.get("question_id") or f"{image_id}#{line_no}")
                examples.append(
                    Example(
                        ImageFile(str(image_path)),
                        image_id,
                        question=row["question"],
                        answers=answers,
                        question_type=row.get("question_type"),
                        question_id=question_id,
                    )
                )
    if not examples:
        raise UserError(f"{meta} is empty: the {split} split needs at least one example.")
    return examples


def _check_image_header(path: Path, where: str) -> None:
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (reads the header only)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        fix = "Replace the file with the picture, or remove its line."
        raise UserError(unreadable_image(f"{where}: image file {path.name!r}", fix)) from None


def detect_task(folder: Path) -> str | None:
    info = folder / "dataset.json"
    if info.is_file():
        try:
            return json.loads(info.read_text()).get("task")
        except (OSError, json.JSONDecodeError):
            return None
    return None


def load_folder_dataset(folder: str | Path, task: str) -> TaskDataset:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"Dataset folder {folder} does not exist.")
    declared = detect_task(path)
    if declared and declared != task:
        raise UserError(f"Dataset {folder} is a {declared} dataset, not a {task} one: pick the matching task.")
    if not any((path / s / "metadata.jsonl").is_file() for s in SPLITS):
        raise UserError(
            f"Dataset folder {folder} has no train/, validation/ or test/ subfolder with a "
            "metadata.jsonl: see the dataset format in docs/datasets.md."
        )
    splits = {split: _read_split(path, split, task) for split in SPLITS}
    return TaskDataset(name=path.name, task=task, source=str(path.resolve()), splits=splits)


def load_dataset(name_or_path: str | None, task: str) -> TaskDataset:
    """A local folder, or a Hub dataset id (COCO-Karpathy and VQAv2 layouts); None: the embedded default.

    The validation split steers training (best checkpoint, early stopping, learning rates), so it must not be
    the test split: a dataset without its own validation split gets one held out of its training split."""
    if name_or_path is None:
        return with_validation(load_folder_dataset(DEFAULT_DATASETS[task], task))
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not _hub_layout(path):
        return with_validation(load_folder_dataset(path, task))
    return with_validation(load_hub_dataset(name_or_path, task))


HELD_OUT_SHARE, HELD_OUT_MAX_IMAGES = 0.05, 1000


def with_validation(dataset: TaskDataset) -> TaskDataset:
    """The dataset with a validation split of its own: when it has none, or its test split is its validation
    split (VQAv2), a fixed 5 % of the training images (at most 1000; chosen by a hash of the image id, so the
    same whatever the order) become the validation split, and leave the training split."""
    train, validation = dataset.splits.get("train") or [], dataset.splits.get("validation") or []
    if (validation and validation is not dataset.splits.get("test")) or len(train) < 2:
        return dataset
    images = sorted({e.image_id for e in train}, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    held = set(images[: max(1, min(HELD_OUT_MAX_IMAGES, math.floor(len(images) * HELD_OUT_SHARE)))])
    if len(held) == len(images):
        return dataset
    splits = {
        **dataset.splits,
        "train": [e for e in train if e.image_id not in held],
        "validation": [e for e in train if e.image_id in held],
    }
    return dataclasses.replace(dataset, splits=splits, held_out_validation=True)


def _hub_layout(path: Path) -> bool:
    """A folder in a datasets layout (save_to_disk, or data files as on the Hub) rather than our own."""
    if any((path / s / "metadata.jsonl").is_file() for s in SPLITS):
        return False
    if (path / "dataset_dict.json").is_file():
        return True
    return any(f.suffix in {".parquet", ".arrow", ".csv"} for f in path.rglob("*") if f.is_file())


def nested_fraction(count: int, fraction: float, seed: int) -> list[int]:
    """Indices of a seeded subset: for one seed, the subset for a smaller fraction is inside a larger one's."""
    order = np.random.default_rng(seed).permutation(count)
    keep = max(1, math.ceil(round(fraction * count, 6)))
    return sorted(order[:keep].tolist())


def subset_hash(examples: list[Example]) -> str:
    ids = "\n".join(e.question_id or e.image_id for e in examples)
    return hashlib.sha256(ids.encode()).hexdigest()[:16]
