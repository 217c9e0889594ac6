"""The scene world: generated shape scenes and their three corpora (pre-training, captioning, VQA).

Every image has its own random stream, derived from (seed, corpus, split, index) by numpy's SeedSequence,
so the pre-training corpus and the splits of the task datasets never draw the same stream. Captions and
the pre-training sentences are built from the same object and position phrases (captioning is consistent
with pre-training); questions and short answers never occur in pre-training (VQA is not).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
# Saturated or extreme colours only, so none can be mistaken for a background (dark or light, low saturation).
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 215, 35),
    "green": (40, 170, 70),
    "blue": (45, 95, 230),
    "purple": (150, 60, 200),
    "white": (252, 252, 252),
    "gray": (125, 125, 125),
}
SIZES = ("small", "large")
# Index = grid cell, row-major: cell // 3 is the row, cell % 3 the column.
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4
TASK_SPLITS = ("train", "validation", "test")
QUESTION_TYPES = ("color", "shape", "count", "exists", "position", "attribute_at_position")

DEFAULT_CAPTION_SIZES = {"train": 2000, "validation": 200, "test": 300}
DEFAULT_VQA_SIZES = {"train": 1600, "validation": 120, "test": 350}
PRETRAIN_SENTENCE_SHARE = 0.4

# The first phrase is the usual one; the others are what other people write.
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
SIZE_FIRST_SHARE = {"small": 0.85, "large": 0.6}
POSITION_PHRASES = {
    "top left": ("at the top left", "in the top left corner", "in the top left"),
    "top": ("at the top", "near the top"),
    "top right": ("at the top right", "in the top right corner", "in the top right"),
    "left": ("on the left", "on the left side"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "on the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the bottom left"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the bottom right"),
}

CAPTION_FRAMES = ("{list}", "there is {list}", "a picture of {list}", "an image of {list}")
CAPTION_FRAME_WEIGHTS = (0.55, 0.25, 0.1, 0.1)
SENTENCE_FRAMES = CAPTION_FRAMES + (
    "this picture shows {list}",
    "this image shows {list}",
    "we can see {list}",
    "in this picture there is {list}",
    "the image contains {list}",
)
# The list frames that the caption task itself never uses (its own frames include the prompt "a picture of").
NON_CAPTION_FRAMES = tuple(f for f in SENTENCE_FRAMES if f not in CAPTION_FRAMES)
# Per-object clauses, joined with "and": the same phrases in another sentence shape.
CLAUSE_FRAMES = ("{object} can be seen {position}", "{position} there is {object}", "{object} is {position}")
ALT_TAGS = (
    "shapes",
    "geometric shapes",
    "simple shapes",
    "image",
    "clipart",
    "graphic",
    "icon",
    "vector",
    "illustration",
    "pattern",
    "stock image",
    "png",
    "colorful",
    "abstract",
    "background",
    "objects",
)

QUESTION_TEMPLATES = {
    "color": ("what color is the {target}?", "what is the color of the {target}?", "which color is the {target}?"),
    "shape": ("what shape is the {target}?", "what is the shape of the {target}?", "which shape is the {target}?"),
    "count": ("how many {things} are there?", "how many {things} are in the image?", "how many {things} can you see?"),
    "exists": ("is there {target}?", "is there {target} in the image?", "do you see {target}?"),
    "position": ("where is the {target}?", "in which part of the image is the {target}?"),
    "color_at": ("what color is the {noun} {position}?", "what is the color of the {noun} {position}?"),
    "shape_at": ("what shape is {position}?", "what is the shape of the {noun} {position}?"),
}
OBJECT_NOUNS = ("object", "shape")
# canonical answer -> (share of annotators who write a variant, the variants); the official VQA normalisation
# maps some variants back (two -> 2, "the center" -> center) and leaves others apart (grey, upper left).
ANSWER_VARIANTS = {
    "gray": (0.3, ("grey",)),
    "purple": (0.1, ("violet",)),
    "circle": (0.15, ("round", "a circle")),
    "square": (0.15, ("rectangle", "a square")),
    "triangle": (0.1, ("a triangle",)),
    "star": (0.1, ("a star",)),
    "cross": (0.15, ("plus", "a cross")),
    "0": (0.2, ("zero", "none")),
    "1": (0.2, ("one",)),
    "2": (0.2, ("two",)),
    "3": (0.2, ("three",)),
    "4": (0.2, ("four",)),
    "yes": (0.03, ("yeah",)),
    "no": (0.03, ("nope",)),
    "top left": (0.25, ("upper left", "top left corner", "the top left")),
    "top": (0.2, ("top middle", "top center")),
    "top right": (0.25, ("upper right", "top right corner", "the top right")),
    "left": (0.2, ("middle left", "left side")),
    "center": (0.25, ("middle", "centre", "the center")),
    "right": (0.2, ("middle right", "right side")),
    "bottom left": (0.25, ("lower left", "bottom left corner", "the bottom left")),
    "bottom": (0.2, ("bottom middle", "bottom center")),
    "bottom right": (0.25, ("lower right", "bottom right corner", "the bottom right")),
}
WRONG_ANSWER_SHARE = 0.05
ANSWERS_PER_QUESTION = 10
# The canonical answer stays the clear majority, and earns full VQA accuracy (3 matches) on its own.
MIN_CANONICAL = 6

_CORPUS_KEYS = {"pretrain": 0, "caption": 1, "vqa": 2}
_SPLIT_KEYS = {split: n for n, split in enumerate(TASK_SPLITS)}
_SUPERSAMPLE = 2
# Bounding box of an object as a fraction of its grid cell.
_SCALE_RANGE = {"small": (0.40, 0.50), "large": (0.75, 0.88)}
# Base grey level of a background by tone; a tint and texture move it by at most about 16 levels.
_TONE_LEVELS = {"dark": (14, 48), "light": (178, 196)}
_BACKGROUND_KINDS = ("plain", "gradient", "blotchy", "grain")


@dataclass(frozen=True)
class SceneObject:
    """One shape in one grid cell; dx, dy shift it inside the cell (fractions of a cell)."""

    shape: str
    color: str
    size: str
    cell: int
    scale: float
    dx: float
    dy: float

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class Background:
    tone: str
    kind: str
    color_a: tuple[int, int, int]
    color_b: tuple[int, int, int]
    angle: float
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    """Objects in reading order (row by row) over a background."""

    objects: tuple[SceneObject, ...]
    background: Background


def scene_rng(corpus: str, split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The random stream of one image: independent for every (seed, corpus, split, index)."""
    key = (_CORPUS_KEYS[corpus], _SPLIT_KEYS[split], index)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=key)))


def _pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=weights))]


def _variant(rng: np.random.Generator, options: Sequence[str], first_share: float = 0.6) -> str:
    """The first option with probability first_share, else one of the others."""
    if len(options) == 1 or rng.random() < first_share:
        return options[0]
    return options[int(rng.integers(1, len(options)))]


def _tint(rng: np.random.Generator, tone: str) -> tuple[int, int, int]:
    low, high = _TONE_LEVELS[tone]
    level = rng.uniform(low, high)
    return tuple(int(round(level + t)) for t in rng.uniform(-6, 6, size=3))


def sample_scene(rng: np.random.Generator) -> Scene:
    """1-4 objects in distinct cells of a 3x3 grid, over a dark or light background."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = sorted(int(c) for c in rng.choice(9, size=count, replace=False))
    objects = []
    for cell in cells:
        size = _pick(rng, SIZES)
        scale = float(rng.uniform(*_SCALE_RANGE[size]))
        slack = (1 - scale) / 2 * 0.8  # keeps the shape inside its cell
        objects.append(
            SceneObject(
                shape=_pick(rng, SHAPES),
                color=_pick(rng, tuple(COLORS)),
                size=size,
                cell=cell,
                scale=scale,
                dx=float(rng.uniform(-slack, slack)),
                dy=float(rng.uniform(-slack, slack)),
            )
        )
    tone = _pick(rng, ("dark", "light"))
    background = Background(
        tone=tone,
        kind=_pick(rng, _BACKGROUND_KINDS, (0.3, 0.35, 0.2, 0.15)),
        color_a=_tint(rng, tone),
        color_b=_tint(rng, tone),
        angle=float(rng.uniform(0, 2 * math.pi)),
        noise_seed=int(rng.integers(2**31)),
    )
    return Scene(objects=tuple(objects), background=background)


def _background_pixels(background: Background, side: int) -> np.ndarray:
    a = np.asarray(background.color_a, dtype=np.float32)
    if background.kind == "gradient":
        b = np.asarray(background.color_b, dtype=np.float32)
        grid = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
        along = np.cos(background.angle) * grid[None, :] + np.sin(background.angle) * grid[:, None]
        t = (along / math.sqrt(0.5) + 1) / 2
        return a + (b - a) * t[..., None]
    noise = np.random.default_rng(background.noise_seed)
    if background.kind == "blotchy":
        low = np.clip(a + noise.uniform(-10, 10, size=(4, 4, 3)), 0, 255).astype(np.uint8)
        smooth = Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC)
        return np.asarray(smooth, dtype=np.float32)
    if background.kind == "grain":
        return a + noise.normal(0, 4, size=(side, side, 1)).astype(np.float32)
    return np.broadcast_to(a, (side, side, 3))


def _shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = 0.88 * r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "star":
        return [
            (cx + radius * math.sin(k * math.pi / 5), cy - radius * math.cos(k * math.pi / 5))
            for k in range(10)
            for radius in ((r if k % 2 == 0 else 0.48 * r),)
        ]
    if shape == "cross":
        t = 0.32 * r
        return [
            (cx - t, cy - r),
            (cx + t, cy - r),
            (cx + t, cy - t),
            (cx + r, cy - t),
            (cx + r, cy + t),
            (cx + t, cy + t),
            (cx + t, cy + r),
            (cx - t, cy + r),
            (cx - t, cy + t),
            (cx - r, cy + t),
            (cx - r, cy - t),
            (cx - t, cy - t),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """Draw the scene as a size x size RGB image (supersampled, so edges are smooth)."""
    side = size * _SUPERSAMPLE
    pixels = np.clip(_background_pixels(scene.background, side), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    edge = max(1, round(side / 64))
    for obj in scene.objects:
        fill = COLORS[obj.color]
        # A darker rim keeps white shapes visible on light backgrounds.
        _draw_object(draw, obj, side, fill=fill, outline=tuple(int(c * 0.55) for c in fill), width=edge)
    return image.reduce(_SUPERSAMPLE)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, **style) -> None:
    """Draw one object on a side x side canvas, in its grid cell, with PIL's fill/outline/width style."""
    cell = side / 3
    row, col = divmod(obj.cell, 3)
    cx, cy = (col + 0.5 + obj.dx) * cell, (row + 0.5 + obj.dy) * cell
    r = obj.scale * cell / 2
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), **style)
    else:
        draw.polygon(_shape_outline(obj.shape, cx, cy, r), **style)


# What each patch of an image shows, for the vision tower's dense pre-training objective.
PATCH_LABEL_HEADS = {"shape": len(SHAPES) + 1, "color": len(COLORS) + 1, "size": len(SIZES) + 1, "cell": 10}
PATCH_COVER_SHARE = 0.08  # a patch shows an object when the object covers at least this share of it


def patch_labels(scene: Scene, size: int = 64, patch: int = 8) -> np.ndarray:
    """[4, grid*grid] int64 labels, row-major patches: shape, colour, size and grid cell of the object that
    covers the patch most (each 1-based; 0 = background only)."""
    side = size * _SUPERSAMPLE
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for number, obj in enumerate(scene.objects, start=1):
        _draw_object(draw, obj, side, fill=number)
    grid, step = size // patch, patch * _SUPERSAMPLE
    cells = np.asarray(mask, dtype=np.int64)[: grid * step, : grid * step]
    cells = cells.reshape(grid, step, grid, step).transpose(0, 2, 1, 3).reshape(grid * grid, step * step)
    counts = np.stack([(cells == n).sum(1) for n in range(len(scene.objects) + 1)], axis=1)
    counts[:, 0] = 0
    owner = np.where(counts.max(1) >= PATCH_COVER_SHARE * step * step, counts.argmax(1), 0)
    colors = tuple(COLORS)
    table = np.zeros((4, len(scene.objects) + 1), dtype=np.int64)
    for number, obj in enumerate(scene.objects, start=1):
        table[:, number] = (
            SHAPES.index(obj.shape) + 1,
            colors.index(obj.color) + 1,
            SIZES.index(obj.size) + 1,
            obj.cell + 1,
        )
    return table[:, owner]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _object_phrase(obj: SceneObject, rng: np.random.Generator, size_share: float = 0.9) -> str:
    """'a large red circle', sometimes 'a big red circle' or, leaving the size out, 'a red circle'."""
    words = [obj.color, obj.shape]
    if rng.random() < size_share:
        words.insert(0, _variant(rng, SIZE_WORDS[obj.size], SIZE_FIRST_SHARE[obj.size]))
    return _article(" ".join(words))


def _position_phrase(position: str, rng: np.random.Generator) -> str:
    return _variant(rng, POSITION_PHRASES[position])


def _ordered(scene: Scene, rng: np.random.Generator) -> list[SceneObject]:
    """Reading order most of the time, any order otherwise."""
    objects = list(scene.objects)
    if rng.random() < 0.4:
        objects = [objects[int(i)] for i in rng.permutation(len(objects))]
    return objects


def _caption(scene: Scene, rng: np.random.Generator) -> str:
    items = [f"{_object_phrase(o, rng)} {_position_phrase(o.position, rng)}" for o in _ordered(scene, rng)]
    return _pick(rng, CAPTION_FRAMES, CAPTION_FRAME_WEIGHTS).format(list=_join(items))


def caption_references(scene: Scene, rng: np.random.Generator, count: int = 5, edition: int = 1) -> list[str]:
    """Five distinct reference captions, varied like human ones: in the first edition every object with its
    position in the pre-training sentences' phrases and frames (order, synonyms, frames, detail), in the second
    in the annotator style (`annotator_caption`)."""
    if edition not in EDITIONS:
        raise ValueError(f"unknown edition {edition!r}: the scene world has editions {EDITIONS}")
    caption = EDITION_CAPTIONS[edition]
    captions: list[str] = []
    for _ in range(count * 10):
        text = caption(scene, rng)
        if text not in captions:
            captions.append(text)
        if len(captions) == count:
            break
    while len(captions) < count:  # a one-object scene may have fewer distinct wordings than asked
        captions.append(caption(scene, rng))
    return captions


def pretrain_sentence(
    scene: Scene,
    rng: np.random.Generator,
    clause_share: float = 0.25,
    frames: Sequence[str] = SENTENCE_FRAMES,
    position_share: float = 1.0,
) -> str:
    """A complete sentence describing every object with the caption phrases: per-object clauses joined with
    "and" (clause_share of the time), or the list of objects in one of `frames`, each object with its position
    (position_share of the lists) or without (the rest: a page that says what is in the image, not where)."""
    objects = _ordered(scene, rng)
    if rng.random() < clause_share:
        clause = _pick(rng, CLAUSE_FRAMES)
        clauses = [
            clause.format(object=_object_phrase(o, rng), position=_position_phrase(o.position, rng)) for o in objects
        ]
        return _join(clauses)
    if position_share < 1 and rng.random() >= position_share:
        return _pick(rng, frames).format(list=_join([_object_phrase(o, rng) for o in objects]))
    items = [f"{_object_phrase(o, rng)} {_position_phrase(o.position, rng)}" for o in objects]
    return _pick(rng, frames).format(list=_join(items))


# The second edition's caption task: references in an annotator style that the pre-training text never uses,
# the way COCO's captions differ from web alt-text (docs/embedded-world-v2.md). Annotators name the salient
# objects first, group same-shape objects and count them, give at most one spatial relation instead of every
# object's grid cell, mention size only where sizes differ, and often mention the background.
EDITIONS = (1, 2)
ANNOTATOR_SIZE_WORDS = {"small": ("small", "little"), "large": ("big", "large")}
ANNOTATOR_RELATIONS = {"above": ("above",), "below": ("below", "under"), "beside": ("next to", "beside")}
ANNOTATOR_PLACES = {
    "corner": ("in the corner", "in a corner"),
    "middle": ("in the middle",),
    "edge": ("near the edge",),
}
ANNOTATOR_BACKGROUNDS = {
    "dark": ("on a dark background", "on a black background", "against a dark background"),
    "light": ("on a light background", "on a pale background", "against a light background"),
}
ANNOTATOR_SUMMARIES = ("{n} shapes including {first}", "{n} different shapes including {first}")
_BACKGROUND_SHARE = 0.6  # an annotator mentions the background this often
_RELATION_SHARE = 0.6  # with two groups, relates them ("a star above two circles") this often
_SUMMARY_SHARE = 0.3  # with three or more groups, summarises the rest this often
_DROP_SMALL_SHARE = 0.3  # with three or more groups, leaves the last, all-small group out this often


def _groups(scene: Scene) -> list[list[SceneObject]]:
    """Objects grouped by shape, the salient groups first: one with a large object before one without, then
    the bigger group, then reading order."""
    by_shape: dict[str, list[SceneObject]] = {}
    for obj in scene.objects:
        by_shape.setdefault(obj.shape, []).append(obj)
    groups = list(by_shape.values())
    return sorted(groups, key=lambda g: (all(o.size == "small" for o in g), -len(g), g[0].cell))


def _group_phrase(group: list[SceneObject], mixed_sizes: bool, rng: np.random.Generator) -> str:
    """'a big red star', 'two yellow circles', 'a red and a blue square' or 'three crosses'."""
    sizes = {o.size for o in group}
    size_word = _variant(rng, ANNOTATOR_SIZE_WORDS[group[0].size], 0.75) if mixed_sizes and len(sizes) == 1 else ""
    colors = [o.color for o in group]
    if len(group) == 1:
        return _article(" ".join(w for w in (size_word, colors[0], group[0].shape) if w))
    count = NUMBER_WORDS[len(group)]
    if len(set(colors)) == 1:
        return " ".join(w for w in (count, size_word, colors[0], PLURALS[group[0].shape]) if w)
    if len(group) == 2 and rng.random() < 0.5:
        return f"{_article(colors[0])} and {_article(colors[1])} {group[0].shape}"
    return " ".join(w for w in (count, size_word, PLURALS[group[0].shape]) if w)


def _relation(first: SceneObject, second: SceneObject, rng: np.random.Generator) -> str:
    """Where the first object is seen from the second: above, below or beside it."""
    rows = first.cell // 3 - second.cell // 3
    kind = "above" if rows < 0 else "below" if rows > 0 else "beside"
    return _variant(rng, ANNOTATOR_RELATIONS[kind], 0.7)


def _place(obj: SceneObject) -> str:
    return "middle" if obj.cell == 4 else "corner" if obj.cell in (0, 2, 6, 8) else "edge"


def annotator_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One annotator's caption of the scene in the second edition's style."""
    groups = _groups(scene)
    mixed = len({o.size for o in scene.objects}) > 1
    if len(groups) >= 3 and all(o.size == "small" for o in groups[-1]) and rng.random() < _DROP_SMALL_SHARE:
        groups = groups[:-1]
    phrases = [_group_phrase(g, mixed, rng) for g in groups]
    if len(groups) >= 3 and rng.random() < _SUMMARY_SHARE:
        body = _pick(rng, ANNOTATOR_SUMMARIES).format(n=NUMBER_WORDS[len(scene.objects)], first=phrases[0])
    elif len(groups) == 2 and rng.random() < _RELATION_SHARE:
        body = f"{phrases[0]} {_relation(groups[0][0], groups[1][0], rng)} {phrases[1]}"
    else:
        body = _join(phrases)
    if len(scene.objects) == 1 and rng.random() < 0.5:
        body += " " + _pick(rng, ANNOTATOR_PLACES[_place(scene.objects[0])])
    if rng.random() < _BACKGROUND_SHARE:
        body += " " + _pick(rng, ANNOTATOR_BACKGROUNDS[scene.background.tone])
    return body


# One annotator's caption, per edition of the caption task.
EDITION_CAPTIONS: dict[int, Callable[[Scene, np.random.Generator], str]] = {1: _caption, 2: annotator_caption}


def alt_text(scene: Scene, rng: np.random.Generator) -> str:
    """Terse, noisy web alt-text: keywords in any order, some objects or words missing, stray tags."""
    tokens = []
    for obj in scene.objects:
        if rng.random() < 0.15:
            continue
        form = _pick(rng, ("cs", "zcs", "c", "s", "csp"), (0.5, 0.12, 0.12, 0.14, 0.12))
        words = {"z": obj.size, "c": obj.color, "s": obj.shape, "p": obj.position}
        tokens.append(" ".join(words[letter] for letter in form))
    shape_counts = Counter(o.shape for o in scene.objects)
    for shape, n in shape_counts.items():
        if n > 1 and rng.random() < 0.3:
            tokens.append(f"{_pick(rng, (str(n), NUMBER_WORDS[n]))} {PLURALS[shape]}")
    if rng.random() < 0.2:
        tokens.append(f"{len(scene.objects)} {_pick(rng, ('shapes', 'objects'))}")
    if rng.random() < 0.25:
        tokens.append(f"{scene.background.tone} background")
    tags = [ALT_TAGS[int(i)] for i in rng.choice(len(ALT_TAGS), size=int(rng.integers(0, 4)), replace=False)]
    if not tokens and not tags:
        tags.append(scene.objects[0].shape)
    if rng.random() < 0.5:
        tokens = [tokens[int(i)] for i in rng.permutation(len(tokens))]
    tokens = tags + tokens if rng.random() < 0.5 else tokens + tags
    return _pick(rng, (" ", ", "), (0.6, 0.4)).join(tokens)


def _matching(scene: Scene, **attributes: str) -> list[SceneObject]:
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in attributes.items())]


def _unique_target(
    scene: Scene, obj: SceneObject, keys: Sequence[tuple[str, ...]], rng: np.random.Generator
) -> dict[str, str] | None:
    """A choice of obj's attributes (among the key sets given) that no other object in the scene shares."""
    unique = [k for k in keys if len(_matching(scene, **{a: getattr(obj, a) for a in k})) == 1]
    if not unique:
        return None
    return {a: getattr(obj, a) for a in _pick(rng, unique)}


def _target_phrase(target: dict[str, str], rng: np.random.Generator) -> str:
    """'large circle', 'red star' or, with no shape named, 'red object'."""
    words = []
    if "size" in target:
        words.append(_variant(rng, SIZE_WORDS[target["size"]], SIZE_FIRST_SHARE[target["size"]]))
    if "color" in target:
        words.append(target["color"])
    words.append(target.get("shape") or _pick(rng, OBJECT_NOUNS))
    return " ".join(words)


# What may name the object a question asks about: never the attribute asked for.
_IDENTIFYING_KEYS = {
    "color": (("shape",), ("size", "shape")),
    "shape": (("color",), ("size", "color")),
    "position": (("color", "shape"), ("shape",), ("color",), ("size", "color", "shape")),
}


def _ask_about_one_object(question_type: str, scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """Ask for the colour, shape or position of an object named by attributes that only it has."""
    for obj in [scene.objects[int(i)] for i in rng.permutation(len(scene.objects))]:
        target = _unique_target(scene, obj, _IDENTIFYING_KEYS[question_type], rng)
        if target:
            template = _pick(rng, QUESTION_TEMPLATES[question_type])
            return template.format(target=_target_phrase(target, rng)), getattr(obj, question_type)
    return None


def _ask_count(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    kind = _pick(rng, ("all", "shape", "color"), (0.4, 0.35, 0.25))
    if kind == "all":
        things, n = _pick(rng, ("objects", "shapes")), len(scene.objects)
    elif kind == "shape":
        # Mostly a shape that is there; sometimes one that is not (answer 0).
        shape = _pick(rng, SHAPES) if rng.random() < 0.3 else _pick(rng, scene.objects).shape
        things, n = PLURALS[shape], len(_matching(scene, shape=shape))
    else:
        color = _pick(rng, scene.objects).color
        things, n = f"{color} {_pick(rng, ('objects', 'shapes'))}", len(_matching(scene, color=color))
    return _pick(rng, QUESTION_TEMPLATES["count"]).format(things=things), str(n)


def _ask_exists(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    answer = _pick(rng, ("yes", "no"))
    kind = _pick(rng, (("color", "shape"), ("size", "color", "shape"), ("shape",)), (0.7, 0.15, 0.15))
    present = {tuple(getattr(o, a) for a in kind) for o in scene.objects}
    if answer == "yes":
        obj = _pick(rng, scene.objects)
        values = tuple(getattr(obj, a) for a in kind)
    else:
        domains = {"size": SIZES, "color": tuple(COLORS), "shape": SHAPES}
        absent = [v for v in _combinations([domains[a] for a in kind]) if v not in present]
        # Near misses (one attribute right) make "no" questions worth looking at the image for.
        near = [
            v for v in absent if any(sum(x == y for x, y in zip(v, p, strict=True)) == len(kind) - 1 for p in present)
        ]
        values = _pick(rng, near if near and rng.random() < 0.7 else absent)
    target = _article(_target_phrase(dict(zip(kind, values, strict=True)), rng))
    return _pick(rng, QUESTION_TEMPLATES["exists"]).format(target=target), answer


def _combinations(domains: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for domain in domains:
        combos = [c + (v,) for c in combos for v in domain]
    return combos


def _ask_attribute_at_position(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    obj = _pick(rng, scene.objects)
    position = _position_phrase(obj.position, rng)
    if rng.random() < 0.5:
        template = _pick(rng, QUESTION_TEMPLATES["color_at"])
        return template.format(noun=_pick(rng, OBJECT_NOUNS), position=position), obj.color
    template = _pick(rng, QUESTION_TEMPLATES["shape_at"])
    return template.format(noun=_pick(rng, OBJECT_NOUNS), position=position), obj.shape


_ASKERS = {
    "color": partial(_ask_about_one_object, "color"),
    "shape": partial(_ask_about_one_object, "shape"),
    "count": _ask_count,
    "exists": _ask_exists,
    "position": partial(_ask_about_one_object, "position"),
    "attribute_at_position": _ask_attribute_at_position,
}


def _answer_space(question_type: str, answer: str) -> tuple[str, ...]:
    if question_type == "count":
        return tuple(str(n) for n in range(MAX_OBJECTS + 1))
    if question_type == "exists":
        return ("yes", "no")
    if question_type == "position":
        return POSITIONS
    return tuple(COLORS) if answer in COLORS else SHAPES


def _annotator_answers(question_type: str, answer: str, rng: np.random.Generator) -> list[str]:
    """Ten answers: mostly the canonical one (always at least six), some synonyms, now and then a wrong one."""
    share, variants = ANSWER_VARIANTS.get(answer, (0.0, ()))
    wrong = [a for a in _answer_space(question_type, answer) if a != answer]
    n_wrong = min(int(rng.binomial(ANSWERS_PER_QUESTION, WRONG_ANSWER_SHARE)), 2)
    n_variant = min(int(rng.binomial(ANSWERS_PER_QUESTION, share)), ANSWERS_PER_QUESTION - MIN_CANONICAL - n_wrong)
    answers = [_pick(rng, wrong) for _ in range(n_wrong)] + [_pick(rng, variants) for _ in range(n_variant)]
    answers += [answer] * (ANSWERS_PER_QUESTION - len(answers))
    return [answers[int(i)] for i in rng.permutation(ANSWERS_PER_QUESTION)]


def vqa_questions(scene: Scene, rng: np.random.Generator, count: int | None = None) -> list[dict]:
    """2-3 questions of distinct types, each with a unique answer in the scene.

    Each dict has question, answer (canonical), answers (10 annotators) and question_type.
    """
    wanted = count if count is not None else _pick(rng, (2, 3), (0.4, 0.6))
    questions = []
    for index in rng.permutation(len(QUESTION_TYPES)):
        question_type = QUESTION_TYPES[int(index)]
        asked = _ASKERS[question_type](scene, rng)
        if asked is None:
            continue
        question, answer = asked
        answers = _annotator_answers(question_type, answer, rng)
        questions.append({"question": question, "answer": answer, "answers": answers, "question_type": question_type})
        if len(questions) == wanted:
            break
    return questions


def pretrain_example(index: int, seed: int = 0, size: int = 64) -> tuple[Image.Image, str]:
    """Pre-training pair number `index`: an image and its alt-text or (40 %) a descriptive sentence."""
    rng = scene_rng("pretrain", "train", index, seed)
    scene = sample_scene(rng)
    text = pretrain_sentence(scene, rng) if rng.random() < PRETRAIN_SENTENCE_SHARE else alt_text(scene, rng)
    return render_scene(scene, size), text


def pretrain_pairs(
    seed: int = 0, start: int = 0, count: int | None = None, size: int = 64
) -> Iterator[tuple[Image.Image, str]]:
    """Pre-training pairs start, start+1, ... (endless when count is None), generated on the fly."""
    index = start
    while count is None or index < start + count:
        yield pretrain_example(index, seed, size)
        index += 1


def caption_example(
    split: str, index: int, seed: int = 0, size: int = 64, edition: int = 1
) -> tuple[Image.Image, dict]:
    """Image `index` of a captioning split and its metadata row (the same image in every edition)."""
    rng = scene_rng("caption", split, index, seed)
    scene = sample_scene(rng)
    row = {
        "file_name": f"{index:06d}.png",
        "captions": caption_references(scene, rng, edition=edition),
        "image_id": f"cap-{split}-{index:06d}",
    }
    return render_scene(scene, size), row


def vqa_example(split: str, index: int, seed: int = 0, size: int = 64) -> tuple[Image.Image, list[dict]]:
    """Image `index` of a VQA split and its metadata rows (one per question)."""
    rng = scene_rng("vqa", split, index, seed)
    scene = sample_scene(rng)
    image_id = f"vqa-{split}-{index:06d}"
    rows = [
        {
            "file_name": f"{index:06d}.png",
            "question": q["question"],
            "answers": q["answers"],
            "question_type": q["question_type"],
            "question_id": f"{image_id}-{n}",
            "image_id": image_id,
        }
        for n, q in enumerate(vqa_questions(scene, rng))
    ]
    return render_scene(scene, size), rows


def _write_dataset(
    out_dir: Path,
    task: str,
    example: Callable[[str, int, int, int], tuple[Image.Image, dict | list[dict]]],
    sizes: dict[str, int],
    seed: int,
    size: int,
    edition: int = 1,
) -> Path:
    """Write every split into a temporary folder beside out_dir, then move it into place."""
    unknown = set(sizes) - set(TASK_SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}: the scene world has {', '.join(TASK_SPLITS)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        rows_per_split = {}
        for split, n in sizes.items():
            split_dir = staging / split
            split_dir.mkdir()
            lines = []
            for index in range(n):
                image, rows = example(split, index, seed, size)
                rows = rows if isinstance(rows, list) else [rows]
                image.save(split_dir / rows[0]["file_name"], optimize=True)
                lines.extend(json.dumps(row) for row in rows)
            (split_dir / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))
            rows_per_split[split] = len(lines)
        info = {
            "name": out_dir.name,
            "task": task,
            "generator": "scene-world",
            "seed": seed,
            "size": size,
            "edition": edition,
            "splits": rows_per_split,
            "images": dict(sizes),
        }
        (staging / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        staging.chmod(0o755)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def write_caption_dataset(
    out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0, size: int = 64, edition: int = 1
) -> Path:
    """Write a captioning dataset (imagefolder layout, 5 captions per image); sizes count images per split.
    The edition picks the references' style (caption_references); the images are the same in every edition."""
    if edition not in EDITIONS:
        raise ValueError(f"unknown edition {edition!r}: the scene world has editions {EDITIONS}")
    example = partial(caption_example, edition=edition)
    return _write_dataset(Path(out_dir), "caption", example, sizes or DEFAULT_CAPTION_SIZES, seed, size, edition)


def write_vqa_dataset(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0, size: int = 64) -> Path:
    """Write a VQA dataset (imagefolder layout, 2-3 questions per image); sizes count images per split."""
    return _write_dataset(Path(out_dir), "vqa", vqa_example, sizes or DEFAULT_VQA_SIZES, seed, size)


def ensure_default_datasets(root: str | Path) -> dict[str, Path]:
    """The default task datasets under root (scene-caption, scene-vqa), generated if missing."""
    root = Path(root)
    paths = {"caption": root / "scene-caption", "vqa": root / "scene-vqa"}
    if not (paths["caption"] / "dataset.json").exists():
        write_caption_dataset(paths["caption"])
    if not (paths["vqa"] / "dataset.json").exists():
        write_vqa_dataset(paths["vqa"])
    return paths


def answer_prior(train_rows: Iterable[dict]) -> dict[str, str]:
    """The most common answer per question type (each row counted by its majority answer)."""
    per_type: dict[str, Counter] = {}
    for row in train_rows:
        majority = Counter(row["answers"]).most_common(1)[0][0]
        per_type.setdefault(row["question_type"], Counter())[majority] += 1
    return {question_type: counts.most_common(1)[0][0] for question_type, counts in per_type.items()}


def text_words(text: str) -> list[str]:
    """Words of a generated text as the vocabulary counts them: lowercased, split on spaces, '?,.' stripped."""
    return [w for w in (word.strip("?,.") for word in text.lower().split()) if w]


def vocabulary_words(edition: int = 1) -> list[str]:
    """Every word any generator of the edition can emit, sorted (the second adds the annotator style's words)."""
    texts = [*SHAPES, *PLURALS.values(), *COLORS, *POSITIONS, *NUMBER_WORDS, *ALT_TAGS, *OBJECT_NOUNS]
    texts += [str(n) for n in range(MAX_OBJECTS + 1)] + ["a", "an", "and", "dark", "light", "background"]
    texts += [w for words in SIZE_WORDS.values() for w in words]
    texts += [p for phrases in POSITION_PHRASES.values() for p in phrases]
    texts += [*SENTENCE_FRAMES, *CLAUSE_FRAMES]
    texts += [t for templates in QUESTION_TEMPLATES.values() for t in templates]
    texts += ["yes", "no"] + [v for _, variants in ANSWER_VARIANTS.values() for v in variants]
    if edition == 2:
        tables = (ANNOTATOR_SIZE_WORDS, ANNOTATOR_RELATIONS, ANNOTATOR_PLACES, ANNOTATOR_BACKGROUNDS)
        texts += [phrase for table in tables for phrases in table.values() for phrase in phrases]
        texts += list(ANNOTATOR_SUMMARIES)
    placeholder = re.compile(r"\{\w+\}")
    return sorted({w for text in texts for w in text_words(placeholder.sub(" ", text))})
