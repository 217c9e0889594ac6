"""What training/model/blip_internals.py assumes about transformers' BLIP and peft's LoRA layers, one test each, so an
upgrade that moves something fails here and the test's name says which assumption broke."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from peft import LoraConfig

from training.model import blip_internals as bi
from training.model.base_model import load_base_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_base_model(str(tiny_model_dir)).model


def test_the_layer_lists_are_where_named_and_as_long_as_the_config_says(model):
    assert len(bi.text_layers(model)) == model.config.text_config.num_hidden_layers
    assert len(bi.vision_layers(model)) == model.config.vision_config.num_hidden_layers


def test_a_text_layer_has_the_parts_the_methods_wrap(model):
    layer = bi.text_layers(model)[0]
    for attention in (layer.attention, layer.crossattention):
        assert all(isinstance(getattr(attention.self, p), torch.nn.Linear) for p in ("query", "key", "value"))
        assert isinstance(attention.output.dense, torch.nn.Linear)
    assert isinstance(layer.output.dense, torch.nn.Linear)
    assert list(inspect.signature(layer.output.forward).parameters)[:2] == ["hidden_states", "input_tensor"]


def test_a_vision_attention_has_a_fused_qkv_and_returns_output_and_probabilities(model):
    attn = bi.vision_layers(model)[0].self_attn
    qkv, heads, head_dim, scale, dropout, projection = bi.vision_attention_parts(attn)
    hidden = model.config.vision_config.hidden_size
    assert qkv.out_features == 3 * hidden and heads * head_dim == hidden and scale == pytest.approx(head_dim**-0.5)
    assert isinstance(dropout, torch.nn.Dropout) and projection.in_features == hidden
    x = torch.randn(1, 5, hidden)
    with torch.no_grad():
        out, probs = attn(x)
        # the prefix wrapper recomputes the attention from these parts: they must give the same output
        q, k, v = qkv(x).reshape(1, 5, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        mine = projection((torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v).transpose(1, 2).reshape(1, 5, -1))
    assert out.shape == x.shape and probs.shape == (1, heads, 5, 5)
    assert torch.allclose(out, mine, atol=1e-6)


def test_vision_embeddings_put_the_class_token_first(model):
    embeddings = bi.vision_embeddings(model)
    side = model.config.vision_config.image_size
    size = side // model.config.vision_config.patch_size
    with torch.no_grad():
        out = embeddings(torch.randn(1, 3, side, side))
    assert out.shape[1] == 1 + size**2
    assert isinstance(embeddings.class_embedding, torch.nn.Parameter)
    assert isinstance(embeddings.patch_embedding.weight, torch.nn.Parameter)
    assert bi.word_embeddings(model).num_embeddings == model.config.text_config.vocab_size


def test_the_decoder_takes_and_returns_its_cache_under_the_named_keyword(model):
    parameters = inspect.signature(model.text_decoder.forward).parameters
    assert {bi.CACHE_KEYWORD, "logits_to_keep", "position_ids", "inputs_embeds", "encoder_hidden_states"} <= set(
        parameters
    )
    cache = bi.EncoderDecoderCache(bi.DynamicCache(), bi.DynamicCache())
    image = torch.zeros(1, 2, model.config.vision_config.hidden_size)
    with torch.no_grad():
        out = model.text_decoder(
            input_ids=torch.tensor([[1, 5, 6]]),
            encoder_hidden_states=image,
            use_cache=True,
            logits_to_keep=1,
            **{bi.CACHE_KEYWORD: cache},
        )
    returned = getattr(out, bi.CACHE_KEYWORD)
    assert returned is cache and out.logits.shape[1] == 1
    layers = bi.self_attention_layers(returned)
    assert len(layers) == len(bi.text_layers(model))
    assert isinstance(layers[0], bi.DynamicLayer) and layers[0].keys.shape[2] == 3
    assert returned.cross_attention_cache.layers[0].keys.shape[2] == 2  # the image keys stay apart


def test_a_dynamic_layer_can_be_built_empty_and_filled_as_reserved_layer_does():
    layer = bi.DynamicLayer()
    keys = torch.randn(1, 2, 3, 4)
    layer.keys, layer.values, layer.device, layer.is_initialized = keys, keys, keys.device, True
    got, _ = layer.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    assert got.shape[2] == 4 and layer.get_seq_length() == 4


def test_the_last_cross_attention_gets_hidden_states_first_and_a_4d_mask_by_keyword(model):
    """What the prompt-tuning truncation pre-hook (VLModel._text_positions_only) slices."""
    seen = []
    cross = bi.text_layers(model)[-1].crossattention
    handle = cross.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    image = torch.zeros(1, 2, model.config.vision_config.hidden_size)
    try:
        with torch.no_grad():
            model.text_decoder(
                input_ids=torch.tensor([[1, 5, 6]]),
                attention_mask=torch.ones(1, 3, dtype=torch.long),
                encoder_hidden_states=image,
            )
    finally:
        handle.remove()
    ((args, kwargs),) = seen
    assert args[0].shape[:2] == (1, 3)
    mask = kwargs.get("attention_mask")
    assert mask is None or (mask.dim() == 4 and mask.shape[2] == 3)


def test_the_lora_targets_match_every_projection_they_name_and_nothing_else(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir)).model
    config = LoraConfig(r=2, lora_alpha=4, target_modules=f"(?:{bi.LORA_VISION_TARGETS})|(?:{bi.LORA_TEXT_TARGETS})")
    bi.inject_adapter_in_model(config, model, adapter_name="a")
    layers = {name for name, m in model.named_modules() if isinstance(m, bi.LoraLayer)}
    vision, text = model.config.vision_config.num_hidden_layers, model.config.text_config.num_hidden_layers
    assert len(layers) == vision + 4 * text
    assert all(re.search(r"\.(qkv|query|value)$", name) for name in layers)
    assert "a" in model.peft_config


def test_a_peft_lora_layer_exposes_the_weights_switches_and_removal_the_methods_use(tiny_model_dir):
    """LoRA runs through peft's own forward, switched per layer; switching leaves requires_grad alone."""
    model = load_base_model(str(tiny_model_dir)).model
    linear = bi.text_layers(model)[0].attention.self.query
    for name in ("a", "b"):
        bi.inject_adapter_in_model(
            LoraConfig(r=2, lora_alpha=4, target_modules=r".*0\.attention\.self\.query"), model, adapter_name=name
        )
    layer = bi.text_layers(model)[0].attention.self.query
    assert isinstance(layer, bi.LoraLayer) and layer.get_base_layer() is linear
    assert bi.lora_adapters(layer) == {"a", "b"}
    down, up = bi.lora_weights(layer, "a")
    assert down.shape == (2, linear.in_features) and up.shape == (linear.out_features, 2) and not up.any()
    assert layer.scaling["a"] == 2.0  # lora_alpha / r, which training/methods/lora.py sets through lora_alpha
    x = torch.randn(1, 3, linear.in_features)
    with torch.no_grad():
        up.fill_(0.1)
        down.requires_grad_(False)
        bi.use_peft_path(layer, "a")
        assert not down.requires_grad
        assert torch.allclose(layer(x), linear(x) + 2.0 * (x @ down.T) @ up.T, atol=1e-6)
        bi.use_peft_path(layer, "b")
        assert torch.allclose(layer(x), linear(x))  # b's up-projection is still zero
        bi.use_peft_path(layer, None)
        assert torch.equal(layer(x), linear(x))
    bi.remove_peft_adapter(model, layer, "a")
    assert bi.lora_adapters(layer) == {"b"} and bi.text_layers(model)[0].attention.self.query is layer
    bi.remove_peft_adapter(model, layer, "b")
    assert bi.text_layers(model)[0].attention.self.query is linear
    bi.forget_peft_config(model, "a")
    bi.forget_peft_config(model, "b")
    assert not hasattr(model, "peft_config")


def test_the_ia3_targets_name_the_projections_peft_rescales_and_nothing_else(model):
    vision, text = model.config.vision_config.num_hidden_layers, model.config.text_config.num_hidden_layers
    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    kinds = {"attention": bi.IA3_ATTENTION_TARGETS, "ffn": bi.IA3_FEED_FORWARD_TARGETS}
    found = {
        kind: {tower: [n for n in names if re.fullmatch(pattern[tower], n)] for tower in ("vision", "text")}
        for kind, pattern in kinds.items()
    }
    assert len(found["attention"]["vision"]) == vision and all(n.endswith(".qkv") for n in found["attention"]["vision"])
    assert len(found["attention"]["text"]) == 4 * text
    assert all(re.search(r"\.self\.(key|value)$", n) for n in found["attention"]["text"])
    assert len(found["ffn"]["vision"]) == vision and len(found["ffn"]["text"]) == text
    assert not any(".attention." in n or "crossattention" in n for n in found["ffn"]["text"])


def test_peft_tuner_layers_stack_switch_and_come_off_one_at_a_time(tiny_model_dir):
    """IA3 and DoRA through the same switches as LoRA; an IA3 layer over a LoRA layer wraps it (so removing the
    outer one must put back the LoRA layer, not the Linear under both)."""
    from peft import IA3Config

    model = load_base_model(str(tiny_model_dir)).model
    linear = bi.text_layers(model)[0].attention.self.value
    target = r".*0\.attention\.self\.value"
    bi.inject_adapter_in_model(
        LoraConfig(r=2, lora_alpha=4, target_modules=target, use_dora=True), model, adapter_name="d"
    )
    lora = bi.text_layers(model)[0].attention.self.value
    bi.inject_adapter_in_model(IA3Config(target_modules=target, feedforward_modules=[]), model, adapter_name="i")
    ia3 = bi.text_layers(model)[0].attention.self.value
    assert isinstance(ia3, bi.IA3Layer) and isinstance(ia3, bi.BaseTunerLayer) and ia3.base_layer is lora
    assert bi.peft_adapters(ia3) == {"i"} and bi.peft_adapters(lora) == {"d"} == bi.lora_adapters(lora)
    vector, magnitude = bi.ia3_vector(ia3, "i"), bi.dora_magnitude(lora, "d")
    assert vector.shape == (linear.out_features, 1) and torch.equal(vector, torch.ones_like(vector))
    assert torch.allclose(magnitude, linear.weight.norm(dim=1))
    x = torch.randn(1, 3, linear.in_features)
    with torch.no_grad():
        vector.fill_(2.0)
        magnitude.requires_grad_(False)
        bi.use_peft_path(lora, None)
        bi.use_peft_path(ia3, "i")
        assert not magnitude.requires_grad
        assert torch.allclose(ia3(x), 2.0 * linear(x), atol=1e-6)
        bi.use_peft_path(ia3, None)
        magnitude.mul_(3.0)
        bi.use_peft_path(lora, "d")
        assert torch.allclose(ia3(x), 3.0 * (x @ linear.weight.T) + linear.bias, atol=1e-5)  # B = 0: m W / ||W||
    bi.remove_peft_adapter(model, ia3, "i")
    assert bi.text_layers(model)[0].attention.self.value is lora
    bi.remove_peft_adapter(model, lora, "d")
    assert bi.text_layers(model)[0].attention.self.value is linear
    for name in ("d", "i"):
        bi.forget_peft_config(model, name)
    assert not hasattr(model, "peft_config")
