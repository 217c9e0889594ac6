"""Bottleneck adapters (layer composition): serial (Houlsby et al. 2019) and parallel (He et al. 2022).

A bottleneck is `up(act(down(h)))` with `up` zero-initialised, so a freshly attached adapter leaves the
model exactly as it was. peft has no bottleneck adapters, hence this module.
"""

from __future__ import annotations

import torch
from torch import nn

from training.methods.base import AdapterContext, Method, bias_init, linear_init, register, smallest_hidden
from training.methods.wrappers import unwrap
from training.model.blip_internals import text_layers, vision_layers

PARALLEL_SCALE = 4.0


class Bottleneck(nn.Module):
    """`up(act(down(h)))` from a given down-projection; `up` starts at zero."""

    def __init__(self, down_weight: torch.Tensor, down_bias: torch.Tensor) -> None:
        super().__init__()
        width, dim = down_weight.shape
        self.down = nn.Linear(dim, width, device="meta")
        self.up = nn.Linear(width, dim, device="meta")
        self.act = nn.GELU()
        self.down.weight, self.down.bias = nn.Parameter(down_weight), nn.Parameter(down_bias)
        self.up.weight = nn.Parameter(down_weight.new_zeros(dim, width))
        self.up.bias = nn.Parameter(down_weight.new_zeros(dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(hidden)))


class _Wrapper(nn.Module):
    def __init__(self, inner: nn.Module, method: Method, bottleneck: Bottleneck) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = method.adapter
        self.ctx = method.ctx
        self.bottleneck = bottleneck

    @property
    def acting(self) -> bool:
        return self.ctx.active == self.adapter

    def _scaled(self, hidden: torch.Tensor) -> torch.Tensor:
        return PARALLEL_SCALE * self.bottleneck(hidden)


class SerialAfter(_Wrapper):
    """h -> h + A(h) after a sub-layer's output projection (before its residual and LayerNorm)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.inner(hidden)
        return out + self.bottleneck(out) if self.acting else out


class ParallelBeside(_Wrapper):
    """ViT MLP: mlp(x) + s * A(x)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.inner(hidden)
        return out + self._scaled(hidden) if self.acting else out


class ParallelTextOutput(_Wrapper):
    """BLIP text FFN output LN(dense(h) + x): adding s * A(x) to the residual input x gives
    LN(dense(h) + s * A(x) + x), the parallel adapter beside the FFN."""

    def forward(self, hidden: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        if self.acting:
            input_tensor = input_tensor + self._scaled(input_tensor)
        return self.inner(hidden, input_tensor)


class _BottleneckMethod(Method):
    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None, **kwargs) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value, **kwargs)
        self.width = int(knob_value)
        if towers in ("text", "both"):
            dim = model.config.text_config.hidden_size
            for index, layer in enumerate(text_layers(model)):
                self._wrap_text(index, layer, dim)
        if towers in ("vision", "both"):
            dim = model.config.vision_config.hidden_size
            for index, layer in enumerate(vision_layers(model)):
                self._wrap_vision(index, layer, dim)

    def _bottleneck(self, key: str, dim: int, near: nn.Module) -> Bottleneck:
        device = next(near.parameters()).device
        # The down-projection starts as nn.Linear would, drawn from the run's seed.
        weight = self.seeded((self.width, dim), device, linear_init)
        bias = self.seeded((self.width,), device, bias_init(dim))
        self.modules[key] = Bottleneck(weight, bias)
        return self.modules[key]

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return smallest_hidden(model, towers)


@register
class SerialAdapter(_BottleneckMethod):
    name = "serial-adapter"

    def _wrap_text(self, index: int, layer: nn.Module, dim: int) -> None:
        attn_out = layer.attention.output
        self.wrap(
            attn_out, "dense", SerialAfter(attn_out.dense, self, self._bottleneck(f"text-{index}-attn", dim, attn_out))
        )
        ffn_out = unwrap(layer.output)
        self.wrap(
            ffn_out, "dense", SerialAfter(ffn_out.dense, self, self._bottleneck(f"text-{index}-ffn", dim, ffn_out))
        )

    def _wrap_vision(self, index: int, layer: nn.Module, dim: int) -> None:
        attn = unwrap(layer.self_attn)
        self.wrap(
            attn, "projection", SerialAfter(attn.projection, self, self._bottleneck(f"vision-{index}-attn", dim, attn))
        )
        mlp = unwrap(layer.mlp)
        self.wrap(mlp, "fc2", SerialAfter(mlp.fc2, self, self._bottleneck(f"vision-{index}-ffn", dim, mlp)))


@register
class ParallelAdapter(_BottleneckMethod):
    name = "parallel-adapter"

    def _wrap_text(self, index: int, layer: nn.Module, dim: int) -> None:
        self.wrap(
            layer, "output", ParallelTextOutput(layer.output, self, self._bottleneck(f"text-{index}-ffn", dim, layer))
        )

    def _wrap_vision(self, index: int, layer: nn.Module, dim: int) -> None:
        self.wrap(layer, "mlp", ParallelBeside(layer.mlp, self, self._bottleneck(f"vision-{index}-ffn", dim, layer)))
