"""Validation during training: a fixed subset of the validation split, scored with the task's main metric.

The validation split steers everything a run chooses (the checkpoint it keeps, when it stops, and, through
`python -m training tune`, its learning rate); the test split is scored once, at the end, and steers nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from training.catalog import MAIN_METRIC
from training.data.examples import Example
from training.methods.vlmodel import VLModel
from training.metrics.vqa import vqa_scores
from training.model.pixels import PixelCache
from training.run.evaluation import predict
from training.run.runs import ValidationRecord
from training.run.tasks import Encoder


def main_metric_score(task: str, examples: list[Example], predictions: list[str]) -> float:
    """The task's main metric only (CIDEr-D without METEOR and BLEU for captions, VQA accuracy)."""
    if task == "caption":
        # pycocoevalcap: the app imports this module at start-up
        from training.metrics.caption import cider_d

        return cider_d(
            {e.image_id: p for e, p in zip(examples, predictions, strict=True)},
            {e.image_id: e.captions for e in examples},
        )

    return vqa_scores(predictions, [e.answers for e in examples])["accuracy"]


@dataclass
class Validator:
    """Scores the active adapter on the validation subset and remembers the best score and its step."""

    task: str
    examples: list[Example]
    pixels: PixelCache
    encoder: Encoder
    max_new_tokens: int
    patience: int
    best: float | None = None
    best_step: int = 0
    since_best: int = 0
    curve: list[ValidationRecord] = field(default_factory=list)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # by image id; empty: run the vision tower

    @property
    def metric(self) -> str:
        return MAIN_METRIC[self.task]

    def score(self, vl: VLModel) -> tuple[float, float]:
        """(score, seconds) of the model as it is now."""
        start = time.perf_counter()
        was_training = vl.model.training
        vl.model.eval()
        predictions = predict(
            vl,
            self.task,
            self.examples,
            self.pixels,
            self.encoder,
            max_new_tokens=self.max_new_tokens,
            features=self.features or None,
        )
        vl.model.train(was_training)
        return main_metric_score(self.task, self.examples, predictions), time.perf_counter() - start

    def observe(self, step: int, value: float) -> bool:
        """Record a validation at `step`; True when it is the best so far (higher is better)."""
        improved = self.best is None or value > self.best
        if improved:
            self.best, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return self.since_best >= self.patience
