"""The base model's architecture on the meta device, for counting parameters and solving budgets without a
weight: from a local folder's config.json, a Hub id's config.json in the local Hugging Face cache, or, for a
Hub id whose config this project writes out (BLIP-base, training/model/blip_base.py), from that config, so that
a sweep's dry run solves the real model's budgets with no network and no download."""

from __future__ import annotations

from dataclasses import dataclass

import huggingface_hub
from transformers import BlipConfig, BlipForConditionalGeneration

from training.model.base_model import is_local_path, load_base_config, meta_model
from training.model.blip_base import HUB_ID as BLIP_BASE_ID
from training.model.blip_base import HUB_SPECIAL_TOKENS, blip_base_config

# Hub ids whose config.json is written out here: the config is known without fetching it.
KNOWN_CONFIGS = {BLIP_BASE_ID: lambda: blip_base_config(*HUB_SPECIAL_TOKENS)}


@dataclass
class ModelShape:
    model: BlipForConditionalGeneration  # on the meta device: shapes, no memory
    source: str  # the id or folder it stands for
    origin: str  # where its config came from, in words

    @property
    def config(self) -> BlipConfig:
        return self.model.config


def cached_config(repo_id: str) -> str | None:
    """The path of a Hub id's config.json in the local Hugging Face cache, or None (nothing is fetched)."""
    try:
        found = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not something a Hub id can be; load_base_config says so
        return None
    return found if isinstance(found, str) else None


def model_shape(name_or_path: str | None) -> ModelShape:
    """The base model built empty on the meta device (None: the embedded default)."""
    if name_or_path is None or is_local_path(name_or_path):
        config = load_base_config(name_or_path)
        return ModelShape(meta_model(config), name_or_path or "embedded default", "its config.json")
    cached = cached_config(name_or_path)
    if cached is not None:
        config = BlipConfig.from_pretrained(cached)
        return ModelShape(meta_model(config), name_or_path, "its config.json in the local Hugging Face cache")
    if name_or_path in KNOWN_CONFIGS:
        origin = "its config as training/model/blip_base.py writes it out (the Hub id is not in the local cache)"
        return ModelShape(meta_model(KNOWN_CONFIGS[name_or_path]()), name_or_path, origin)
    return ModelShape(meta_model(load_base_config(name_or_path)), name_or_path, "its config.json from the Hub")
