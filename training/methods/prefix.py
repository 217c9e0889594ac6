"""Prefix tuning (embedding composition): trainable key/value prefixes in every self-attention block.

Text side: per decoder layer, P keys and values that the decoder feeds as a pre-filled self-attention cache
(the image keys stay in the separate cross-attention cache). Vision side: each ViT attention is wrapped so
its keys and values get the same kind of prefix. Parametrised directly (no reparametrisation MLP), so the
trainable count is exactly what is trained and stored.
"""

from __future__ import annotations

import torch
from torch import nn

from training.methods.base import ALL_ROWS, AdapterContext, Method, register, text_layers, vision_layers
from training.methods.prompt import MAX_PROMPT_LENGTH, Vectors
from training.methods.wrappers import unwrap


class PrefixedVisionAttention(nn.Module):
    """BLIP's ViT attention with key/value prefixes from one adapter (a pass-through when it is inactive)."""

    def __init__(self, inner: nn.Module, method: PrefixTuning, prefix: Vectors) -> None:
        super().__init__()
        self.inner = inner
        self.method = method.adapter
        self.ctx = method.ctx
        self.prefix = prefix  # [2, heads, P, head_dim]

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = self.ctx.rows(self.method, hidden_states.device)
        if rows is None:
            return self.inner(hidden_states, **kwargs)
        if rows is ALL_ROWS:
            return self._prefixed(hidden_states)
        # A mixed batch: this adapter's rows get its prefixes, the others go through the layer below (the
        # base, or other adapters' wrappers), each sub-batch with the context narrowed to its rows.
        picked = rows.tolist()
        others = [row for row in range(hidden_states.shape[0]) if row not in picked]
        out = hidden_states.new_empty(hidden_states.shape)
        with self.ctx.narrowed(picked):
            out[rows] = self._prefixed(hidden_states[rows])[0]
        if others:
            with self.ctx.narrowed(others):
                out[others] = self.inner(hidden_states[others], **kwargs)[0]
        return out, None

    def _prefixed(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attn = unwrap(self.inner)
        batch, length, dim = hidden_states.shape
        qkv = attn.qkv(hidden_states).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        prefix = self.prefix.weight.to(hidden_states.dtype)
        key = torch.cat([prefix[0].unsqueeze(0).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([prefix[1].unsqueeze(0).expand(batch, -1, -1, -1), value], dim=2)
        probs = torch.softmax(query @ key.transpose(-1, -2) * attn.scale, dim=-1)
        context = (attn.dropout(probs) @ value).permute(0, 2, 1, 3).reshape(batch, length, dim)
        return attn.projection(context), probs


@register
class PrefixTuning(Method):
    name = "prefix"
    family = "embedding composition"
    knob = "prefix length"
    default_lr = 1e-2
    summary = ("Learns keys and values that every attention layer attends to, like a virtual context; the paper "
               "found embedding composition behind LoRA and adapters.")  # fmt: skip

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value)
        length = int(knob_value)
        generator = torch.Generator().manual_seed(0)
        if towers in ("text", "both"):
            cfg = model.config.text_config
            heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
            shape = (len(text_layers(model)), 2, heads, length, head_dim)
            device = model.text_decoder.bert.embeddings.word_embeddings.weight.device
            self.modules["text"] = Vectors((torch.randn(shape, generator=generator) * 0.02).to(device))
        if towers in ("vision", "both"):
            cfg = model.config.vision_config
            heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
            device = model.vision_model.embeddings.class_embedding.device
            for index, layer in enumerate(vision_layers(model)):
                prefix = Vectors((torch.randn((2, heads, length, head_dim), generator=generator) * 0.02).to(device))
                self.modules[f"vision-{index}"] = prefix
                layer.self_attn = PrefixedVisionAttention(layer.self_attn, self, prefix)

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return MAX_PROMPT_LENGTH

    def text_prefix(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if "text" not in self.modules:
            return None
        prefix = self.modules["text"].weight
        return [
            (layer[0].unsqueeze(0).expand(batch_size, -1, -1, -1), layer[1].unsqueeze(0).expand(batch_size, -1, -1, -1))
            for layer in prefix
        ]
