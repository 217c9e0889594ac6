"""LoRA (layer composition) through peft: low-rank updates of the attention projections.

Vision: the fused `qkv` projection of every ViT block. Text: `query` and `value` of every self- and
cross-attention of the decoder. The LM head (tied to the word embeddings) is never a target.

Scaling: the update is `scaling * B @ A` with `scaling = 2` up to rank `STABLE_FROM_RANK`, and
`2 * sqrt(STABLE_FROM_RANK / r)` above it (rank-stabilised LoRA, Kalajdzievski 2023). With a constant
scaling the update grows with the rank at a fixed learning rate: on the embedded default, rank 111 at
lr 6e-3 diverged (VQA 0.8 % against 37-43 % at ranks 4-35, 150 steps); with this scaling it reaches 41.3 %.
Ranks up to 4 (the app's default budget gives rank 2) keep the scaling the default lr was tuned with.

Forward: peft injects the layers and holds A and B, but its own adapter path stays disabled; the active
LoRA adapter adds its update to the whole batch in a forward hook, through `LowRankUpdate`, whose backward
keeps the rank-r products in layouts BLAS is fast at (`python -m training bench` times `grad @ B` on a
batch's image tokens both ways: `lora_grad_at_b_ms`). Under autocast or with dropout the hook adds peft's
own modules' update instead (`lora_update`, the plain path `LowRankUpdate` is tested against).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from peft import LoraConfig
from torch import nn

from training.blip_internals import (
    LORA_TEXT_TARGETS,
    LORA_VISION_TARGETS,
    LoraLayer,
    forget_lora_config,
    inject_adapter_in_model,
    lora_adapters,
    lora_has_dropout,
    lora_scaling,
    lora_weights,
    remove_lora,
    use_peft_lora_path,
)
from training.methods.base import AdapterContext, Method, linear_init, register, smallest_hidden
from training.methods.wrappers import unwrapped_name

STABLE_FROM_RANK = 4


def lora_targets(towers: str) -> str:
    """peft's `target_modules` regex for the chosen towers."""
    patterns = {"vision": [LORA_VISION_TARGETS], "text": [LORA_TEXT_TARGETS],
                "both": [LORA_VISION_TARGETS, LORA_TEXT_TARGETS]}  # fmt: skip
    return "|".join(f"(?:{p})" for p in patterns[towers])


def lora_alpha(rank: int) -> float:
    """peft's `lora_alpha` (scaling = alpha / r) for the scaling described in the module docstring."""
    return 2.0 * min(rank, math.sqrt(STABLE_FROM_RANK * rank))


class LowRankUpdate(torch.autograd.Function):
    """base + scaling * (x @ A^T) @ B^T, with a hand-written backward for the rank-r products.

    autograd's backward of `F.linear` multiplies the output gradient [N, out] by B [out, r] and takes
    B's gradient as grad^T @ low: both skinny products in the layout BLAS handles worst (about 5x slower
    on the embedded default's image tokens than with the small operand transposed and contiguous).
    """

    @staticmethod
    def forward(ctx, base: torch.Tensor, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                scaling: float) -> torch.Tensor:  # fmt: skip
        flat = x.reshape(-1, x.shape[-1])
        low = flat @ down.t()
        out = torch.addmm(base.reshape(-1, base.shape[-1]), low, up.t(), alpha=scaling)
        ctx.save_for_backward(flat, low, down, up)
        ctx.scaling, ctx.x_shape = scaling, x.shape
        return out.view(base.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, low, down, up = ctx.saved_tensors
        grad_flat = grad.reshape(-1, grad.shape[-1])
        grad_low = (grad_flat @ up.t().contiguous().t()) * ctx.scaling  # [N, r]
        grad_x = (grad_low @ down).view(ctx.x_shape) if ctx.needs_input_grad[1] else None
        grad_down = grad_low.t() @ flat if ctx.needs_input_grad[2] else None
        grad_up = (low.t() @ grad_flat).t() * ctx.scaling if ctx.needs_input_grad[3] else None
        return grad, grad_x, grad_down, grad_up, None


def lora_update(layer: LoraLayer, name: str, x: torch.Tensor) -> torch.Tensor:
    """What adapter `name` adds to the layer's base projection (the reference path: peft's modules)."""
    down = layer.lora_A[name]
    return layer.lora_B[name](down(layer.lora_dropout[name](x.to(down.weight.dtype)))) * lora_scaling(layer, name)


@register
class LoRA(Method):
    name = "lora"

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(model, ctx, adapter, towers, knob_value, **kwargs)
        rank = int(knob_value)
        config = LoraConfig(
            r=rank, lora_alpha=lora_alpha(rank), lora_dropout=0.0, bias="none",
            target_modules=lora_targets(towers),
        )  # fmt: skip
        # peft marks only adapters trainable on the whole model; the trainer sets requires_grad itself.
        inject_adapter_in_model(config, model, adapter_name=adapter)
        self.layers: dict[str, LoraLayer] = {
            name: module for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and adapter in lora_adapters(module)
        }  # fmt: skip
        for path in sorted(self.layers):
            layer = self.layers[path]
            self.hook(layer.register_forward_hook(self._add_update))
            # A as peft initialises it (B stays zero), but drawn from the run's seed.
            down = lora_weights(layer, adapter)[0]
            with torch.no_grad():
                down.copy_(self.seeded(tuple(down.shape), down.device, linear_init))
        self.set_active(False)

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return smallest_hidden(model, towers)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for path, layer in self.layers.items():
            key = unwrapped_name(path)
            down, up = lora_weights(layer, self.adapter)
            yield f"{key}.lora_A.weight", down
            yield f"{key}.lora_B.weight", up

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().contiguous() for k, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        if set(own) != set(state):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise KeyError(f"LoRA weights do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(state[key])

    def set_active(self, active: bool) -> None:
        # peft's own adapter path stays off (injecting another LoRA on the same layer turns it on): the update
        # is added by `_add_update`.
        for layer in self.layers.values():
            use_peft_lora_path(layer, None)

    def detach(self) -> None:
        super().detach()
        for layer in self.layers.values():
            remove_lora(self.model, layer, self.adapter)
        self.layers = {}
        forget_lora_config(self.model, self.adapter)

    def _add_update(self, layer: LoraLayer, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        x = args[0]
        down, up = lora_weights(layer, self.adapter)
        plain = (x.dtype == output.dtype == down.dtype and not torch.is_autocast_enabled(x.device.type)
                 and not lora_has_dropout(layer, self.adapter))  # fmt: skip
        if plain:
            return LowRankUpdate.apply(output, x, down, up, lora_scaling(layer, self.adapter))
        return output + lora_update(layer, self.adapter, x)
