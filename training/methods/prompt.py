"""Prompt tuning (embedding composition): trainable vectors joined to the input of each chosen tower.

Text side: P vectors before the decoder's input embeddings, initialised from the embeddings of real
vocabulary words drawn with the run's seed (Lester et al. 2021 sample them from the 5,000 most frequent
tokens; a word vocabulary has no frequencies here, so any whole word qualifies: no special, unused or
word-piece token). Vision side: P visual prompt tokens after the [CLS] token (VPT-shallow, Jia et al. 2022),
initialised N(0, 0.02^2) from the run's seed.

The count: one vector per 160 parameters on the embedded decoder (its width), capped at MAX_PROMPT_LENGTH = 128
vectors (20,480 parameters there; 18k is 112 vectors, near the 100 of Lester et al.). The vectors all sit at
position 0, so the text keeps its pre-training positions and the embedded decoder's 64 positions are not spent on
them.

Option `reparam` (residual reparametrisation, Razdaibiedina et al. 2023, in the spirit of P-tuning's and Li &
Liang's MLPs): during training each tower's prompt is P + MLP(P), MLP = Linear(d, h) -> tanh -> Linear(h, d)
with h = min(d, 512) and its output layer starting at zero, so training starts from the vocabulary-initialised
prompt. `fold()` writes P + MLP(P) into the stored vectors and drops the MLP: what is stored and counted is the
plain prompt, in both forms.
peft's PromptTuningConfig is not used: it breaks on BLIP (see docs/blip-peft-notes in the design notes).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from training.methods.base import TOWER_CHOICES, AdapterContext, Method, bias_init, linear_init, register
from training.model.blip_internals import vision_embeddings, word_embeddings

MAX_PROMPT_LENGTH = 128
REPARAM_HIDDEN_CAP = 512


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


class ResidualMLP(nn.Module):
    """The residual reparametrisation of one tower's prompt: P -> P + up(tanh(down(P))), `up` starting at zero."""

    def __init__(self, method: Method, dim: int, device: torch.device) -> None:
        super().__init__()
        hidden = min(dim, REPARAM_HIDDEN_CAP)
        self.down = nn.Linear(dim, hidden, device="meta")
        self.up = nn.Linear(hidden, dim, device="meta")
        self.down.weight = nn.Parameter(method.seeded((hidden, dim), device, linear_init))
        self.down.bias = nn.Parameter(method.seeded((hidden,), device, bias_init(dim)))
        self.up.weight = nn.Parameter(method.seeded((dim, hidden), device, lambda t, g: nn.init.zeros_(t)))
        self.up.bias = nn.Parameter(method.seeded((dim,), device, lambda t, g: nn.init.zeros_(t)))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors + self.up(torch.tanh(self.down(vectors)))


@register
class PromptTuning(Method):
    name = "prompt"
    options_accepted = {"reparam": False}

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None, **kwargs) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value, **kwargs)
        length = int(knob_value)
        reparam = bool(self.options["reparam"])
        if "text" in TOWER_CHOICES[towers]:
            words = word_embeddings(model).weight
            if words.device.type == "meta":
                init = torch.empty(length, words.shape[1], device="meta")
            else:
                rows = sample_words(self.tokenizer, length, self.generator)
                init = words.detach()[rows.to(words.device)].clone()
            self.modules["text"] = Vectors(init)
            if reparam:
                self.training_modules["text"] = ResidualMLP(self, words.shape[1], words.device)
        if "vision" in TOWER_CHOICES[towers]:
            hidden = model.config.vision_config.hidden_size
            embeddings = vision_embeddings(model)
            device = embeddings.class_embedding.device
            self.modules["vision"] = Vectors(self.seeded((length, hidden), device, normal(0.02)))
            if reparam:
                self.training_modules["vision"] = ResidualMLP(self, hidden, device)
            self.hook(embeddings.register_forward_hook(self._add_visual_prompt))

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return MAX_PROMPT_LENGTH

    def train_parameters(self) -> Iterator[nn.Parameter]:
        return chain(self.parameters(), self.training_modules.parameters())

    def prompt(self, tower: str) -> torch.Tensor:
        """A tower's prompt [P, d]: P + MLP(P) while reparametrised, else the stored vectors."""
        vectors = self.modules[tower].weight
        return self.training_modules[tower](vectors) if tower in self.training_modules else vectors

    def fold(self) -> None:
        """Write P + MLP(P) into the stored vectors and drop the MLP (a no-op without `reparam`)."""
        with torch.no_grad():
            for tower in list(self.training_modules):
                self.modules[tower].weight.copy_(self.prompt(tower))
        self.training_modules.clear()

    def text_prompt(self, batch_size: int) -> torch.Tensor | None:
        if "text" not in self.modules:
            return None
        return self.prompt("text").unsqueeze(0).expand(batch_size, -1, -1)

    def _add_visual_prompt(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        prompts = self.prompt("vision").to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :1], prompts, output[:, 1:]], dim=1)
