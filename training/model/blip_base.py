"""The BLIP-base architecture with random weights: real size without a download.

`Salesforce/blip-image-captioning-base` cannot be fetched on the machines this project is built and tested
on, so the tests and the GPU check build a model of exactly its shape (ViT-B/16 at 384 px, a 12-layer BERT-base
decoder with cross-attention, 224M parameters) from the values of its config.json, written out below. The
weights are random and the tokenizer is a small word-level one, but the text vocabulary keeps the checkpoint's
30524 rows, so parameter counts, budgets, knobs, memory and speed are those of the real model.

transformers' `BlipConfig()` defaults differ from the checkpoint in one value that matters here: the text
decoder's attention heads (8 by default, 12 in the checkpoint); hence every value is written explicitly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

from training.model.base_model import BaseModel, build_tokenizer, save_base_model

HUB_ID = "Salesforce/blip-image-captioning-base"
# The checkpoint's [PAD], [DEC] (bos) and [SEP] ids in its BERT vocabulary, as blip_base_config takes them.
HUB_SPECIAL_TOKENS = (0, 30522, 102)
# From Salesforce/blip-image-captioning-base's config.json (transformers 4.26 export), "text_config".
TEXT_CONFIG = {
    "vocab_size": 30524,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 512,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "encoder_hidden_size": 768,  # absent from the file: BlipTextConfig's default, the vision hidden size
    "projection_dim": 768,
    "tie_word_embeddings": True,
}
# ... "vision_config".
VISION_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 384,
    "patch_size": 16,
    "num_channels": 3,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "projection_dim": 512,
}
# ... top level.
TOP_CONFIG = {"projection_dim": 512, "image_text_hidden_size": 256, "logit_scale_init_value": 2.6592}
# The checkpoint's preprocessor_config.json: 384 x 384, OpenAI CLIP's mean and standard deviation.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def blip_base_config(pad_id: int, bos_id: int, sep_id: int) -> BlipConfig:
    """BLIP-base's config with the special token ids of the tokenizer it will be used with (the checkpoint's
    are 0, 30522 and 102 in its BERT vocabulary; a small test vocabulary has its own)."""
    text = {
        **TEXT_CONFIG,
        "pad_token_id": pad_id,
        "bos_token_id": bos_id,
        "sep_token_id": sep_id,
        "eos_token_id": sep_id,
    }
    return BlipConfig(text_config=text, vision_config=dict(VISION_CONFIG), **TOP_CONFIG)


def build_blip_base(words: list[str], seed: int = 0) -> BaseModel:
    """A BLIP-base-sized model with random weights and a word-level tokenizer over `words`."""
    tokenizer = build_tokenizer(words)
    ids = tokenizer.convert_tokens_to_ids
    config = blip_base_config(ids("[PAD]"), ids("[DEC]"), ids("[SEP]"))
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    model.eval()
    size = VISION_CONFIG["image_size"]
    image_processor = BlipImageProcessorPil(
        size={"height": size, "width": size}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
    )
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return BaseModel(model=model, processor=processor, source="(new BLIP-base size)")


def save_blip_base(words: list[str], out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save (Hub layout: config.json, model.safetensors, processor and tokenizer files)."""
    return save_base_model(build_blip_base(words, seed), out_dir)
