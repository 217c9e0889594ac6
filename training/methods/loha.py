"""LoHa (layer composition, Hyeon-Woo et al. 2022, FedPara; as in LyCORIS) through peft: a low-rank Hadamard
product update of the attention projections, delta W = s * (W1a W1b) * (W2a W2b), elementwise.

Not in the paper: added to show that a method peft already implements is its module, its catalog entry and its
reference row. The targets are LoRA's (the fused vision `qkv`; `query` and `value` of the decoder's self- and
cross-attention), and so is the scaling s = alpha / r (`lora_alpha`: 2 up to rank 4, rank-stabilised above).
The knob is the rank r; a Hadamard product of two rank-r factors reaches rank r^2, at twice LoRA's count per
rank: 2 r (in + out) per projection. W1a, W1b and W2a are drawn from the run's seed as peft draws them
(kaiming-uniform), W2b starts at zero, so a fresh adapter is the base model. Forward: peft's own.
"""

from __future__ import annotations

import torch
from peft import LoHaConfig

from training.methods.base import AdapterContext, linear_init, register, smallest_hidden
from training.methods.lora import lora_alpha, lora_targets
from training.methods.peft_layers import PeftLayersMethod

ZERO_FACTOR = "hada_w2_b"  # the factor that starts at zero (peft's name)


@register
class LoHa(PeftLayersMethod):
    name = "loha"

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None, **kwargs) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value, **kwargs)
        rank = int(knob_value)
        self.inject(LoHaConfig(r=rank, alpha=lora_alpha(rank), target_modules=lora_targets(towers)))
        with torch.no_grad():
            for key, tensor in sorted(self.named_parameters()):
                if not key.endswith(ZERO_FACTOR):
                    tensor.copy_(self.seeded(tuple(tensor.shape), tensor.device, linear_init))

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return smallest_hidden(model, towers)
