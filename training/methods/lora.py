"""LoRA (layer composition) through peft: low-rank updates of the attention projections.

Vision: the fused `qkv` projection of every ViT block. Text: `query` and `value` of every self- and
cross-attention of the decoder. The LM head (tied to the word embeddings) is never a target.

Scaling: the update is `scaling * B @ A` with `scaling = 2` up to rank `STABLE_FROM_RANK`, and
`2 * sqrt(STABLE_FROM_RANK / r)` above it (rank-stabilised LoRA, Kalajdzievski 2023). With a constant
scaling the update grows with the rank at a fixed learning rate: on the embedded default, rank 111 at
lr 6e-3 diverged (VQA 0.8 % against 37-43 % at ranks 4-35, 150 steps); with this scaling it reaches 41.3 %.
Ranks up to 4 (the app's default budget gives rank 2) keep the scaling the default lr was tuned with.

Forward: peft's own. peft injects the layers and holds A and B; `set_active` switches peft's adapter path
on for this adapter's layers while it is the active one, and off otherwise. (A hand-written backward for the
rank-r products saved 7 % of a default LoRA training step on the bench, under the 10 % a second code path
has to earn, so it went.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from peft import LoraConfig
from torch import nn

from training.methods.base import AdapterContext, linear_init, register, smallest_hidden
from training.methods.peft_layers import PeftLayersMethod
from training.methods.wrappers import unwrapped_name
from training.model.blip_internals import (
    LORA_TEXT_TARGETS,
    LORA_VISION_TARGETS,
    LoraLayer,
    inject_adapter_in_model,
    lora_adapters,
    lora_weights,
)

STABLE_FROM_RANK = 4


def lora_targets(towers: str) -> str:
    """peft's `target_modules` regex for the chosen towers."""
    patterns = {
        "vision": [LORA_VISION_TARGETS],
        "text": [LORA_TEXT_TARGETS],
        "both": [LORA_VISION_TARGETS, LORA_TEXT_TARGETS],
    }
    return "|".join(f"(?:{p})" for p in patterns[towers])


def lora_alpha(rank: int) -> float:
    """peft's `lora_alpha` (scaling = alpha / r) for the scaling described in the module docstring."""
    return 2.0 * min(rank, math.sqrt(STABLE_FROM_RANK * rank))


@register
class LoRA(PeftLayersMethod):
    name = "lora"

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None, **kwargs) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value, **kwargs)
        config = self.peft_config(int(knob_value), towers)
        # peft marks only adapters trainable on the whole model; the trainer sets requires_grad itself.
        inject_adapter_in_model(config, model, adapter_name=adapter)
        self.layers: dict[str, LoraLayer] = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and adapter in lora_adapters(module)
        }
        for path in sorted(self.layers):
            layer = self.layers[path]
            # A as peft initialises it (B stays zero), but drawn from the run's seed.
            down = lora_weights(layer, adapter)[0]
            with torch.no_grad():
                down.copy_(self.seeded(tuple(down.shape), down.device, linear_init))
        self.set_active(False)

    @staticmethod
    def peft_config(rank: int, towers: str) -> LoraConfig:
        """peft's config for this adapter (a subclass, DoRA, adds its own choices)."""
        return LoraConfig(
            r=rank, lora_alpha=lora_alpha(rank), lora_dropout=0.0, bias="none", target_modules=lora_targets(towers)
        )

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return smallest_hidden(model, towers)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for path, layer in self.layers.items():
            key = unwrapped_name(path)
            down, up = lora_weights(layer, self.adapter)
            yield f"{key}.lora_A.weight", down
            yield f"{key}.lora_B.weight", up
