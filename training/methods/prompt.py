"""Prompt tuning (embedding composition): trainable vectors joined to the input of each chosen tower.

Text side: P vectors before the decoder's input embeddings, initialised from the embeddings of real
vocabulary words drawn with the run's seed (Lester et al. 2021 sample them from the 5,000 most frequent
tokens; a word vocabulary has no frequencies here, so any whole word qualifies: no special, unused or
word-piece token). Vision side: P visual prompt tokens after the [CLS] token (VPT-shallow, Jia et al. 2022),
initialised N(0, 0.02^2) from the run's seed.
peft's PromptTuningConfig is not used: it breaks on BLIP (see docs/blip-peft-notes in the design notes).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from training.methods.base import TOWER_CHOICES, AdapterContext, Method, register
from training.model.blip_internals import vision_embeddings, word_embeddings

MAX_PROMPT_LENGTH = 128


class Vectors(nn.Module):
    """A parameter tensor that lives in a ModuleDict (so it has a stable state-dict key)."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init)


def word_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the vocabulary's whole words: alphabetic tokens (no special, [unused*] or ##word-piece token)."""
    special = set(tokenizer.all_special_ids)
    ids = [index for token, index in tokenizer.get_vocab().items() if token.isalpha() and index not in special]
    if not ids:
        raise ValueError("the tokenizer's vocabulary has no whole-word tokens to initialise prompt vectors from")
    return sorted(ids)


def sample_words(tokenizer: PreTrainedTokenizerBase | None, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` whole-word token ids drawn with `generator`: without repetition while the vocabulary lasts."""
    if tokenizer is None:
        raise ValueError("initialising from vocabulary words needs the tokenizer (VLModel.attach passes it)")
    words = torch.tensor(word_token_ids(tokenizer))
    rounds = -(-count // len(words))
    order = torch.cat([torch.randperm(len(words), generator=generator) for _ in range(rounds)])
    return words[order[:count]]


def normal(std: float):
    """A fill for `Method.seeded`: N(0, std^2)."""
    return lambda tensor, generator: nn.init.normal_(tensor, 0.0, std, generator=generator)


@register
class PromptTuning(Method):
    name = "prompt"

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None, **kwargs) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value, **kwargs)
        length = int(knob_value)
        if "text" in TOWER_CHOICES[towers]:
            words = word_embeddings(model).weight
            if words.device.type == "meta":
                init = torch.empty(length, words.shape[1], device="meta")
            else:
                rows = sample_words(self.tokenizer, length, self.generator)
                init = words.detach()[rows.to(words.device)].clone()
            self.modules["text"] = Vectors(init)
        if "vision" in TOWER_CHOICES[towers]:
            hidden = model.config.vision_config.hidden_size
            embeddings = vision_embeddings(model)
            device = embeddings.class_embedding.device
            self.modules["vision"] = Vectors(self.seeded((length, hidden), device, normal(0.02)))
            self.hook(embeddings.register_forward_hook(self._add_visual_prompt))

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return MAX_PROMPT_LENGTH

    def text_prompt(self, batch_size: int) -> torch.Tensor | None:
        if "text" not in self.modules:
            return None
        return self.modules["text"].weight.unsqueeze(0).expand(batch_size, -1, -1)

    def _add_visual_prompt(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        prompts = self.modules["vision"].weight.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :1], prompts, output[:, 1:]], dim=1)
