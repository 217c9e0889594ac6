"""Decode the test split with the active adapter and score it with the task's metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from training.data.examples import Example
from training.methods.vlmodel import VLModel
from training.metrics.vqa import vqa_scores
from training.model.pixels import PixelCache
from training.run.tasks import Encoder, prompt_text

IMAGE_BATCH = 64  # images through the vision tower at once
# The most memory one decoding batch's cross-attention cache may take (each row keeps its image's keys and values
# in every decoder layer): the embedded default decodes 1024 rows at once, BLIP-base 64 as before. Wider batches
# mean fewer decoder calls, and `generate` groups prompts of one length across the whole batch (VQA's questions
# have about ten lengths).
DECODE_CACHE_BYTES = 512 * 2**20
DECODE_ROWS = (64, 1024)


def decode_rows(vl: VLModel) -> int:
    """How many examples `predict` decodes at once on this model."""
    vision, text = vl.model.config.vision_config, vl.model.config.text_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    per_row = 2 * text.num_hidden_layers * tokens * text.hidden_size * 4
    low, high = DECODE_ROWS
    return max(low, min(high, DECODE_CACHE_BYTES // per_row))


def image_features(
    vl: VLModel, examples: list[Example], pixels: PixelCache, batch_size: int = IMAGE_BATCH
) -> dict[str, torch.Tensor]:
    """The vision tower's output for each distinct image of `examples`, by image id."""
    unique = list({e.image_id: e for e in examples}.values())
    features = {}
    for start in range(0, len(unique), batch_size):
        batch = unique[start : start + batch_size]
        for example, embeds in zip(batch, vl.encode_images(pixels(batch)), strict=True):
            features[example.image_id] = embeds
    return features


@torch.no_grad()
def predict(
    vl: VLModel,
    task: str,
    examples: list[Example],
    pixels: PixelCache,
    encoder: Encoder,
    batch_size: int | None = None,
    max_new_tokens: int = 20,
    progress: Callable[[int, int], None] | None = None,
    features: dict[str, torch.Tensor] | None = None,
) -> list[str]:
    """Generated text for each example, `batch_size` examples at a time (default: `decode_rows`); each distinct
    image goes through the vision tower once per batch, unless `features` holds its features already (a frozen
    vision tower's, computed once per run)."""
    batch_size = batch_size or decode_rows(vl)
    outputs: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        known = features or image_features(vl, batch, pixels)
        image_embeds = torch.stack([known[e.image_id] for e in batch])
        prompts = [encoder.prompt_ids(prompt_text(task, e.question)) for e in batch]
        for ids in vl.generate(image_embeds, prompts, max_new_tokens=max_new_tokens):
            outputs.append(encoder.decode(task, ids))
        if progress:
            progress(min(start + batch_size, len(examples)), len(examples))
    return outputs


def score(task: str, examples: list[Example], predictions: list[str]) -> tuple[dict, list[dict]]:
    """(metrics, per-example records) for the predictions."""
    if task == "caption":
        # pycocoevalcap: the app imports this module at start-up
        from training.metrics.caption import caption_scores_per_sample

        preds = {e.image_id: p for e, p in zip(examples, predictions, strict=True)}
        refs = {e.image_id: e.captions for e in examples}
        metrics, per_image = caption_scores_per_sample(preds, refs)
        # Per-image CIDEr-D (document frequencies from this whole set): the report's paired bootstrap resamples it.
        records = [
            {
                "image_id": e.image_id,
                "prediction": p,
                "references": e.captions,
                "CIDEr-D": per_image[e.image_id]["CIDEr-D"],
            }
            for e, p in zip(examples, predictions, strict=True)
        ]
        return metrics, records

    types = [e.question_type for e in examples]
    result = vqa_scores(predictions, [e.answers for e in examples], types if all(types) else None)
    per_sample = result.pop("per_sample", None) or [None] * len(examples)
    records = [
        {
            "question_id": e.question_id,
            "image_id": e.image_id,
            "question": e.question,
            "prediction": p,
            "answers": e.answers,
            "question_type": e.question_type,
            "accuracy": acc,
        }
        for e, p, acc in zip(examples, predictions, per_sample, strict=True)
    ]
    return result, records


def evaluate(
    vl: VLModel,
    task: str,
    examples: list[Example],
    pixels: PixelCache,
    encoder: Encoder,
    batch_size: int | None = None,
    max_new_tokens: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, list[dict]]:
    start = time.perf_counter()
    was_training = vl.model.training
    vl.model.eval()
    predictions = predict(vl, task, examples, pixels, encoder, batch_size, max_new_tokens, progress)
    decode_s = time.perf_counter() - start
    metrics, records = score(task, examples, predictions)
    vl.model.train(was_training)
    metrics = {
        **metrics,
        "num_examples": len(examples),
        "decode_s": round(decode_s, 3),
        "eval_s": round(time.perf_counter() - start, 3),
    }
    return metrics, records
