"""(IA)^3 (layer composition, Liu et al. 2022) through peft: learned vectors that rescale the attention keys
and values and the feed-forward block's inner activations.

Text: the keys and values of every self- and cross-attention of the decoder (`key`, `value`), and the input of
each feed-forward block's second projection (`output.dense`), as in T-Few's encoder-decoder. Vision: the ViT's
fused `qkv` projection, whose whole output is rescaled (queries included, as peft does for GPT-2's fused
`c_attn`), and the input of `mlp.fc2`. The vectors start at one, so a fresh adapter is the base model. The
target patterns are in training/model/blip_internals.py.

No knob: the count is fixed by the model and the towers (on the embedded default 5,120 parameters on the text
decoder, 4,480 on the vision tower, 9,600 on both); the budget solver accepts a budget at or above it and
refuses a smaller one.

Forward: peft's own. peft injects the layers (on the exact target names: peft matches a list by suffix, and
"output.dense" alone would also hit the attention outputs), wrapping other adapters' peft layers so adapters
stack; `set_active` switches peft's path on for this adapter's layers while it is the active one, and off
otherwise; `detach` deletes this adapter from each layer and puts back the module a layer wrapped once it holds
no adapter.

Default lr 0.1: vectors that start at one need large steps. 150 VQA steps on the text decoder of the embedded
default (seed 0, first 300 test questions) reached 2.3 / 10.3 / 27.2 / 33.2 % at lr 1e-2 / 3e-2 / 1e-1 / 3e-1
(LoRA at 18k: 40.6 %); `python -m training tune` refines it.
"""

from __future__ import annotations

from collections.abc import Iterator

from peft import IA3Config
from torch import nn

from training.methods.base import TOWER_CHOICES, AdapterContext, register
from training.methods.peft_layers import PeftLayersMethod
from training.methods.wrappers import peft_targets, unwrapped_name
from training.model.blip_internals import (
    IA3_ATTENTION_TARGETS,
    IA3_FEED_FORWARD_TARGETS,
    IA3Layer,
    ia3_vector,
    inject_adapter_in_model,
    peft_adapters,
)


@register
class IA3(PeftLayersMethod):
    name = "ia3"

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None, **kwargs) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value, **kwargs)
        tower_list = TOWER_CHOICES[towers]
        attention = [n for t in tower_list for n in peft_targets(model, IA3_ATTENTION_TARGETS[t])]
        feed_forward = [n for t in tower_list for n in peft_targets(model, IA3_FEED_FORWARD_TARGETS[t])]
        config = IA3Config(
            target_modules=attention + feed_forward, feedforward_modules=feed_forward, init_ia3_weights=True
        )
        # peft marks only adapters trainable on the whole model; the trainer sets requires_grad itself.
        inject_adapter_in_model(config, model, adapter_name=adapter)
        self.layers: dict[str, IA3Layer] = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, IA3Layer) and adapter in peft_adapters(module)
        }
        self.set_active(False)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for path, layer in self.layers.items():
            yield f"{unwrapped_name(path)}.ia3_l", ia3_vector(layer, self.adapter)
