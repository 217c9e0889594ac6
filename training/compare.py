"""Side-by-side outputs of several trained adapters on one image: one resident base, adapters batched.

The zero-shot base model is always the first column. Every PEFT run is an adapter on the one shared base,
and they share batches (`VLModel.mixed`: each row runs through its own adapter). The image goes through the
vision tower once for the base and the text-only adapters, once more in the same batch for each adapter that
changes the vision tower, and on its own only for visual prompt tokens (they lengthen the image sequence).
Prompt-tuned adapters are prefilled on their own (their prompt vectors would lengthen every row of a shared
prefill); then every column decodes in one loop (`VLModel.generate_groups`), shorter sequences padded and
masked. Full fine-tuning runs carry a whole model each and get their own copy (kept in a small cache),
decoded on their own.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from training import runs
from training.base_model import default_model_path, load_base_model
from training.data.dataset import Example
from training.errors import UserError
from training.pixels import PixelCache
from training.tasks import Encoder, prompt_text
from training.trainer import load_run
from training.vlmodel import VLModel

MAX_QUESTION_CHARS = 300
MAX_UPLOAD_PIXELS = 40_000_000
FULL_MODEL_CACHE = 2


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
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                opened = Image.open(image)
            with opened:
                if opened.width * opened.height > MAX_UPLOAD_PIXELS:
                    raise UserError(f"The image is {opened.width}x{opened.height} pixels: too large (the limit is "
                                    f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels). Upload a smaller one.")  # fmt: skip
                opened.draft("RGB", (1024, 1024))
                image = opened.convert("RGB")
        except UserError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError("The image is too large to open safely: upload a smaller one.") from None
        except (OSError, SyntaxError, ValueError):
            raise UserError("That file is not an image this app can read (or it is corrupt): upload a PNG or JPEG.") \
                from None  # fmt: skip
    elif image.width * image.height > MAX_UPLOAD_PIXELS:
        raise UserError(f"The image is {image.width}x{image.height} pixels: too large; upload a smaller one.")
    return image.convert("RGB")


def _run_summary(info: dict, run_dir: Path) -> dict:
    config = info.get("config", {})
    evaluation = runs.read_json(run_dir / runs.EVAL) or {}
    metrics = evaluation.get("metrics", {})
    main = {k: metrics[k] for k in ("CIDEr-D", "BLEU-4", "accuracy") if k in metrics}
    return {"budget": config.get("budget"), "data_fraction": config.get("data_fraction"),
            "trainable_params": info.get("trainable_params"), "test_score": main}  # fmt: skip


class Comparer:
    """Holds one resident base model; thread-safe (the UI may call it from several requests)."""

    def __init__(self, base_model: str | None = None, device: str = "cpu") -> None:
        self.base_model = base_model or default_model_path()
        self.device = device
        self._base: VLModel | None = None
        self._full: OrderedDict[str, VLModel] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def base(self) -> VLModel:
        if self._base is None:
            self._base = VLModel(load_base_model(self.base_model, self.device))
        return self._base

    def _same_base(self, info: dict) -> bool:
        source = info.get("config", {}).get("base_model") or default_model_path()
        return Path(source).expanduser().resolve() == Path(self.base_model).expanduser().resolve() \
            if Path(source).exists() else source == self.base_model  # fmt: skip

    def _model_for(self, run_dir: Path) -> tuple[VLModel, str | None, dict]:
        info = runs.read_json(run_dir / runs.CONFIG)
        if info is None:
            raise UserError(f"{run_dir.name} is not a run directory (no config.json).")
        if not self._same_base(info):
            raise UserError(f"Run {run_dir.name} was trained on another base model "
                            f"({info['config'].get('base_model')}); compare runs of one base model at a time.")
        method = info["config"]["method"]
        if method == "zero-shot":
            return self.base, None, info
        if method == "full":
            key = str(run_dir)
            if key not in self._full:
                self._full[key] = load_run(run_dir, device=self.device)[0]
                while len(self._full) > FULL_MODEL_CACHE:
                    self._full.popitem(last=False)
            vl = self._full[key]
            return vl, next(iter(vl.adapters)), info
        adapter = run_dir.name
        if adapter not in self.base.adapters:
            load_run(run_dir, vl=self.base, adapter=adapter)
        return self.base, adapter, info

    @torch.no_grad()
    def compare(self, image, task: str, run_dirs: list[str | Path], question: str | None = None,
                references: list[str] | None = None, answers: list[str] | None = None,
                max_new_tokens: int = 20) -> list[Column]:  # fmt: skip
        """One column per run (zero-shot first), each with its output and, given references/answers, a score."""
        question = check_question(task, question)
        picture = check_image(image)
        with self._lock:
            base = self.base
            pixel_values = PixelCache(base.base.processor)([Example(GivenImage(picture), "query", question=question)])
            resolved = []
            for run_dir in map(Path, run_dirs):
                vl, adapter, info = self._model_for(run_dir)
                if info["config"].get("task") not in (None, task):
                    raise UserError(f"Run {run_dir.name} was trained for {info['config']['task']}, not {task}.")
                resolved.append((run_dir, vl, adapter, info))
            shared = [None] + [adapter for _, vl, adapter, _ in resolved if vl is base]
            outputs = decode_batched(base, shared, task, question, pixel_values, max_new_tokens)
            columns = [_column(None, {"config": {"method": "zero-shot"}}, outputs[None])]
            for run_dir, vl, adapter, info in resolved:
                if vl is base:
                    output = outputs[adapter]
                else:
                    output = decode_batched(vl, [adapter], task, question, pixel_values, max_new_tokens)[adapter]
                columns.append(_column(run_dir, info, output))
        for column in columns:
            column.sample_score = sample_score(task, column.output, references, answers)
        return columns


class GivenImage:
    """An image source for one picture already in memory (an upload or a gallery pick)."""

    def __init__(self, picture: Image.Image) -> None:
        self.picture = picture

    def load(self) -> Image.Image:
        return self.picture


def _column(run_dir: Path | None, info: dict, output: str) -> Column:
    method = info["config"]["method"]
    summary = _run_summary(info, run_dir) if run_dir else {}
    label = "zero-shot (base)" if run_dir is None else f"{method} · {run_dir.name}"
    return Column(label=label, method=method, output=output, run_dir=str(run_dir) if run_dir else None,
                  **summary)  # fmt: skip


@torch.no_grad()
def decode_batched(vl: VLModel, adapters: list[str | None], task: str, question: str, pixel_values: torch.Tensor,
                   max_new_tokens: int) -> dict[str | None, str]:  # fmt: skip
    """Output text for each adapter (None: the base) on one image, decoded in as few batches as possible."""
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    adapters = list(dict.fromkeys(adapters))
    methods = {name: vl.adapters[name] if name is not None else None for name in adapters}
    own_sequence = [name for name, m in methods.items() if m is not None and m.lengthens_image()]
    changed = [name for name, m in methods.items() if m is not None and m.touches_vision() and name not in own_sequence]
    encoded = [None, *changed]
    with vl.mixed(encoded):
        embeds = vl.encode_images(pixel_values.expand(len(encoded), -1, -1, -1))
    features = {name: embeds[row : row + 1] for row, name in enumerate(encoded)}
    previous = vl.ctx.active
    try:
        for name in own_sequence:
            vl.set_active(name)
            features[name] = vl.encode_images(pixel_values)
    finally:
        vl.set_active(previous)
    # Prompt tuning lengthens the sequences (prompt vectors before the text, visual prompt tokens): in a shared
    # prefill every row would carry that length, so prompt-tuned rows are prefilled on their own; all rows then
    # decode in one loop (VLModel.generate_groups).
    lengthened = [name for name, m in methods.items() if m is not None and (m.lengthens_text() or m.lengthens_image())]
    groups = [[(name, features.get(name, features[None])) for name in group]
              for group in ([n for n in adapters if n not in lengthened], lengthened) if group]  # fmt: skip
    prompt = encoder.prompt_ids(prompt_text(task, question))
    generated = vl.generate_groups(groups, prompt, max_new_tokens)
    names = [name for group in groups for name, _ in group]
    outputs = dict(zip(names, generated, strict=True))
    return {name: encoder.decode(outputs[name]) for name in adapters}


def sample_score(task: str, output: str, references: list[str] | None, answers: list[str] | None) -> dict:
    if task == "caption" and references:
        from training.metrics.caption import single_caption_scores

        return single_caption_scores(output, references)
    if task == "vqa" and answers:
        from training.metrics.vqa import vqa_accuracy_single

        return {"VQA accuracy": 100 * vqa_accuracy_single(output, answers)}
    return {}
