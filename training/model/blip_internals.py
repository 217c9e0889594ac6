"""Every reach into transformers' BLIP and peft's tuner layers (LoRA, DoRA, IA3) that the methods and the decoder
make, named once.

The methods and `VLModel` go through these names only; tests/test_blip_internals_contract.py pins each
assumption against the installed versions, so an upgrade that moves one fails there and says which.
Checked against transformers 5.24 and peft 0.21.2.
"""

from __future__ import annotations

from peft import inject_adapter_in_model
from peft.tuners.ia3 import IA3Layer
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import BlipForConditionalGeneration
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

__all__ = [
    "CACHE_KEYWORD",
    "BaseTunerLayer",
    "DynamicCache",
    "DynamicLayer",
    "EncoderDecoderCache",
    "IA3Layer",
    "LoraLayer",
    "inject_adapter_in_model",
]

# The text decoder's forward takes its key/value cache under this keyword and returns it as this output
# attribute (transformers 5.24 renamed `past_key_values` to `cache`; the old name is deprecated until 5.40).
CACHE_KEYWORD = "cache"

# peft LoRA target patterns. `(\.inner)*` lets a target sit under another method's wrapper (several adapters
# on one base: a prefix-tuned ViT attention keeps the original as `.inner`).
LORA_VISION_TARGETS = r"vision_model\.encoder\.layers\.\d+\.self_attn(\.inner)*\.qkv"
LORA_TEXT_TARGETS = r"text_decoder\.bert\.encoder\.layer\.\d+\.(attention|crossattention)\.self\.(query|value)"

# IA3 targets, matched against unwrapped module names (see `peft_targets` in training/methods/wrappers.py):
# per tower, the attention projections whose output is rescaled (text: keys and values of self- and
# cross-attention; vision: the fused qkv) and the feed-forward projections whose input is rescaled (the second
# projection after the activation: text `output.dense`, vision `mlp.fc2`).
IA3_ATTENTION_TARGETS = {
    "vision": r"vision_model\.encoder\.layers\.\d+\.self_attn\.qkv",
    "text": r"text_decoder\.bert\.encoder\.layer\.\d+\.(attention|crossattention)\.self\.(key|value)",
}
IA3_FEED_FORWARD_TARGETS = {
    "vision": r"vision_model\.encoder\.layers\.\d+\.mlp\.fc2",
    "text": r"text_decoder\.bert\.encoder\.layer\.\d+\.output\.dense",
}


def text_layers(model: BlipForConditionalGeneration) -> nn.ModuleList:
    """The decoder's blocks; each has `.attention` (`.self.{query,key,value}`, `.output.dense`),
    `.crossattention` (the same, to the image), `.intermediate` and `.output` (`forward(hidden, input_tensor)`,
    `.dense`, then LayerNorm of the sum)."""
    return model.text_decoder.bert.encoder.layer


def vision_layers(model: BlipForConditionalGeneration) -> nn.ModuleList:
    """The ViT blocks; each has `.self_attn` (see `vision_attention_parts`) and `.mlp` (`.fc1`, `.fc2`)."""
    return model.vision_model.encoder.layers


def word_embeddings(model: BlipForConditionalGeneration) -> nn.Embedding:
    return model.text_decoder.bert.embeddings.word_embeddings


def vision_embeddings(model: BlipForConditionalGeneration) -> nn.Module:
    """The ViT embeddings: output [B, 1 + patches, d] with [CLS] first; `.class_embedding` is a parameter."""
    return model.vision_model.embeddings


def vision_attention_parts(attn: nn.Module) -> tuple[nn.Module, int, int, float, nn.Module, nn.Module]:
    """A BLIP ViT attention's fused `qkv` projection (output read as [3, heads, head_dim]), head count, head
    size, score scale, attention dropout and output `projection`; its forward is
    `forward(hidden_states, **kwargs) -> (output, attention probabilities)`."""
    return attn.qkv, attn.num_heads, attn.head_dim, attn.scale, attn.dropout, attn.projection


def self_attention_layers(cache: EncoderDecoderCache) -> list[DynamicLayer]:
    """The per-layer self-attention cache entries (each with `.keys`/`.values` [B, heads, T, head_dim])."""
    return cache.self_attention_cache.layers


def lora_weights(layer: LoraLayer, adapter: str) -> tuple[nn.Parameter, nn.Parameter]:
    """LoRA's down (A, [r, in]) and up (B, [out, r]) weights of one adapter on one peft layer."""
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight


def lora_adapters(layer: LoraLayer) -> set[str]:
    """The adapter names a peft LoRA layer holds weights for."""
    return set(layer.lora_A)


def dora_magnitude(layer: LoraLayer, adapter: str) -> nn.Parameter:
    """DoRA's magnitude m ([out], one per output feature) of one adapter injected with `use_dora=True`."""
    return layer.lora_magnitude_vector[adapter].weight


def ia3_vector(layer: IA3Layer, adapter: str) -> nn.Parameter:
    """IA3's learned vector of one adapter on one peft layer: [out, 1] on a rescaled output, [1, in] on a
    feed-forward layer's rescaled input."""
    return layer.ia3_l[adapter]


def peft_adapters(layer: BaseTunerLayer) -> set[str]:
    """The adapter names a peft tuner layer (LoRA, DoRA, IA3) holds weights for."""
    return set(getattr(layer, layer.adapter_layer_names[0]))


def peft_parameters(layer: BaseTunerLayer, adapter: str) -> list[tuple[str, nn.Parameter]]:
    """One adapter's tensors on a peft tuner layer that keeps them as plain parameters (IA3's `ia3_l`, LoHa's
    `hada_w1_a`, ...), by the attribute name peft saves them under; ModuleDicts (LoRA's Linears) are not listed."""
    found = []
    for attribute in layer.adapter_layer_names:
        held = getattr(layer, attribute)
        if adapter in held and isinstance(held[adapter], nn.Parameter):
            found.append((attribute, held[adapter]))
    return found


def use_peft_path(layer: BaseTunerLayer, adapter: str | None) -> None:
    """Turn peft's own forward on for `adapter` on this tuner layer, or off (None). requires_grad is left as it
    was (peft's `set_adapter` and `enable_adapters` set it; the trainer's `freeze_all_but` owns it)."""
    flags = [(param, param.requires_grad) for param in layer.parameters()]
    if adapter is None:
        layer.enable_adapters(False)
    else:
        layer.enable_adapters(True)
        layer.set_adapter(adapter)
    for param, flag in flags:
        param.requires_grad_(flag)


def forget_peft_config(model: nn.Module, adapter: str) -> None:
    """Drop the adapter's entry from the `peft_config` dict that `inject_adapter_in_model` sets on the model
    (and the attribute once it is empty)."""
    configs = getattr(model, "peft_config", None)
    if configs is not None:
        configs.pop(adapter, None)
        if not configs:
            del model.peft_config


def remove_peft_adapter(model: nn.Module, layer: BaseTunerLayer, adapter: str) -> None:
    """Delete one adapter's weights from a peft tuner layer (requires_grad of the others left alone); a layer
    left with none is replaced in the model by the module it wrapped directly (`base_layer`, which may be
    another adapter's peft layer: `get_base_layer()` would skip that one), so the module tree is as before."""
    flags = [(param, param.requires_grad) for param in layer.parameters()]
    layer.delete_adapter(adapter)
    for param, flag in flags:
        param.requires_grad_(flag)
    if peft_adapters(layer):
        use_peft_path(layer, None)
        return
    base = layer.base_layer
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is layer:
                setattr(parent, name, base)
