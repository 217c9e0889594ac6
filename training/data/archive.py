"""Datasets brought as a zip in the folder format: unpacked safely, checked, then moved into place whole.

A zip is read, never run: its size and file count are checked from its directory before anything is written
(zip bombs), every entry must land inside the target folder (no absolute paths, no `..`, no links), every file
of a split folder must be an image that PIL decodes in one of a few plain formats (no format that calls out to
another program), and the metadata is checked by the folder loader, whose messages name split, line and field.
Only then does the folder move into `<home>/<name>`, in one rename.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from training.data.dataset import SPLITS, load_folder_dataset
from training.data.examples import IMAGE_FORMATS, MAX_IMAGE_PIXELS, TaskDataset, unreadable_image
from training.errors import UserError

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
REQUIRED_SPLITS = ("train", "test")
SPLIT_ALIASES = {
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "training": "train",
    "testing": "test",
    "eval": "test",
}
INFO = "dataset.json"
METADATA = "metadata.jsonl"
CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """What one zip may hold once unpacked."""

    max_bytes: int = 1_000_000_000
    max_files: int = 20_000


@dataclass(frozen=True)
class StoredDataset:
    """A dataset folder added from a zip: `<home>/<name>` with a dataset.json that says its task."""

    name: str
    task: str
    path: Path
    added_at: float


def dataset_name(text: str) -> str:
    """A name that is safe as a folder name: lower-case letters, digits, '-' and '_', at most 48 characters."""
    name = (text or "").strip()
    if not NAME.fullmatch(name):
        raise UserError(
            f"{name[:60]!r} cannot name a dataset: use 1 to 48 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. my-shapes)."
        )
    return name


def stored_datasets(home: Path) -> list[StoredDataset]:
    """The datasets added from zips under `home`, by name."""
    found = []
    for folder in sorted(home.iterdir()) if home.is_dir() else []:
        info = _read_info(folder / INFO) if NAME.fullmatch(folder.name) else None
        if info and info.get("task") in ("caption", "vqa"):
            found.append(StoredDataset(folder.name, info["task"], folder, float(info.get("added_at") or 0)))
    return found


def install_zip(
    archive: str | Path,
    name: str,
    task: str,
    home: Path,
    replace: bool = False,
    limits: ArchiveLimits = ArchiveLimits(),
) -> StoredDataset:
    """Unpack, check and add the zip as dataset `name` of `task`; UserError naming what is wrong otherwise.

    An existing dataset of that name is replaced only when `replace` is set."""
    name = dataset_name(name)
    target = home / name
    if target.exists() and not replace:
        raise UserError(
            f"There is already a dataset named {name!r}: choose another name, or tick Replace to put "
            "this zip in its place."
        )
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=home))
    try:
        unpack(archive, staging, limits)
        root = dataset_root(staging)
        declared = (_read_info(root / INFO) or {}).get("task")
        if declared in ("caption", "vqa") and declared != task:
            raise UserError(
                f"The zip's {INFO} says it is a {declared} dataset, not a {task} one: pick the matching task."
            )
        try:
            check_splits(root)
            check_images(root)
            load_folder_dataset(root, task)
        except UserError as exc:  # say where inside the zip, not where it was unpacked
            raise UserError(str(exc).replace(f"{root}/", "").replace(str(root), "the zip")) from None
        (root / INFO).write_text(json.dumps({"name": name, "task": task, "added_at": time.time()}))
        old = home / f".replaced-{name}-{staging.name}"
        if target.exists():
            target.rename(old)
        try:
            root.rename(target)
        except OSError:  # another upload took the name between the check above and now
            shutil.rmtree(old, ignore_errors=True)
            raise UserError(f"Another upload was just added as {name!r}: choose another name.") from None
        shutil.rmtree(old, ignore_errors=True)
        return StoredDataset(name, task, target, time.time())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def unpack(archive: str | Path, target: Path, limits: ArchiveLimits) -> None:
    """Write the zip's files under `target`, after checking every name, the file count and the total size."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = [info for info in opened.infolist() if not _skipped(info)]
            for info in members:
                _check_member(info)
            if len(members) > limits.max_files:
                raise UserError(
                    f"The zip holds {len(members):,} files: the limit is {limits.max_files:,}. Upload a "
                    "smaller dataset."
                )
            total = sum(info.file_size for info in members)
            if total > limits.max_bytes:
                raise UserError(
                    f"The zip unpacks to {total / 1e6:,.1f} MB: the limit is {limits.max_bytes / 1e6:,.1f} "
                    "MB. Upload a smaller dataset."
                )
            base = target.resolve()
            for info in members:
                destination = (base / info.filename).resolve()
                if not destination.is_relative_to(base):
                    raise UserError(f"{info.filename!r} in the zip points outside its folder: remove it.")
                destination.parent.mkdir(parents=True, exist_ok=True)
                _copy(opened, info, destination)
    except zipfile.BadZipFile as exc:
        raise UserError(
            f"The upload is not a readable zip file ({exc}): make it with a zip tool and try again."
        ) from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        shown = Path(exc.filename or "").name or "an entry"
        raise UserError(f"The zip holds {shown} twice, or as both a file and a folder: fix the zip.") from None


def _skipped(info: zipfile.ZipInfo) -> bool:
    """Folders (made as needed) and the clutter of archivers: macOS resource forks, hidden files."""
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    return info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith(".") and parts[-1] != ".."


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise UserError(f"{name!r} in the zip is an absolute path: zip the dataset folder with relative paths.")
    if ".." in parts:
        raise UserError(f"{name!r} in the zip points outside its folder ('..'): remove it.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UserError(f"{name!r} in the zip is a symbolic link: put the file itself in the zip.")
    if info.flag_bits & 0x1:
        raise UserError(f"{name!r} in the zip is encrypted: upload a zip without a password.")


def _copy(opened: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path) -> None:
    """Copy one entry, never writing more than its declared size (which the limits were checked against)."""
    written = 0
    with opened.open(info) as source, destination.open("xb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise UserError(f"{info.filename!r} in the zip is larger than the zip says: the zip is damaged.")
            out.write(chunk)


def dataset_root(folder: Path) -> Path:
    """The dataset inside an unpacked zip: the split folders at its top, or in its one top-level folder."""
    if any((folder / split).is_dir() for split in (*SPLITS, *SPLIT_ALIASES)):
        return folder
    entries = [entry for entry in folder.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise UserError(
        "The zip has no train/ or test/ folder at its top or in its one top-level folder: zip the "
        "dataset folder as docs/datasets.md describes it."
    )


def check_splits(root: Path) -> None:
    """train/ and test/ are needed (validation/ is optional: training then holds out 5 % of train)."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in SPLIT_ALIASES:
            raise UserError(
                f"{folder.name}/ is not a split name: rename it {SPLIT_ALIASES[folder.name]}/ (the splits "
                "are train/, validation/ and test/)."
            )
    for split in REQUIRED_SPLITS:
        if not (root / split).is_dir():
            raise UserError(
                f"The {split} split is missing: the zip has no {split}/ folder. A dataset needs "
                "train/ and test/, each with a metadata.jsonl beside its images; validation/ is "
                "optional."
            )
        if not (root / split / METADATA).is_file():
            raise UserError(
                f"The {split} split has no {split}/{METADATA}: put one line per example in it (see "
                "the dataset format in docs/datasets.md)."
            )


def check_images(root: Path) -> None:
    """Every file of a split folder but its metadata must be an image that decodes, named by its path if not."""
    for split in SPLITS:
        for path in sorted((root / split).rglob("*")) if (root / split).is_dir() else []:
            if path.is_file() and path.relative_to(root / split).as_posix() != METADATA:
                _decode(path, path.relative_to(root).as_posix())


def _decode(path: Path, shown: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise UserError(
                        f"{shown} is {image.width}x{image.height} pixels: too large (the limit is "
                        f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels). Resize it."
                    )
                image.load()
    except UserError:
        raise
    except Exception:  # PIL raises many kinds for a file that is not an image or is cut short
        again = "Replace it with the picture or remove it, then upload the zip again."
        raise UserError(unreadable_image(f"{shown} in the zip", again)) from None


def _read_info(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


@dataclass
class DatasetSummary:
    """What a preview shows: examples and images per split, and for VQA the most common answers."""

    name: str
    task: str
    examples: dict[str, int]
    images: dict[str, int]
    top_answers: list[tuple[str, int]]  # (answer, questions whose most common answer it is), on the train split
    questions_counted: int
    held_out_validation: bool

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "splits": {
                split: {"examples": self.examples[split], "images": self.images[split]} for split in self.examples
            },
            "top_answers": [{"answer": a, "questions": n} for a, n in self.top_answers],
            "held_out_validation": self.held_out_validation,
        }


def summarize(dataset: TaskDataset, top: int = 10) -> DatasetSummary:
    splits = {split: dataset.splits.get(split) or [] for split in SPLITS}
    majority = Counter()
    for example in splits["train"]:
        if example.answers:
            majority[Counter(example.answers).most_common(1)[0][0]] += 1
    return DatasetSummary(
        name=dataset.name,
        task=dataset.task,
        examples={s: len(e) for s, e in splits.items()},
        images={s: len({x.image_id for x in e}) for s, e in splits.items()},
        top_answers=majority.most_common(top),
        questions_counted=sum(majority.values()),
        held_out_validation=dataset.held_out_validation,
    )
