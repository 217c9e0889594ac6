"""Prefix tuning (embedding composition): trainable key/value prefixes in every self-attention block.

Text side: per decoder layer, P keys and values that the decoder feeds as a pre-filled self-attention cache
(the image keys stay in the separate cross-attention cache). Vision side: each ViT attention is wrapped so
its keys and values get the same kind of prefix.

Initialisation: the text prefixes start as the keys and values the frozen decoder itself computes, layer by
layer, for P whole vocabulary words drawn with the run's seed (against a blank, all-zero image token), as
Li & Liang (2021) recommend (activations of real words); the vision prefixes start N(0, 0.02^2) from the
seed (there is no vocabulary of images to draw from).

Option `reparam` (Li & Liang's training form): during training each tower's prefixes are produced as
MLP(E), E a trainable [P, d] embedding (N(0, 1), as their nn.Embedding) and the MLP
Linear(d, h) -> tanh -> Linear(h, L * 2 * d) with h = min(d, 512), its output read as [P, L, 2, heads,
head_dim]. `fold()` evaluates MLP(E) into the plain prefixes and drops E and the MLP, so what is stored
and counted is the plain prefix alone, in both forms.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from training.methods.base import TOWER_CHOICES, AdapterContext, Method, bias_init, linear_init, register
from training.methods.prompt import MAX_PROMPT_LENGTH, Vectors, normal, sample_words
from training.methods.wrappers import unwrap
from training.model.blip_internals import (
    CACHE_KEYWORD,
    DynamicCache,
    EncoderDecoderCache,
    self_attention_layers,
    text_layers,
    vision_attention_parts,
    vision_embeddings,
    vision_layers,
    word_embeddings,
)

REPARAM_HIDDEN_CAP = 512


class PrefixedVisionAttention(nn.Module):
    """BLIP's ViT attention with key/value prefixes from one adapter (a pass-through when it is inactive)."""

    def __init__(self, inner: nn.Module, method: PrefixTuning, index: int) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = method.adapter
        self.ctx = method.ctx
        self.index = index
        self.prefix = method.vision_prefix  # index -> [2, heads, P, head_dim]

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.ctx.active != self.adapter:
            return self.inner(hidden_states, **kwargs)
        return self._prefixed(hidden_states)

    def _prefixed(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qkv_proj, heads, head_dim, scale, dropout, projection = vision_attention_parts(unwrap(self.inner))
        batch, length, dim = hidden_states.shape
        qkv = qkv_proj(hidden_states).reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        prefix = self.prefix(self.index).to(hidden_states.dtype)
        key = torch.cat([prefix[0].unsqueeze(0).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([prefix[1].unsqueeze(0).expand(batch, -1, -1, -1), value], dim=2)
        probs = torch.softmax(query @ key.transpose(-1, -2) * scale, dim=-1)
        context = (dropout(probs) @ value).permute(0, 2, 1, 3).reshape(batch, length, dim)
        return projection(context), probs


class PrefixMLP(nn.Module):
    """Li & Liang's reparametrisation of one tower's prefixes: MLP(E) read as [L, 2, heads, P, head_dim]."""

    def __init__(
        self, method: Method, length: int, layers: int, heads: int, head_dim: int, device: torch.device
    ) -> None:
        super().__init__()
        dim = heads * head_dim
        hidden = min(dim, REPARAM_HIDDEN_CAP)
        self.shape = (length, layers, 2, heads, head_dim)
        self.embedding = nn.Parameter(method.seeded((length, dim), device, normal(1.0)))
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden, device="meta"), nn.Tanh(), nn.Linear(hidden, layers * 2 * dim, device="meta")
        )
        for linear in (self.mlp[0], self.mlp[2]):
            fan_in = linear.in_features
            linear.weight = nn.Parameter(method.seeded(tuple(linear.weight.shape), device, linear_init))
            linear.bias = nn.Parameter(method.seeded(tuple(linear.bias.shape), device, bias_init(fan_in)))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding).view(self.shape).permute(1, 2, 3, 0, 4)


@register
class PrefixTuning(Method):
    name = "prefix"
    options_accepted = {"reparam": False}

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None, **kwargs) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value, **kwargs)
        length = int(knob_value)
        reparam = bool(self.options["reparam"])
        if "text" in TOWER_CHOICES[towers]:
            cfg = model.config.text_config
            heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
            count = len(text_layers(model))
            device = word_embeddings(model).weight.device
            self.modules["text"] = Vectors(self._word_activations(length, (count, 2, heads, length, head_dim)))
            if reparam:
                self.training_modules["text"] = PrefixMLP(self, length, count, heads, head_dim, device)
        if "vision" in TOWER_CHOICES[towers]:
            cfg = model.config.vision_config
            heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
            device = vision_embeddings(model).class_embedding.device
            layers = vision_layers(model)
            for index, layer in enumerate(layers):
                init = self.seeded((2, heads, length, head_dim), device, normal(0.02))
                self.modules[f"vision-{index}"] = Vectors(init)
                self.wrap(layer, "self_attn", PrefixedVisionAttention(layer.self_attn, self, index))
            if reparam:
                self.training_modules["vision"] = PrefixMLP(self, length, len(layers), heads, head_dim, device)

    def _word_activations(self, length: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Per decoder layer, the self-attention keys and values of `length` sampled whole words [L, 2, heads,
        P, head_dim], computed by the frozen base decoder (no adapter acting) against one all-zero image token."""
        decoder = self.model.text_decoder
        if word_embeddings(self.model).weight.device.type == "meta":
            return torch.empty(shape, device="meta")
        ids = sample_words(self.tokenizer, length, self.generator).to(decoder.device)[None]
        image = torch.zeros(
            1, 1, self.model.config.vision_config.hidden_size, device=decoder.device, dtype=decoder.dtype
        )
        active, training = self.ctx.active, decoder.training
        self.ctx.active = None
        decoder.eval()
        try:
            with torch.no_grad():
                cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
                decoder(input_ids=ids, encoder_hidden_states=image, use_cache=True, **{CACHE_KEYWORD: cache})
        finally:
            self.ctx.active = active
            decoder.train(training)
        layers = self_attention_layers(cache)
        return torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in layers]).contiguous()

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return MAX_PROMPT_LENGTH

    def train_parameters(self) -> Iterator[nn.Parameter]:
        return self.training_modules.parameters() if len(self.training_modules) else self.parameters()

    def fold(self) -> None:
        """Write MLP(E) into the plain prefixes and drop E and the MLP (a no-op without `reparam`)."""
        with torch.no_grad():
            if "text" in self.training_modules:
                self.modules["text"].weight.copy_(self.training_modules["text"]())
            if "vision" in self.training_modules:
                produced = self.training_modules["vision"]()
                for index in range(produced.shape[0]):
                    self.modules[f"vision-{index}"].weight.copy_(produced[index])
        self.training_modules.clear()

    def vision_prefix(self, index: int) -> torch.Tensor:
        """Layer `index`'s vision prefix [2, heads, P, head_dim]: MLP(E) while reparametrised, else stored."""
        if "vision" in self.training_modules:
            return self.training_modules["vision"]()[index]
        return self.modules[f"vision-{index}"].weight

    def text_prefix(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if "text" not in self.modules:
            return None
        prefix = self.training_modules["text"]() if "text" in self.training_modules else self.modules["text"].weight
        return [
            (layer[0].unsqueeze(0).expand(batch_size, -1, -1, -1), layer[1].unsqueeze(0).expand(batch_size, -1, -1, -1))
            for layer in prefix
        ]
