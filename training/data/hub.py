"""Hugging Face datasets (a Hub id, a folder in Hub layout, or a `save_to_disk` folder) as task datasets.

Column names of the usual layouts are mapped: COCO-Karpathy captions (`image`/`filepath`+`filename`,
`sentences`/`captions`/`caption`, a `split` column with restval) and VQAv2 (`question`, `answers` as
dicts with `answer`, `question_type`/`answer_type`, `question_id`, `image_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.data.examples import Example, ImageFile, TaskDataset
from training.errors import UserError

IMAGE_COLUMNS = ("image", "img", "jpg", "png")
PATH_COLUMNS = ("file_name", "image_path", "filepath", "path")
CAPTION_COLUMNS = ("captions", "sentences", "sentences_raw", "caption", "text", "raw")
ANSWER_COLUMNS = ("answers", "multiple_choice_answer", "answer")
TYPE_COLUMNS = ("question_type", "answer_type")
ID_COLUMNS = ("image_id", "cocoid", "imgid", "id")
SPLIT_NAMES = {"train": ("train", "restval"), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}


@dataclass(frozen=True)
class HubImage:
    """An image decoded from a datasets row only when it is needed."""

    dataset: object
    index: int
    column: str

    def load(self) -> Image.Image:
        image = self.dataset[self.index][self.column]
        if not isinstance(image, Image.Image):
            raise UserError(f"Column {self.column!r} does not hold images.")
        return image.convert("RGB")


def _open(name: str):
    import datasets  # heavy (pyarrow, pandas): only a Hub id or a save_to_disk folder needs it, not a folder

    path = Path(name).expanduser()
    try:
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        if path.is_dir():
            return datasets.load_dataset(str(path))
        if name.startswith((".", "/", "~")):
            raise UserError(f"Dataset folder {name} does not exist.")
        return datasets.load_dataset(name)
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types (offline, missing repo, bad files)
        kind = "folder" if path.exists() else "Hub dataset"
        raise UserError(
            f"The {kind} {name!r} could not be loaded as a dataset ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}). Give a dataset folder in the "
            "folder format of docs/datasets.md, or a Hub id reachable from here."
        ) from None


def _pick(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _as_texts(value, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    texts = []
    for item in value or []:
        if isinstance(item, dict):
            item = item.get(field) or item.get("raw") or item.get("text")
        if isinstance(item, str) and item.strip():
            texts.append(item)
    return texts


def _examples(split_data, task: str, root: Path | None, split: str) -> list[Example]:
    columns = list(split_data.column_names)
    image_column = _pick(columns, IMAGE_COLUMNS)
    path_column = _pick(columns, PATH_COLUMNS)
    if image_column is None and path_column is None:
        raise UserError(f"Split {split!r} has no image column (looked for {', '.join(IMAGE_COLUMNS + PATH_COLUMNS)}).")
    if task == "caption":
        text_column = _pick(columns, CAPTION_COLUMNS)
        needed = "captions"
    else:
        text_column = _pick(columns, ANSWER_COLUMNS)
        needed = "answers"
        if "question" not in columns:
            raise UserError(f"Split {split!r} has no 'question' column, which a VQA dataset needs.")
    if text_column is None:
        raise UserError(
            f"Split {split!r} has no {needed} column (looked for "
            f"{', '.join(CAPTION_COLUMNS if task == 'caption' else ANSWER_COLUMNS)})."
        )
    plain = split_data.remove_columns([image_column]) if image_column else split_data
    rows = plain.to_list()
    id_column = _pick(columns, ID_COLUMNS)
    type_column = _pick(columns, TYPE_COLUMNS)
    examples = []
    for index, row in enumerate(rows):
        image_id = str(row[id_column]) if id_column else f"{split}-{index}"
        if image_column:
            image = HubImage(split_data, index, image_column)
        else:
            relative = Path(str(row[path_column]))
            if "filename" in row and path_column == "filepath":
                relative = relative / str(row["filename"])
            image = ImageFile(str((root or Path(".")) / relative))
        if task == "caption":
            captions = _as_texts(row[text_column], "raw")
            if captions:  # Hub test splits often come without labels; such rows cannot be scored
                examples.append(Example(image, image_id, captions=captions))
        else:
            answers = _as_texts(row[text_column], "answer")
            if not answers or not str(row["question"]).strip():
                continue
            examples.append(
                Example(
                    image,
                    image_id,
                    question=str(row["question"]),
                    answers=answers,
                    question_type=str(row[type_column]) if type_column and row[type_column] else None,
                    question_id=str(row.get("question_id", f"{image_id}#{index}")),
                )
            )
    return examples


def load_hub_dataset(name: str, task: str) -> TaskDataset:
    data = _open(name)
    available = dict(data.items()) if hasattr(data, "items") else {"train": data}
    if len(available) == 1 and "split" in next(iter(available.values())).column_names:
        # Karpathy-style: one table with a `split` column (restval counts as training data).
        table = next(iter(available.values()))
        available = {}
        for split, aliases in SPLIT_NAMES.items():
            part = table.filter(lambda row, a=aliases: row["split"] in a)
            if len(part):
                available[split] = part
    root = Path(name).expanduser() if Path(name).expanduser().is_dir() else None
    splits: dict[str, list[Example]] = {}
    for split, aliases in SPLIT_NAMES.items():
        # Every part a split goes by: Karpathy's `restval` is training data whether a column or a split says so.
        parts = [a for a in aliases if a in available and len(available[a])]
        splits[split] = [example for a in parts for example in _examples(available[a], task, root, a)]
    if not splits["test"] and splits["validation"]:
        splits["test"] = splits["validation"]  # e.g. VQAv2, whose test answers are not public
    if not splits["train"] and not splits["test"]:
        raise UserError(f"Dataset {name!r} has no train or test split (it has: {', '.join(available) or 'none'}).")
    return TaskDataset(name=Path(name).name or name, task=task, source=name, splits=splits)
