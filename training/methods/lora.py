"""LoRA (layer composition) through peft: low-rank updates of the attention projections.

Vision: the fused `qkv` projection of every ViT block. Text: `query` and `value` of every self- and
cross-attention of the decoder. The LM head (tied to the word embeddings) is never a target.

Scaling: the update is `scaling * B @ A` with `scaling = 2` up to rank `STABLE_FROM_RANK`, and
`2 * sqrt(STABLE_FROM_RANK / r)` above it (rank-stabilised LoRA, Kalajdzievski 2023). With a constant
scaling the update grows with the rank at a fixed learning rate: on the embedded default, rank 111 at
lr 6e-3 diverged (VQA 0.8 % against 37-43 % at ranks 4-35, 150 steps); with this scaling it reaches 41.3 %.
Ranks up to 4 (the app's default budget gives rank 2) keep the scaling the default lr was tuned with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from training.methods.base import AdapterContext, Method, register, smallest_hidden

STABLE_FROM_RANK = 4

# `(\.inner)*` lets a target sit under another method's wrapper (several adapters on one base).
VISION_TARGETS = r"vision_model\.encoder\.layers\.\d+\.self_attn(\.inner)*\.qkv"
TEXT_TARGETS = r"text_decoder\.bert\.encoder\.layer\.\d+\.(attention|crossattention)\.self\.(query|value)"


def lora_alpha(rank: int) -> float:
    """peft's `lora_alpha` (scaling = alpha / r) for the scaling described in the module docstring."""
    return 2.0 * min(rank, math.sqrt(STABLE_FROM_RANK * rank))


@register
class LoRA(Method):
    name = "lora"
    family = "layer composition"
    knob = "rank"
    default_lr = 6e-3  # measured on the embedded default (VQA: 2e-3 ended 10 points lower in 5 epochs)
    summary = ("Adds a trainable low-rank update to each attention projection; layer composition, which the "
               "paper found best in quality and efficiency.")  # fmt: skip

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value)
        rank = int(knob_value)
        patterns = {"vision": [VISION_TARGETS], "text": [TEXT_TARGETS], "both": [VISION_TARGETS, TEXT_TARGETS]}
        config = LoraConfig(
            r=rank, lora_alpha=lora_alpha(rank), lora_dropout=0.0, bias="none",
            target_modules="|".join(f"(?:{p})" for p in patterns[towers]),
        )  # fmt: skip
        # peft marks only adapters trainable on the whole model; the trainer sets requires_grad itself.
        inject_adapter_in_model(config, model, adapter_name=adapter)
        self.layers: dict[str, LoraLayer] = {
            name: module for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and adapter in module.lora_A
        }  # fmt: skip
        self.set_active(False)

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return smallest_hidden(model, towers)

    def _named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for path, layer in self.layers.items():
            key = re.sub(r"\.inner", "", path)
            yield f"{key}.lora_A.weight", layer.lora_A[self.adapter].weight
            yield f"{key}.lora_B.weight", layer.lora_B[self.adapter].weight

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for _, p in self._named_parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().contiguous() for k, p in self._named_parameters()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self._named_parameters())
        if set(own) != set(state):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise KeyError(f"LoRA weights do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(state[key])

    def set_active(self, active: bool) -> None:
        for layer in self.layers.values():
            if active:
                layer.enable_adapters(True)
                layer.set_adapter(self.adapter)
            elif layer.active_adapters == [self.adapter]:
                layer.enable_adapters(False)
