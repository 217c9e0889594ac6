"""Side-by-side outputs of several trained adapters on one image: one resident base, adapters in turn.

The zero-shot base model is always the first column. Every PEFT run is an adapter on the one shared base;
the columns answer one after another, each with its adapter active (`answer`). The image goes through the
vision tower once for the base and every adapter that leaves the vision tower untouched (they share those
features), and once more for each adapter that changes it. At most `MAX_RESIDENT_ADAPTERS` adapters stay
attached to the base; the least recently used ones beyond that are detached (hooks and weights). Full
fine-tuning runs carry a whole model each and get their own copy (kept in a small cache).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from training.data.examples import IMAGE_FORMATS, Example, unreadable_image
from training.errors import UserError
from training.methods.vlmodel import VLModel
from training.metrics.vqa import vqa_accuracy_single
from training.model.base_model import default_model_path, load_base_model
from training.model.pixels import PixelCache
from training.run import runs
from training.run.tasks import Encoder, prompt_text
from training.run.trainer import adapter_name, load_run

MAX_QUESTION_CHARS = 300
MAX_UPLOAD_PIXELS = 40_000_000
FULL_MODEL_CACHE = 2
# Adapters kept attached to the resident base between comparisons (the app's 6-column view and a few spare).
MAX_RESIDENT_ADAPTERS = 8


@dataclass
class Column:
    label: str
    method: str
    output: str
    run_dir: str | None = None
    budget: str | None = None
    trainable_params: int | None = None
    data_fraction: float | None = None
    test_score: dict = field(default_factory=dict)
    sample_score: dict = field(default_factory=dict)
    truncated: bool = False  # the output was cut by the max-new-tokens limit (it never ended by itself)


def check_question(task: str, question: str | None) -> str:
    if task != "vqa":
        return ""
    text = (question or "").strip()
    if not text:
        raise UserError("Type a question about the image, e.g. 'what color is the circle?'.")
    if len(text) > MAX_QUESTION_CHARS:
        raise UserError(f"The question has {len(text)} characters; keep it under {MAX_QUESTION_CHARS}.")
    return text


def check_image(image: Image.Image | str | Path | None) -> Image.Image:
    """An RGB image from an upload, with a clear error for nothing, a non-image, a corrupt or a huge file."""
    if image is None:
        raise UserError("Pick an image from the gallery or upload one.")
    if isinstance(image, (str, Path)):
        name = Path(image).name  # an upload keeps its own file name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                opened = Image.open(image, formats=IMAGE_FORMATS)  # none that runs a program (EPS: Ghostscript)
            with opened:
                if opened.width * opened.height > MAX_UPLOAD_PIXELS:
                    raise UserError(
                        f"The image is {opened.width}x{opened.height} pixels: too large (the limit is "
                        f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels). Upload a smaller one."
                    )
                opened.draft("RGB", (1024, 1024))
                image = opened.convert("RGB")
        except UserError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError("The image is too large to open safely: upload a smaller one.") from None
        except (OSError, SyntaxError, ValueError):
            fix = "Upload the picture in one of those formats (most image viewers can save it as PNG or JPEG)."
            raise UserError(unreadable_image(f"The file {name!r}", fix)) from None
    elif image.width * image.height > MAX_UPLOAD_PIXELS:
        raise UserError(f"The image is {image.width}x{image.height} pixels: too large; upload a smaller one.")
    return image.convert("RGB")


def _run_summary(info: dict, run_dir: Path) -> dict:
    config = info.get("config", {})
    evaluation = runs.read_json(run_dir / runs.EVAL) or {}
    metrics = evaluation.get("metrics", {})
    main = {k: metrics[k] for k in ("CIDEr-D", "BLEU-4", "accuracy") if k in metrics}
    return {
        "budget": config.get("budget"),
        "data_fraction": config.get("data_fraction"),
        "trainable_params": info.get("trainable_params"),
        "test_score": main,
    }


class Comparer:
    """Holds one resident base model; thread-safe (the UI may call it from several requests)."""

    def __init__(self, base_model: str | None = None, device: str = "cpu") -> None:
        self.base_model = base_model or default_model_path()
        self.device = device
        self._base: VLModel | None = None
        self._full: OrderedDict[str, VLModel] = OrderedDict()
        self._resident: OrderedDict[str, None] = OrderedDict()  # adapters on the base, least recently used first
        self._lock = threading.Lock()

    @property
    def base(self) -> VLModel:
        if self._base is None:
            self._base = VLModel(load_base_model(self.base_model, self.device))
        return self._base

    def _same_base(self, info: dict) -> bool:
        source = info.get("config", {}).get("base_model") or default_model_path()
        return (
            Path(source).expanduser().resolve() == Path(self.base_model).expanduser().resolve()
            if Path(source).exists()
            else source == self.base_model
        )

    def _info(self, run_dir: Path, task: str) -> dict:
        info = runs.read_json(run_dir / runs.CONFIG)
        if info is None:
            raise UserError(f"{run_dir.name} is not a run directory (no config.json).")
        if not self._same_base(info):
            raise UserError(
                f"Run {run_dir.name} was trained on another base model ({info['config'].get('base_model')})"
                "; compare runs of one base model at a time."
            )
        if info["config"].get("task") not in (None, task):
            raise UserError(f"Run {run_dir.name} was trained for {info['config']['task']}, not {task}.")
        return info

    def _model_for(self, run_dir: Path, info: dict) -> tuple[VLModel, str | None]:
        method = info["config"]["method"]
        if method == "zero-shot":
            return self.base, None
        if method == "full":
            key = str(run_dir)
            if key not in self._full:
                self._full[key] = load_run(run_dir, device=self.device)[0]
                while len(self._full) > FULL_MODEL_CACHE:
                    self._full.popitem(last=False)
            self._full.move_to_end(key)
            vl = self._full[key]
            return vl, next(iter(vl.adapters))
        adapter = adapter_name(run_dir)
        if adapter not in self.base.adapters:
            load_run(run_dir, vl=self.base, adapter=adapter)
        self._resident[adapter] = None
        self._resident.move_to_end(adapter)
        while len(self._resident) > MAX_RESIDENT_ADAPTERS:
            evicted, _ = self._resident.popitem(last=False)
            self.base.detach(evicted)
        return self.base, adapter

    @torch.no_grad()
    def compare(
        self,
        image,
        task: str,
        run_dirs: list[str | Path],
        question: str | None = None,
        references: list[str] | None = None,
        answers: list[str] | None = None,
        max_new_tokens: int = 20,
    ) -> list[Column]:
        """One column per run (zero-shot first), each with its output and, given references/answers, a score."""
        question = check_question(task, question)
        picture = check_image(image)
        with self._lock:
            base = self.base
            infos = [(run_dir, self._info(run_dir, task)) for run_dir in map(Path, run_dirs)]
            pixel_values = PixelCache(base.base.processor)([Example(GivenImage(picture), "query", question=question)])
            encoder = Encoder(base.tokenizer, base.bos_id, base.sep_id, base.pad_id, base.max_positions)
            prompt = encoder.prompt_ids(prompt_text(task, question))
            base.set_active(None)
            features = base.encode_images(pixel_values)  # shared by every column that leaves the vision tower as is
            zero_shot = answer(base, None, encoder, task, prompt, pixel_values, max_new_tokens, features)
            columns = [_column(None, {"config": {"method": "zero-shot"}}, zero_shot)]
            try:
                for run_dir, info in infos:
                    vl, adapter = self._model_for(run_dir, info)
                    shared = features if vl is base else None
                    output = answer(vl, adapter, encoder, task, prompt, pixel_values, max_new_tokens, shared)
                    columns.append(_column(run_dir, info, output))
            finally:
                base.set_active(None)
        for column in columns:
            column.sample_score = sample_score(task, column.output, references, answers)
        return columns


@dataclass
class Answer:
    text: str
    truncated: bool  # generation stopped at the token limit, not at [SEP] (or, for VQA, the answer's end)


@torch.no_grad()
def answer(
    vl: VLModel,
    adapter: str | None,
    encoder: Encoder,
    task: str,
    prompt: list[int],
    pixel_values: torch.Tensor,
    max_new_tokens: int,
    base_features: torch.Tensor | None = None,
) -> Answer:
    """One adapter's (None: the base's) greedy answer on one image, with that adapter active on the whole batch.

    `base_features` are the base model's image features on this `vl`: reused when the adapter leaves the
    vision tower untouched, so the vision tower runs once for all such columns."""
    vl.set_active(adapter)
    method = vl.active
    if base_features is not None and (method is None or not method.touches_vision()):
        features = base_features
    else:
        features = vl.encode_images(pixel_values)
    ids = vl.generate(features, [prompt], max_new_tokens)[0]
    kept = encoder.output(task, ids)
    limit = vl.token_limit(len(prompt), max_new_tokens)
    return Answer(encoder.decode(task, ids), truncated=len(kept) == len(ids) >= limit > 0)


class GivenImage:
    """An image source for one picture already in memory (an upload or a gallery pick)."""

    def __init__(self, picture: Image.Image) -> None:
        self.picture = picture

    def load(self) -> Image.Image:
        return self.picture


def _column(run_dir: Path | None, info: dict, output: Answer) -> Column:
    method = info["config"]["method"]
    summary = _run_summary(info, run_dir) if run_dir else {}
    label = "zero-shot (base)" if run_dir is None else f"{method} · {run_dir.name}"
    return Column(
        label=label,
        method=method,
        output=output.text,
        truncated=output.truncated,
        run_dir=str(run_dir) if run_dir else None,
        **summary,
    )


def sample_score(task: str, output: str, references: list[str] | None, answers: list[str] | None) -> dict:
    if task == "caption" and references:
        # pycocoevalcap: the app imports this module at start-up
        from training.metrics.caption import single_caption_scores

        return single_caption_scores(output, references)
    if task == "vqa" and answers:
        return {"VQA accuracy": 100 * vqa_accuracy_single(output, answers)}
    return {}
