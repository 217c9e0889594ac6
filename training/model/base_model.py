"""The base model: any BlipForConditionalGeneration by Hub id or local path, or the embedded default.

One obvious way in (`load_base_model`), and one way to build a fresh small BLIP with its own word-level
vocabulary (`build_blip`), used for the embedded default's pre-training and by the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
)
from transformers.utils import logging as hf_logging

from training.errors import UserError
from training.paths import DEFAULT_MODEL_DIR

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


@dataclass
class BaseModel:
    model: BlipForConditionalGeneration
    processor: BlipProcessor
    source: str  # the id or path it came from

    @property
    def tokenizer(self) -> BertTokenizer:
        return self.processor.tokenizer


def default_model_path() -> str:
    return str(DEFAULT_MODEL_DIR)


def is_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def _check_local_checkpoint(name: str) -> bool:
    """True for a local folder (after checking it holds a saved BLIP config), False for a Hub id."""
    if not is_local_path(name):
        return False
    path = Path(name).expanduser()
    if not path.is_dir():
        raise UserError(
            f"Base model path {name} does not exist or is not a folder: give a folder saved with "
            "save_pretrained, or a Hub id such as Salesforce/blip-image-captioning-base."
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{name} holds no config.json: it is not a saved model. Save one with save_pretrained.")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{name}/config.json cannot be read ({exc}): the checkpoint is corrupt.") from None
    if model_type != "blip":
        raise UserError(
            f"{name} holds a {model_type!r} model; VL-PEFT Lab needs a BLIP captioning model "
            "(BlipForConditionalGeneration), e.g. Salesforce/blip-image-captioning-base."
        )
    return True


def _unloadable(name: str, local: bool, exc: Exception) -> UserError:
    if local:
        return UserError(
            f"The checkpoint in {name} cannot be loaded ({str(exc).splitlines()[0][:200]}): it is "
            "corrupt or incomplete, or has no safetensors weights; save it again."
        )
    return UserError(
        f"Base model {name!r} could not be loaded: it is not a local folder, and the Hugging Face "
        "Hub cannot be reached or has no such BLIP model. Check the id, connect to the network, "
        "or give a local folder saved with save_pretrained."
    )


def load_base_model(name_or_path: str | None = None, device: str | torch.device = "cpu") -> BaseModel:
    """Load a BLIP captioning model and its processor; raise UserError with a clear way out on failure."""
    name = name_or_path or default_model_path()
    local = _check_local_checkpoint(name)
    try:
        model = BlipForConditionalGeneration.from_pretrained(name, use_safetensors=True, trust_remote_code=False)
        processor = BlipProcessor.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _unloadable(name, local, exc) from None
    except Exception as exc:  # safetensors and torch raise their own types for corrupt files
        raise UserError(
            f"The checkpoint {name} cannot be loaded ({type(exc).__name__}: {str(exc)[:200]}): "
            "it looks corrupt; download or save it again."
        ) from None
    if model.config.model_type != "blip":
        raise UserError(f"{name} is not a BLIP model; give a BlipForConditionalGeneration checkpoint.")
    model.to(device)
    model.eval()
    return BaseModel(model=model, processor=processor, source=name)


def load_base_config(name_or_path: str | None = None) -> BlipConfig:
    """The base model's config alone (config.json): its shape, without reading a weight."""
    name = name_or_path or default_model_path()
    local = _check_local_checkpoint(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _unloadable(name, local, exc) from None
    if not isinstance(config, BlipConfig):
        raise UserError(f"{name} is not a BLIP model; give a BlipForConditionalGeneration checkpoint.")
    return config


def meta_model(config: BlipConfig) -> BlipForConditionalGeneration:
    """The model's modules and parameter shapes on the meta device: exact counts, no memory, no weights."""
    with torch.device("meta"):
        return BlipForConditionalGeneration(config)


def build_tokenizer(words: list[str]) -> BertTokenizer:
    """A word-level WordPiece vocabulary: the special tokens, then every word once (sorted, for determinism)."""
    ordered = list(SPECIAL_TOKENS) + sorted({w.lower() for w in words} - set(SPECIAL_TOKENS))
    vocab = {token: index for index, token in enumerate(ordered)}
    return BertTokenizer(vocab, do_lower_case=True, bos_token="[DEC]", model_max_length=512)


def build_blip(
    words: list[str],
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 192,
    vision_layers: int = 4,
    text_hidden: int = 192,
    text_layers: int = 4,
    heads: int = 4,
    max_positions: int = 64,
    seed: int = 0,
) -> BaseModel:
    """A fresh, randomly initialised small BLIP with its processor (before any pre-training)."""
    tokenizer = build_tokenizer(words)
    ids = tokenizer.convert_tokens_to_ids
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=4 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        encoder_hidden_size=vision_hidden,
        pad_token_id=ids("[PAD]"),
        bos_token_id=ids("[DEC]"),
        sep_token_id=ids("[SEP]"),
        eos_token_id=ids("[SEP]"),
    )
    vision_config = dict(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=vision_hidden)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.eval()
    return BaseModel(model=model, processor=processor, source="(new)")


def save_base_model(base: BaseModel, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base.model.save_pretrained(out, safe_serialization=True)
    base.processor.save_pretrained(out)
    return out
