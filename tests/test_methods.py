"""The methods on a tiny BLIP: exactness at init, decoding consistency, counts, save/load, isolation."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from tests.method_table import KNOB, NOT_SEEDED, STARTS_AS_BASE
from training.catalog import PEFT_METHODS as PEFT
from training.methods.budget import count_trainable, plan_method
from training.methods.vlmodel import VLModel
from training.model.base_model import load_base_model


@pytest.fixture
def vl(tiny_model_dir) -> VLModel:
    return VLModel(load_base_model(str(tiny_model_dir)))


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    ids = torch.tensor([[5, 9, 10, 11, 12, 3], [5, 13, 14, 15, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    return pixels, ids, mask


def outputs(vl: VLModel, pixels, ids, mask):
    with torch.no_grad():
        embeds = vl.encode_images(pixels)
        return embeds, vl.text_logits(embeds, ids, mask)


def randomize(vl: VLModel, adapter: str, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in vl.adapters[adapter].parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("method", STARTS_AS_BASE)
@pytest.mark.parametrize("towers", ["vision", "text", "both"])
def test_zero_initialised_method_reproduces_the_base_model_exactly(vl, inputs, method, towers):
    base_embeds, base_logits = outputs(vl, *inputs)
    vl.attach(method, "a", towers, KNOB[method])
    vl.set_active("a")
    embeds, logits = outputs(vl, *inputs)
    assert torch.equal(embeds, base_embeds)
    assert torch.allclose(logits, base_logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", PEFT)
def test_inactive_adapter_leaves_the_base_model_untouched(vl, inputs, method):
    _, base_logits = outputs(vl, *inputs)
    vl.attach(method, "a", "both", KNOB[method])
    randomize(vl, "a")
    vl.set_active("a")
    _, adapted = outputs(vl, *inputs)
    vl.set_active(None)
    _, plain = outputs(vl, *inputs)
    assert torch.equal(plain, base_logits)
    assert not torch.allclose(adapted, base_logits, atol=1e-4)


@pytest.mark.parametrize("method", PEFT)
@pytest.mark.parametrize("towers", ["text", "both"])
def test_teacher_forced_logits_equal_stepwise_generation_logits(vl, inputs, method, towers):
    pixels, _, _ = inputs
    vl.attach(method, "a", towers, KNOB[method])
    randomize(vl, "a")
    vl.set_active("a")
    with torch.no_grad():
        embeds = vl.encode_images(pixels)
    prompt = [5, 9, 10]
    tokens, step_logits = vl.generate(embeds, [prompt, prompt], max_new_tokens=6, return_logits=True)
    generated = tokens[0]
    full = torch.tensor([prompt + generated + [3]] * 2)
    with torch.no_grad():
        forced = vl.text_logits(embeds, full, torch.ones_like(full))
    steps = step_logits[0]  # one per generated token, plus the one that chose [SEP] if it came
    assert steps.shape[0] in (len(generated), len(generated) + 1)
    assert torch.allclose(forced[0, len(prompt) - 1 : len(prompt) - 1 + steps.shape[0]], steps, atol=1e-4)


def test_prefix_key_lengths_self_is_prefix_plus_text_cross_is_image_tokens(vl, inputs):
    pixels, ids, mask = inputs
    vl.attach("prefix", "a", "text", 5)
    vl.set_active("a")
    seen = {"self": [], "cross": []}
    layers = vl.model.text_decoder.bert.encoder.layer
    for layer in layers:
        layer.attention.self.register_forward_hook(lambda m, i, o: seen["self"].append(o[1].shape[-1]))
        layer.crossattention.self.register_forward_hook(lambda m, i, o: seen["cross"].append(o[1].shape[-1]))
    embeds, _ = outputs(vl, pixels, ids, mask)
    assert seen["self"] == [5 + ids.shape[1]] * len(layers)
    assert seen["cross"] == [embeds.shape[1]] * len(layers)
    assert embeds.shape[1] == (32 // 8) ** 2 + 1


def test_visual_prompt_tokens_extend_the_image_sequence(vl, inputs):
    vl.attach("prompt", "a", "vision", 3)
    vl.set_active("a")
    embeds, _ = outputs(vl, *inputs)
    assert embeds.shape[1] == (32 // 8) ** 2 + 1 + 3


@pytest.mark.parametrize("method", [*PEFT, "full"])
@pytest.mark.parametrize("towers", ["vision", "text", "both"])
def test_trainable_count_matches_requires_grad_and_the_solver(vl, method, towers):
    plan = plan_method(vl.model, method, "2k", towers)
    vl.attach(method, "a", towers, plan.value)
    vl.set_active("a")
    trainable = vl.freeze_all_but("a")
    with_grad = sum(p.numel() for p in vl.model.parameters() if p.requires_grad)
    assert trainable == with_grad == plan.trainable_params
    assert plan.trainable_params == count_trainable(vl.model.config, method, towers, plan.value)


@pytest.mark.parametrize("method", PEFT)
def test_save_then_load_gives_identical_outputs(vl, inputs, method, tiny_model_dir, tmp_path):
    vl.attach(method, "a", "both", KNOB[method])
    randomize(vl, "a", seed=3)
    vl.set_active("a")
    _, expected = outputs(vl, *inputs)
    save_file(vl.adapters["a"].state_dict(), str(tmp_path / "w.safetensors"))

    fresh = VLModel(load_base_model(str(tiny_model_dir)))
    fresh.attach(method, "b", "both", KNOB[method])
    fresh.adapters["b"].load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    fresh.set_active("b")
    _, loaded = outputs(fresh, *inputs)
    assert torch.equal(loaded, expected)


def test_loading_weights_of_another_method_fails_loudly(vl, tmp_path):
    vl.attach("lora", "a", "both", 2)
    vl.attach("serial-adapter", "b", "both", 2)
    with pytest.raises((KeyError, RuntimeError)):
        vl.adapters["b"].load_state_dict(vl.adapters["a"].state_dict())


def test_several_adapters_on_one_base_each_give_their_own_outputs(vl, inputs, tiny_model_dir):
    """Five kinds on one base: switching adapters equals a model that carries only that adapter."""
    states = {}
    for seed, method in enumerate(PEFT):
        vl.attach(method, method, "both", KNOB[method])
        randomize(vl, method, seed)
        states[method] = vl.adapters[method].state_dict()
    for method in PEFT:
        vl.set_active(method)
        _, shared = outputs(vl, *inputs)
        alone = VLModel(load_base_model(str(tiny_model_dir)))
        alone.attach(method, "x", "both", KNOB[method])
        alone.adapters["x"].load_state_dict(states[method])
        alone.set_active("x")
        _, single = outputs(alone, *inputs)
        assert torch.allclose(shared, single, atol=1e-5), method


def module_tree(vl: VLModel) -> dict[str, type]:
    return {name: type(module) for name, module in vl.model.named_modules()}


def hook_count(vl: VLModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in vl.model.modules())


@pytest.mark.parametrize("method", PEFT)
def test_a_detached_adapter_leaves_exactly_the_base_model_and_frees_its_parameters(vl, inputs, method):
    """Stacked under and over adapters of every other kind, one adapter detached: the others answer as before,
    and once all are detached the module tree, hooks, state dict and outputs are the base model's again."""
    import gc
    import weakref

    tree, hooks, state = module_tree(vl), hook_count(vl), vl.model.state_dict()
    _, base_logits = outputs(vl, *inputs)
    others = [m for m in PEFT if m != method]
    for seed, name in enumerate([others[0], method, *others[1:]]):  # one kind beneath it, the rest above
        vl.attach(name, name, "both", KNOB[name])
        randomize(vl, name, seed)
    expected = {}
    for name in others:
        vl.set_active(name)
        expected[name] = outputs(vl, *inputs)[1]
    vl.set_active(method)
    freed = [weakref.ref(p) for p in vl.adapters[method].parameters()]
    vl.detach(method)
    assert method not in vl.adapters and vl.active is None
    for name in others:
        vl.set_active(name)
        assert torch.allclose(outputs(vl, *inputs)[1], expected[name], atol=1e-6), name
    for name in others:
        vl.detach(name)
    gc.collect()
    assert all(ref() is None for ref in freed)
    assert module_tree(vl) == tree and hook_count(vl) == hooks and not hasattr(vl.model, "peft_config")
    assert vl.model.state_dict().keys() == state.keys()
    assert all(torch.equal(vl.model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(outputs(vl, *inputs)[1], base_logits)


@pytest.mark.parametrize(("rank", "scaling"), [(1, 2.0), (4, 2.0), (16, 1.0), (64, 0.5)])
def test_lora_scaling_is_constant_up_to_rank_4_then_rank_stabilised(vl, rank, scaling):
    vl.attach("lora", "a", "text", rank)
    layers = [m for m in vl.model.modules() if isinstance(m, LoraLayer) and "a" in m.lora_A]
    assert layers
    assert all(m.scaling["a"] == pytest.approx(scaling) for m in layers)


def test_only_the_active_loras_peft_path_is_on_and_switching_keeps_requires_grad(vl):
    vl.attach("lora", "a", "text", 2)
    vl.attach("lora", "b", "both", 2)
    trained = vl.freeze_all_but("a")
    with_grad = [p for p in vl.model.parameters() if p.requires_grad]
    layers = {id(layer): layer for method in vl.adapters.values() for layer in method.layers.values()}
    for active in ("a", "b", None, "a"):
        vl.set_active(active)
        for layer in layers.values():  # the text layers hold both adapters
            holds = active is not None and active in layer.lora_A
            assert layer.disable_adapters != holds and (not holds or layer.active_adapters == [active])
        assert [p for p in vl.model.parameters() if p.requires_grad] == with_grad
    assert sum(p.numel() for p in with_grad) == trained


def test_prompt_positions_skipped_in_the_last_layer_change_no_logit_or_gradient(vl, inputs):
    """The last decoder layer runs its cross-attention and feed-forward on the text positions only when
    prompt vectors lead the sequence; against the full computation, logits and gradients are the same."""
    from contextlib import nullcontext

    pixels, ids, mask = inputs
    vl.attach("prompt", "a", "both", 3)
    vl.set_active("a")
    params = [p.requires_grad_(True) for p in vl.adapters["a"].parameters()]
    seen = []
    vl.model.text_decoder.bert.encoder.layer[-1].output.register_forward_hook(
        lambda module, args, out: seen.append(out.shape[1])
    )

    def logits_and_grads():
        logits = vl.text_logits(vl.encode_images(pixels), ids, mask)
        return logits.detach(), torch.autograd.grad(logits.square().mean(), params)

    fast_logits, fast_grads = logits_and_grads()
    vl._unread = lambda positions: nullcontext()
    full_logits, full_grads = logits_and_grads()
    assert seen == [ids.shape[1], ids.shape[1] + 3]  # text positions only, then prompt + text
    assert torch.allclose(fast_logits, full_logits, atol=1e-6)
    for fast, full in zip(fast_grads, full_grads, strict=True):
        assert torch.allclose(fast, full, rtol=1e-4, atol=1e-7)


def test_reserved_cache_layer_equals_concatenation_within_and_beyond_its_room():
    from training.methods.vlmodel import ReservedLayer

    generator = torch.Generator().manual_seed(5)
    keys, values = (torch.randn(2, 3, 4, 5, generator=generator) for _ in range(2))
    layer = ReservedLayer(keys, values, room=2)
    for _ in range(4):  # two steps fit in the room, two more fall back to concatenating
        new_keys, new_values = (torch.randn(2, 3, 1, 5, generator=generator) for _ in range(2))
        got_keys, got_values = layer.update(new_keys, new_values, 0)
        keys, values = torch.cat([keys, new_keys], 2), torch.cat([values, new_values], 2)
        assert torch.equal(got_keys, keys) and torch.equal(got_values, values)
        assert layer.get_seq_length() == keys.shape[2]


# ---------------------------------------------------------------- seeds, options, initialisation, fold


def stored_and_training(method) -> dict[str, torch.Tensor]:
    state = method.state_dict()
    state.update({f"training.{k}": v.detach().clone() for k, v in method.training_modules.state_dict().items()})
    return state


@pytest.mark.parametrize(
    ("method", "options"), [(m, {}) for m in PEFT if m not in NOT_SEEDED] + [("prefix", {"reparam": True})]
)
def test_every_initialisation_follows_the_seed_and_nothing_else(tiny_model_dir, method, options):
    def initial(seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)
        vl = VLModel(load_base_model(str(tiny_model_dir)))
        return stored_and_training(vl.attach(method, "a", "both", KNOB[method], seed=seed, options=options))

    first, again, other = initial(1, 10), initial(1, 20), initial(2, 10)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    # Everything randomly initialised differs with the seed (LoRA's B and the adapters' up start at zero, DoRA's
    # magnitudes at the base weight's row norms).
    random_keys = [k for k in first if first[k].abs().max() > 0 and not k.endswith("lora_magnitude_vector")]
    assert random_keys
    assert all(not torch.equal(first[k], other[k]) for k in random_keys), method


def test_ia3_vectors_start_at_one_whatever_the_seed(tiny_model_dir):
    for seed in (1, 2):
        vl = VLModel(load_base_model(str(tiny_model_dir)))
        state = vl.attach("ia3", "a", "both", None, seed=seed).state_dict()
        assert state and all(torch.equal(v, torch.ones_like(v)) for v in state.values())


@pytest.mark.parametrize(
    ("towers", "count"),
    [
        ("text", 2 * (4 * 32 + 4 * 32)),
        ("vision", 2 * (3 * 32 + 4 * 32)),
        ("both", 2 * (4 * 32 + 4 * 32) + 2 * (3 * 32 + 4 * 32)),
    ],
)
def test_ia3_trains_a_fixed_count_and_refuses_a_smaller_budget_saying_it(vl, towers, count):
    """Per text layer: keys and values of self- and cross-attention (4 x 32) and the FFN's 128 activations;
    per ViT layer: the fused qkv output (3 x 32) and the MLP's 128 activations (2 layers each)."""
    within = plan_method(vl.model, "ia3", str(count), towers)
    assert within.feasible and within.trainable_params == count and within.value is None
    assert f"trains its fixed {count:,} parameters" in within.message
    assert plan_method(vl.model, "ia3", "50%", towers).feasible
    below = plan_method(vl.model, "ia3", str(count - 1), towers)
    assert not below.feasible and below.trainable_params == count
    assert f"always trains {count:,} parameters" in below.message
    assert f"cannot stay within a budget of {count - 1:,}. Give a budget of at least {count:,}" in below.message


def test_dora_magnitudes_start_at_the_row_norms_of_the_base_weights(vl):
    base = {k: v.clone() for k, v in vl.model.state_dict().items()}
    state = vl.attach("dora", "a", "both", 3).state_dict()
    magnitudes = {k.removesuffix(".lora_magnitude_vector"): v for k, v in state.items() if "magnitude" in k}
    assert len(magnitudes) == 2 * 1 + 2 * 4  # the ViT's qkv, and query and value of both text attentions
    for key, magnitude in magnitudes.items():
        assert torch.allclose(magnitude, base[f"{key}.weight"].norm(dim=1)), key
        assert state[f"{key}.lora_A.weight"].shape[0] == 3 and not state[f"{key}.lora_B.weight"].any()


def test_text_prompt_vectors_start_as_embeddings_of_distinct_whole_words(vl):
    from training.methods.prompt import word_token_ids

    prompt = vl.attach("prompt", "a", "text", 6, seed=4).state_dict()["text.weight"]
    words = vl.model.text_decoder.bert.embeddings.word_embeddings.weight
    matches = [int((words == row).all(1).nonzero()[0]) for row in prompt]
    whole_words = set(word_token_ids(vl.tokenizer))
    assert all(index in whole_words for index in matches)
    assert len(set(matches)) == 6
    tokens = vl.tokenizer.convert_ids_to_tokens(matches)
    assert not set(tokens) & set(vl.tokenizer.all_special_tokens) and all(t.isalpha() for t in tokens), tokens


def test_reparametrised_prompt_starts_as_the_plain_prompt_trains_its_mlp_and_folds(vl):
    """Residual reparametrisation: P + MLP(P) with the MLP's output layer at zero, so it starts from the
    vocabulary-initialised prompt; the MLP trains beside P, and fold() stores P + MLP(P) under the plain key."""
    plain = vl.attach("prompt", "plain", "text", 6, seed=4).state_dict()["text.weight"]
    method = vl.attach("prompt", "r", "text", 6, seed=4, options={"reparam": True})
    assert torch.equal(method.prompt("text"), plain) and torch.equal(method.state_dict()["text.weight"], plain)
    trained = list(method.train_parameters())
    assert len(trained) == 5 and method.num_trainable() == plain.numel()  # P, down and up; only P is stored
    with torch.no_grad():
        method.training_modules["text"].up.weight.normal_(0, 0.1)
    produced = method.prompt("text").detach().clone()
    assert not torch.allclose(produced, plain)
    method.fold()
    assert len(method.training_modules) == 0 and torch.allclose(method.state_dict()["text.weight"], produced)
    assert set(method.state_dict()) == {"text.weight"}


def test_text_prefix_starts_as_the_decoders_own_keys_and_values_of_real_words(vl):
    """Li & Liang's initialisation: layer 0's prefix keys and values are its key and value projections of
    the embedded words (drawn first from the seed's generator)."""
    from training.methods.prompt import sample_words

    prefix = vl.attach("prefix", "a", "text", 4, seed=3).state_dict()["text.weight"]
    ids = sample_words(vl.tokenizer, 4, torch.Generator().manual_seed(3))
    embeddings = vl.model.text_decoder.bert.embeddings
    with torch.no_grad():
        hidden = embeddings(input_ids=ids[None])
        attention = vl.model.text_decoder.bert.encoder.layer[0].attention.self
        heads = vl.model.config.text_config.num_attention_heads
        key = attention.key(hidden).view(1, 4, heads, -1).transpose(1, 2)[0]
        value = attention.value(hidden).view(1, 4, heads, -1).transpose(1, 2)[0]
    assert torch.allclose(prefix[0, 0], key, atol=1e-6) and torch.allclose(prefix[0, 1], value, atol=1e-6)


def test_reparametrised_prefix_trains_e_and_the_mlp_then_folds_into_the_plain_prefix(
    vl, inputs, tiny_model_dir, tmp_path
):
    plan = plan_method(vl.model, "prefix", "2k", "both")
    method = vl.attach("prefix", "a", "both", plan.value, seed=5, options={"reparam": True})
    plain = VLModel(load_base_model(str(tiny_model_dir))).attach("prefix", "p", "both", plan.value)
    assert method.state_dict().keys() == plain.state_dict().keys()
    assert method.num_trainable() == plain.num_trainable() == plan.trainable_params
    vl.set_active("a")
    assert vl.freeze_all_but("a") == plan.trainable_params
    trained = {id(p) for p in method.train_parameters()}
    assert trained == {id(p) for p in method.training_modules.parameters()}
    assert trained == {id(p) for p in vl.model.parameters() if p.requires_grad}
    assert not trained & {id(p) for p in method.parameters()}

    optimizer = torch.optim.AdamW(list(method.train_parameters()), lr=1e-2)
    before_step = outputs(vl, *inputs)[1]
    pixels, ids, mask = inputs
    vl.text_logits(vl.encode_images(pixels), ids, mask).square().mean().backward()
    optimizer.step()
    _, trained_logits = outputs(vl, *inputs)
    assert not torch.allclose(trained_logits, before_step, atol=1e-4)

    method.fold()
    assert len(method.training_modules) == 0 and not list(vl.model.peft_training.parameters())
    assert {id(p) for p in method.train_parameters()} == {id(p) for p in method.parameters()}
    _, folded = outputs(vl, *inputs)
    assert torch.allclose(folded, trained_logits, atol=1e-6, rtol=0)
    save_file(method.state_dict(), str(tmp_path / "w.safetensors"))
    fresh = VLModel(load_base_model(str(tiny_model_dir)))
    fresh.attach("prefix", "b", "both", plan.value).load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    fresh.set_active("b")
    assert torch.equal(outputs(fresh, *inputs)[1], folded)


def test_fold_is_a_no_op_for_the_other_methods(vl, inputs):
    for method in PEFT:
        vl.attach(method, method, "both", KNOB[method])
        randomize(vl, method)
    for method in PEFT:
        vl.set_active(method)
        before = outputs(vl, *inputs)[1]
        state = vl.adapters[method].state_dict()
        vl.adapters[method].fold()
        assert torch.equal(outputs(vl, *inputs)[1], before)
        assert all(torch.equal(v, state[k]) for k, v in vl.adapters[method].state_dict().items())


def test_an_unknown_option_is_refused_naming_the_accepted_ones(vl):
    with pytest.raises(ValueError, match="prefix has no option 'depth'; accepted options: reparam"):
        vl.attach("prefix", "a", "text", 2, options={"depth": 2})
    with pytest.raises(ValueError, match="lora has no option 'reparam'; accepted options: none"):
        vl.attach("lora", "b", "text", 2, options={"reparam": True})
    assert not vl.adapters
