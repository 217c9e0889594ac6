"""What every dataset loader builds: examples, their images and the task dataset that holds them (shared by the
folder loader in `dataset` and the Hub loader in `hub`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image, UnidentifiedImageError

from training.errors import UserError

MAX_IMAGE_PIXELS = 40_000_000
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # plain formats PIL decodes itself, none through a program
IMAGE_FORMATS_TEXT = "PNG, JPEG, WebP, BMP or GIF"


def unreadable_image(name: str, what_to_do: str) -> str:
    """The sentence for a file that is not a readable image: which file, which formats work, what to do."""
    return (
        f"{name} is not a readable image: it is in another format, not a picture at all, or damaged or cut short. "
        f"Images must be {IMAGE_FORMATS_TEXT}. {what_to_do}"
    )


class ImageSource(Protocol):
    def load(self) -> Image.Image: ...


@dataclass(frozen=True)
class ImageFile:
    path: str

    def load(self) -> Image.Image:
        return open_image(self.path)


@dataclass
class Example:
    image: ImageSource
    image_id: str
    captions: list[str] = field(default_factory=list)
    question: str = ""
    answers: list[str] = field(default_factory=list)
    question_type: str | None = None
    question_id: str | None = None


@dataclass
class TaskDataset:
    name: str
    task: str
    source: str
    splits: dict[str, list[Example]]
    held_out_validation: bool = False  # the validation split was taken from the training split

    def split(self, name: str) -> list[Example]:
        if not self.splits.get(name):
            raise UserError(
                f"Dataset {self.name} has no {name!r} split (or it is empty); it has: "
                f"{', '.join(k for k, v in self.splits.items() if v) or 'none'}."
            )
        return self.splits[name]


def open_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, with a clear error for a missing, corrupt or oversized file."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise UserError(
                    f"Image {path} is {image.width}x{image.height}: too large (the limit is "
                    f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels). Resize it first."
                )
            return image.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"Image {path} does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(unreadable_image(f"Image {path}", "Replace it with the picture and try again.")) from None
