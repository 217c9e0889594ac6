"""Images to pixel tensors, preprocessed once per image and kept while the set is small enough."""

from __future__ import annotations

import torch
from transformers import BlipProcessor

from training.data.examples import Example

CACHE_LIMIT_BYTES = 2 * 1024**3


class PixelCache:
    def __init__(self, processor: BlipProcessor) -> None:
        self.processor = processor
        self.cache: dict[str, torch.Tensor] = {}
        self.bytes = 0

    def __call__(self, examples: list[Example]) -> torch.Tensor:
        """[B, 3, H, W] for the examples' images, in order."""
        missing = [e for e in {e.image_id: e for e in examples}.values() if e.image_id not in self.cache]
        fresh = {}
        if missing:
            images = [e.image.load() for e in missing]
            values = self.processor.image_processor(images=images, return_tensors="pt").pixel_values
            fresh = {e.image_id: v for e, v in zip(missing, values, strict=True)}
            if self.bytes + values.numel() * values.element_size() <= CACHE_LIMIT_BYTES:
                self.cache.update(fresh)
                self.bytes += values.numel() * values.element_size()
        return torch.stack([self.cache.get(e.image_id, fresh.get(e.image_id)) for e in examples])
