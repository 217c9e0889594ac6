"""What a resident worker keeps between the runs it trains one after another in one process (a sweep's or a
tuning's worker, training/launch/resident.py): the loaded base models, kept pristine and handed to each run as a
copy, the loaded datasets, the preprocessed images, and a frozen vision tower's image features.

Each run gets exactly what a fresh process would load: a deep copy of the pristine model (a run's method and any
full fine-tuning change only the copy), the same dataset objects (runs only read them), and features only for the
same images in the same order, computed by the same untouched tower, so the same numbers bit for bit."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import torch

from training.data.dataset import load_dataset
from training.data.examples import Example, TaskDataset
from training.model.base_model import BaseModel, default_model_path, load_base_model
from training.model.pixels import PixelCache

FEATURE_LIMIT_BYTES = 2 * 1024**3  # the image features kept across runs; the least recently used go first


class Resident:
    """The worker's store; one per process, used by one run at a time."""

    def __init__(self) -> None:
        self.bases: dict[tuple[str, str], BaseModel] = {}
        self.datasets: dict[tuple[str | None, str], TaskDataset] = {}
        self.pixel_caches: dict[tuple[str, str], PixelCache] = {}
        self.features: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.feature_bytes = 0

    def base_model(self, name: str | None, device: torch.device) -> BaseModel:
        """A copy of the pristine base model (loaded on first use), with its own processor."""
        key = self.base_key(name, device)
        if key not in self.bases:
            self.bases[key] = load_base_model(name, device)
        pristine = self.bases[key]
        return BaseModel(copy.deepcopy(pristine.model), copy.deepcopy(pristine.processor), pristine.source)

    @staticmethod
    def base_key(name: str | None, device: torch.device) -> tuple[str, str]:
        return (name or default_model_path(), str(device))

    def dataset(self, name: str | None, task: str) -> TaskDataset:
        key = (name, task)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(name, task)
        return self.datasets[key]

    def pixels(self, base: BaseModel, device: torch.device, dataset: tuple[str | None, str]) -> PixelCache:
        """The base's preprocessed images of one dataset (its name and task, as `dataset` takes them), shared by its
        runs (each image is preprocessed on its own). Per dataset: images are known by their ids, and two datasets
        may give the same id (`train/000000.png`) to different pictures."""
        key = (*self.base_key(base.source, device), *dataset)
        if key not in self.pixel_caches:
            self.pixel_caches[key] = PixelCache(base.processor)
        return self.pixel_caches[key]

    def image_features(
        self,
        base: BaseModel,
        device: torch.device,
        examples: list[Example],
        compute: Callable[[], dict[str, torch.Tensor]],
        dataset: tuple[str | None, str],
    ) -> dict[str, torch.Tensor]:
        """The frozen tower's features of `examples` of one dataset: computed once for these images in this order (so
        in the same batches, at the same thread count) and reused by later runs on the same base and dataset."""
        ids = tuple(e.image_id for e in examples)
        key = (*self.base_key(base.source, device), *dataset, torch.get_num_threads(), ids)
        if key in self.features:
            self.features.move_to_end(key)
            return self.features[key]
        features = compute()
        size = sum(t.numel() * t.element_size() for t in features.values())
        if size <= FEATURE_LIMIT_BYTES:
            while self.features and self.feature_bytes + size > FEATURE_LIMIT_BYTES:
                _, dropped = self.features.popitem(last=False)
                self.feature_bytes -= sum(t.numel() * t.element_size() for t in dropped.values())
            self.features[key] = features
            self.feature_bytes += size
        return features
