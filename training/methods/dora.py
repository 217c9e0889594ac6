"""DoRA (layer composition, Liu et al. 2024) through peft: LoRA with `use_dora=True`, a low-rank update whose
weight is split into a learned magnitude and a direction, W' = m * (W + s B A) / ||W + s B A||_c.

Everything but the split is LoRA's (training/methods/lora.py), which this subclasses: the targets, the scaling
(`lora_alpha`), A's seeded initialisation, peft's own forward switched on in `set_active` for the active adapter
only, and `detach`. The knob is the rank. B starts at zero and m at the base weight's row norms ||W||_c, so a
fresh adapter is the base model. The norm is a constant in the backward pass (their section 4.3, as peft
computes it). The count is LoRA's plus one magnitude per output feature of every target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from peft import LoraConfig
from torch import nn

from training.methods.base import register
from training.methods.lora import LoRA
from training.methods.wrappers import unwrapped_name
from training.model.blip_internals import dora_magnitude


@register
class DoRA(LoRA):
    name = "dora"

    @staticmethod
    def peft_config(rank: int, towers: str) -> LoraConfig:
        return dataclasses.replace(LoRA.peft_config(rank, towers), use_dora=True)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        yield from super().named_parameters()
        for path, layer in self.layers.items():
            yield f"{unwrapped_name(path)}.lora_magnitude_vector", dora_magnitude(layer, self.adapter)
