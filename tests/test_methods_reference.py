"""Every method against its paper's definition, one table of cases driving one battery (as peft's
tests/test_custom_models.py does): a new method is a new row.

For each row and tower, a plain-torch forward of ONE BLIP layer (layer 0: a ViT encoder layer; a text decoder
layer with causal self-attention, cross-attention to image embeddings and FFN) with the method inserted as
its paper defines it, computed from the weights of a separately loaded base model (never one a method has
touched) and from the method's stored tensors read by their state-dict keys. The wrapped model's layer-0
output must match, and so must the gradients of every trained tensor, with random non-zero adapter weights.

- prompt (Lester et al. 2021; VPT-shallow, Jia et al. 2022 for vision): P vectors before the text embeddings
  (at position 0, the project's choice, so the text keeps its pre-training positions); P visual tokens after
  the image's [CLS] token.
- prefix (Li & Liang 2021): P extra keys and values in every self-attention (the decoder's causal one, the
  ViT's), never in the cross-attention; optionally produced as MLP(E) (their reparametrisation).
- lora (Hu et al. 2021): W x + (alpha / r) B A x on the ViT's fused qkv and on the decoder's query and value
  of self- and cross-attention; alpha / r = 2 up to rank 4 (the project's scaling).
- serial adapter (Houlsby et al. 2019): h + A(h) on the attention output projection and on the FFN output
  projection, before the residual (and the text's post-LayerNorm); never on the cross-attention.
- parallel adapter (He et al. 2022): s * A(x) beside the FFN, x the FFN's input, s = 4.
- ia3 (Liu et al. 2022): keys and values of self- and cross-attention rescaled by learned vectors, and the
  FFN's inner activation: (l_ff ⊙ gelu(W1 x)) W2; on the ViT the fused qkv output is rescaled whole.
- loha (Hyeon-Woo et al. 2022): W x + (alpha / r) ((W1a W1b) * (W2a W2b)) x on LoRA's projections, with LoRA's
  scaling; not in the paper.
- dora (Liu et al. 2024): LoRA's projections use W' = m (W + (alpha / r) B A) / ||W + (alpha / r) B A||_c (row
  norms, one magnitude per output feature), the norm detached from the gradient as their section 4.3 says.

And a sanity check of training itself, for every method the catalog trains: at a sensible rate it memorises a
handful of training examples (training loss near zero, every answer generated exactly) within a bounded number
of steps. One that cannot has a bug (a frozen parameter, a detached graph, a prompt or prefix that never reaches
the layers, a mask that hides it) or a recipe problem, and the failing test names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from training.catalog import CATALOG
from training.data.examples import Example
from training.methods.budget import plan_method
from training.methods.vlmodel import VLModel
from training.methods.wrappers import unwrapped_name
from training.model.base_model import load_base_model
from training.model.pixels import PixelCache
from training.run.evaluation import predict
from training.run.tasks import Encoder, training_pairs
from training.run.trainer import batch_loss

Tensors = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------ plain-torch BLIP layer 0


def linear(weights: Tensors, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]


def layer_norm(weights: Tensors, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], eps)


def heads_of(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, d] -> [B, heads, T, d / heads]"""
    return x.view(*x.shape[:2], heads, -1).transpose(1, 2)


def attend(query, key, value, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention over [B, heads, T, hd]; returns [B, T, d]."""
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    context = torch.softmax(scores, -1) @ value
    return context.transpose(1, 2).reshape(query.shape[0], query.shape[2], -1)


def bottleneck(adapter: Tensors, key: str, h: torch.Tensor) -> torch.Tensor:
    """up(GELU(down(h)))"""
    return linear(adapter, f"{key}.up", F.gelu(linear(adapter, f"{key}.down", h)))


@dataclass
class Insert:
    """Where a method acts inside one layer; every field defaults to "nothing there"."""

    prompt: torch.Tensor | None = None  # [P, d] joined to the tower's input sequence
    prefix: tuple[torch.Tensor, torch.Tensor] | None = None  # self-attention (key, value) [heads, P, hd]
    delta: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)  # projection -> x -> Δ
    scale: dict[str, torch.Tensor] = field(default_factory=dict)  # projection, or "ffn" (inner activation) -> l
    weight: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)  # projection -> W -> W'
    after: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)  # sub-layer -> h -> h'
    beside_ffn: Callable[[torch.Tensor], torch.Tensor] | None = None  # FFN input x -> added beside the FFN


def projected(weights: Tensors, name: str, x: torch.Tensor, insert: Insert, slot: str) -> torch.Tensor:
    weight = weights[f"{name}.weight"]
    weight = insert.weight[slot](weight) if slot in insert.weight else weight
    out = x @ weight.T + weights[f"{name}.bias"]
    out = out * insert.scale[slot] if slot in insert.scale else out
    return out + insert.delta[slot](x) if slot in insert.delta else out


def ffn_inner(weights: Tensors, name: str, x: torch.Tensor, insert: Insert) -> torch.Tensor:
    """The feed-forward block's inner activation gelu(W1 x), rescaled where a method says so."""
    hidden = F.gelu(linear(weights, name, x))
    return hidden * insert.scale["ffn"] if "ffn" in insert.scale else hidden


def vision_embeddings(weights: Tensors, cfg, pixels: torch.Tensor, insert: Insert) -> torch.Tensor:
    patch = cfg.patch_size
    patches = F.conv2d(
        pixels,
        weights["vision_model.embeddings.patch_embedding.weight"],
        weights["vision_model.embeddings.patch_embedding.bias"],
        stride=patch,
    )
    patches = patches.flatten(2).transpose(1, 2)
    cls = weights["vision_model.embeddings.class_embedding"].expand(pixels.shape[0], 1, -1)
    tokens = torch.cat([cls, patches], 1)
    tokens = tokens + weights["vision_model.embeddings.position_embedding"][:, : tokens.shape[1]]
    if insert.prompt is not None:  # VPT-shallow: prompt tokens after [CLS], after the position embeddings
        prompts = insert.prompt.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], 1)
    return tokens


def vision_layer(weights: Tensors, cfg, x: torch.Tensor, insert: Insert) -> torch.Tensor:
    """Pre-LN ViT block: x + proj(attn(LN1 x)), then h + fc2(gelu(fc1(LN2 h)))."""
    name = "vision_model.encoder.layers.0"
    heads, eps = cfg.num_attention_heads, cfg.layer_norm_eps
    h = layer_norm(weights, f"{name}.layer_norm1", x, eps)
    qkv = projected(weights, f"{name}.self_attn.qkv", h, insert, "qkv")
    query, key, value = (heads_of(part, heads) for part in qkv.chunk(3, -1))
    if insert.prefix is not None:
        batch = x.shape[0]
        key = torch.cat([insert.prefix[0].expand(batch, -1, -1, -1), key], 2)
        value = torch.cat([insert.prefix[1].expand(batch, -1, -1, -1), value], 2)
    attn = linear(weights, f"{name}.self_attn.projection", attend(query, key, value))
    attn = insert.after["attention"](attn) if "attention" in insert.after else attn
    h = x + attn
    inner = layer_norm(weights, f"{name}.layer_norm2", h, eps)
    ffn = linear(weights, f"{name}.mlp.fc2", ffn_inner(weights, f"{name}.mlp.fc1", inner, insert))
    ffn = insert.after["ffn"](ffn) if "ffn" in insert.after else ffn
    if insert.beside_ffn is not None:
        ffn = ffn + insert.beside_ffn(inner)
    return h + ffn


def text_embeddings(weights: Tensors, cfg, ids: torch.Tensor, insert: Insert) -> torch.Tensor:
    words = weights["text_decoder.bert.embeddings.word_embeddings.weight"][ids]
    positions = weights["text_decoder.bert.embeddings.position_embeddings.weight"][: ids.shape[1]]
    tokens = words + positions
    if insert.prompt is not None:  # prompt vectors first, all at position 0
        prompts = insert.prompt + weights["text_decoder.bert.embeddings.position_embeddings.weight"][0]
        tokens = torch.cat([prompts.unsqueeze(0).expand(ids.shape[0], -1, -1), tokens], 1)
    return layer_norm(weights, "text_decoder.bert.embeddings.LayerNorm", tokens, cfg.layer_norm_eps)


def text_layer(
    weights: Tensors, cfg, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, insert: Insert
) -> torch.Tensor:
    """Post-LN decoder block: LN(h + dense(causal self-attn h)), LN(· + dense(cross-attn to the image)),
    LN(· + dense(gelu(dense ·))). `mask` [B, T'] covers the whole sequence (prompt included)."""
    name = "text_decoder.bert.encoder.layer.0"
    heads, eps = cfg.num_attention_heads, cfg.layer_norm_eps
    length = x.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    query = heads_of(projected(weights, f"{name}.attention.self.query", x, insert, "self.query"), heads)
    key = heads_of(projected(weights, f"{name}.attention.self.key", x, insert, "self.key"), heads)
    value = heads_of(projected(weights, f"{name}.attention.self.value", x, insert, "self.value"), heads)
    if insert.prefix is not None:  # every text position also sees the P prefix keys
        batch = x.shape[0]
        key = torch.cat([insert.prefix[0].expand(batch, -1, -1, -1), key], 2)
        value = torch.cat([insert.prefix[1].expand(batch, -1, -1, -1), value], 2)
        seen = torch.ones(*allowed.shape[:3], insert.prefix[0].shape[1], dtype=torch.bool)
        allowed = torch.cat([seen.expand(batch, -1, -1, -1), allowed.expand(batch, -1, -1, -1)], -1)
    attn = linear(weights, f"{name}.attention.output.dense", attend(query, key, value, allowed))
    attn = insert.after["attention"](attn) if "attention" in insert.after else attn
    h = layer_norm(weights, f"{name}.attention.output.LayerNorm", attn + x, eps)

    query = heads_of(projected(weights, f"{name}.crossattention.self.query", h, insert, "cross.query"), heads)
    key = heads_of(projected(weights, f"{name}.crossattention.self.key", image, insert, "cross.key"), heads)
    value = heads_of(projected(weights, f"{name}.crossattention.self.value", image, insert, "cross.value"), heads)
    cross = linear(weights, f"{name}.crossattention.output.dense", attend(query, key, value))
    h = layer_norm(weights, f"{name}.crossattention.output.LayerNorm", cross + h, eps)

    ffn = linear(weights, f"{name}.output.dense", ffn_inner(weights, f"{name}.intermediate.dense", h, insert))
    ffn = insert.after["ffn"](ffn) if "ffn" in insert.after else ffn
    residual = h + insert.beside_ffn(h) if insert.beside_ffn is not None else h
    return layer_norm(weights, f"{name}.output.LayerNorm", ffn + residual, eps)


# ------------------------------------------------------------------------------ each method, from its paper


def lora_scaling(rank: int) -> float:
    """alpha / r: 2 up to rank 4, then rank-stabilised 2 * sqrt(4 / r) (the project's scaling)."""
    return 2.0 if rank <= 4 else 2.0 * math.sqrt(4 / rank)


def prompt_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    return Insert(prompt=adapter[f"{tower}.weight"])


def prefix_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    if tower == "text":
        return Insert(prefix=(adapter["text.weight"][0, 0], adapter["text.weight"][0, 1]))
    return Insert(prefix=(adapter["vision-0.weight"][0], adapter["vision-0.weight"][1]))


def reparam_prefix_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    """Li & Liang's training form: prefixes = Linear2(tanh(Linear1(E))), read as [P, layers, 2, heads, hd]."""
    key = f"training.{tower}"
    hidden = torch.tanh(linear(adapter, f"{key}.mlp.0", adapter[f"{key}.embedding"]))
    produced = linear(adapter, f"{key}.mlp.2", hidden)
    layer0 = produced.view(knob, cfg.num_hidden_layers, 2, cfg.num_attention_heads, -1)[:, 0]  # [P, 2, heads, hd]
    return Insert(prefix=(layer0[:, 0].transpose(0, 1), layer0[:, 1].transpose(0, 1)))


def reparam_prompt_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    """The residual training form (Razdaibiedina et al. 2023): prompt = P + up(tanh(down(P)))."""
    vectors = adapter[f"{tower}.weight"]
    hidden = torch.tanh(linear(adapter, f"training.{tower}.down", vectors))
    return Insert(prompt=vectors + linear(adapter, f"training.{tower}.up", hidden))


def on_lora_projections(tower: str, update: Callable[[str], Callable[[torch.Tensor], torch.Tensor]]) -> Insert:
    """An update on LoRA's projections of layer 0: the fused vision qkv; the decoder's query and value of self- and
    cross-attention. `update(path)` gives the function x -> delta for the projection at `path`."""
    if tower == "vision":
        return Insert(delta={"qkv": update("vision_model.encoder.layers.0.self_attn.qkv")})
    name = "text_decoder.bert.encoder.layer.0"
    return Insert(
        delta={
            f"{part}.{proj}": update(f"{name}.{module}.self.{proj}")
            for part, module in (("self", "attention"), ("cross", "crossattention"))
            for proj in ("query", "value")
        }
    )


def lora_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    def update(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
        down, up = adapter[f"{path}.lora_A.weight"], adapter[f"{path}.lora_B.weight"]
        return lambda x: lora_scaling(knob) * (x @ down.T) @ up.T

    return on_lora_projections(tower, update)


def serial_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    def after(key: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda h: h + bottleneck(adapter, key, h)

    return Insert(after={"attention": after(f"{tower}-0-attn"), "ffn": after(f"{tower}-0-ffn")})


def parallel_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    return Insert(beside_ffn=lambda x: 4.0 * bottleneck(adapter, f"{tower}-0-ffn", x))


def ia3_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    """l_k ⊙ keys, l_v ⊙ values (self- and cross-attention), l_ff ⊙ gelu(W1 x); the ViT's fused qkv output is
    rescaled whole (queries too, as peft does for fused projections)."""

    def vector(path: str) -> torch.Tensor:
        return adapter[f"{path}.ia3_l"].flatten()

    if tower == "vision":
        name = "vision_model.encoder.layers.0"
        return Insert(scale={"qkv": vector(f"{name}.self_attn.qkv"), "ffn": vector(f"{name}.mlp.fc2")})
    name = "text_decoder.bert.encoder.layer.0"
    scale = {
        f"{part}.{proj}": vector(f"{name}.{module}.self.{proj}")
        for part, module in (("self", "attention"), ("cross", "crossattention"))
        for proj in ("key", "value")
    }
    return Insert(scale={**scale, "ffn": vector(f"{name}.output.dense")})


def dora_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    """W' = m (W + s B A) / ||W + s B A||_c on LoRA's projections, the norm a constant in backward (their 4.3)."""

    def recomposed(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
        down, up = adapter[f"{path}.lora_A.weight"], adapter[f"{path}.lora_B.weight"]
        magnitude = adapter[f"{path}.lora_magnitude_vector"]

        def weight(base: torch.Tensor) -> torch.Tensor:
            direction = base + lora_scaling(knob) * up @ down
            return magnitude[:, None] * direction / direction.norm(dim=1, keepdim=True).detach()

        return weight

    if tower == "vision":
        return Insert(weight={"qkv": recomposed("vision_model.encoder.layers.0.self_attn.qkv")})
    name = "text_decoder.bert.encoder.layer.0"
    return Insert(
        weight={
            f"{part}.{proj}": recomposed(f"{name}.{module}.self.{proj}")
            for part, module in (("self", "attention"), ("cross", "crossattention"))
            for proj in ("query", "value")
        }
    )


def loha_insert(adapter: Tensors, tower: str, knob: int, cfg) -> Insert:
    """LoHa (Hyeon-Woo et al. 2022): W x + s ((W1a W1b) * (W2a W2b)) x, on LoRA's projections with its scaling."""

    def update(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
        w1 = adapter[f"{path}.hada_w1_a"] @ adapter[f"{path}.hada_w1_b"]
        w2 = adapter[f"{path}.hada_w2_a"] @ adapter[f"{path}.hada_w2_b"]
        return lambda x: lora_scaling(knob) * x @ (w1 * w2).T

    return on_lora_projections(tower, update)


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    knob: int | None
    insert: Callable[[Tensors, str, int, object], Insert]  # (adapter tensors, tower, knob, tower config)
    options: dict = field(default_factory=dict)


CASES = [
    Case("prompt", "prompt", 3, prompt_insert),
    Case("prompt-reparam", "prompt", 3, reparam_prompt_insert, {"reparam": True}),
    Case("prefix", "prefix", 3, prefix_insert),
    Case("prefix-reparam", "prefix", 3, reparam_prefix_insert, {"reparam": True}),
    Case("lora", "lora", 2, lora_insert),
    Case("serial-adapter", "serial-adapter", 4, serial_insert),
    Case("parallel-adapter", "parallel-adapter", 4, parallel_insert),
    Case("ia3", "ia3", None, ia3_insert),
    Case("dora", "dora", 2, dora_insert),
    Case("loha", "loha", 2, loha_insert),
]
TOWERS = ["vision", "text"]


# ------------------------------------------------------------------------------ the battery


@pytest.fixture(scope="module")
def base_weights(tiny_model_dir) -> tuple[Tensors, object]:
    """Base weights, randomised so that every layer is lively (the tiny model's vision weights are ~1e-10, as
    BLIP's vision initializer_range is, which would hide any vision-side mistake), held as plain tensors that
    no method ever wraps; each test loads them into a fresh model before attaching a method."""
    model = load_base_model(str(tiny_model_dir)).model
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            norm_scale = "norm" in name.lower() and name.endswith("weight")
            param.copy_(1 + 0.1 * noise if norm_scale else 0.2 * noise)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, model.config


def lively_model(tiny_model_dir, weights: Tensors) -> VLModel:
    vl = VLModel(load_base_model(str(tiny_model_dir)))
    vl.model.load_state_dict(weights)
    vl.model.eval()
    return vl


def trained_tensors(method) -> dict[str, torch.nn.Parameter]:
    """What the optimizer updates, by name: stored keys, and `training.<key>` for training-only modules."""
    named = dict(method.named_parameters())
    named.update({f"training.{k}": p for k, p in method.training_modules.named_parameters()})
    trained = {id(p) for p in method.train_parameters()}
    picked = {k: p for k, p in named.items() if id(p) in trained}
    assert len(picked) == len(trained), "a trained tensor has no name"
    return picked


def attach_random(vl: VLModel, case: Case, towers: str, seed: int = 0):
    method = vl.attach(case.method, "a", towers, case.knob, seed=seed, options=case.options)
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for param in trained_tensors(method).values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    vl.set_active("a")
    vl.freeze_all_but("a")
    return method


def inputs():
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    ids = torch.tensor([[5, 9, 10, 11, 12, 3], [5, 13, 14, 15, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    return pixels, ids, mask


def wrapped_layer0(vl: VLModel, tower: str, image: torch.Tensor) -> torch.Tensor:
    """Layer 0's output in the wrapped model, with the graph back to the adapter's tensors."""
    pixels, ids, mask = inputs()
    seen = []
    layer = (
        vl.model.vision_model.encoder.layers[0] if tower == "vision" else vl.model.text_decoder.bert.encoder.layer[0]
    )
    handle = layer.register_forward_hook(
        lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        if tower == "vision":
            vl.encode_images(pixels)
        else:
            vl.text_logits(image, ids, mask)
    finally:
        handle.remove()
    return seen[0]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to float32 rounding, relative to the tensor's largest entry."""
    return bool((got - want).abs().max() <= 1e-5 * (1 + want.abs().max()))


def reference_layer0(weights: Tensors, config, tower: str, insert: Insert, image: torch.Tensor) -> torch.Tensor:
    pixels, ids, mask = inputs()
    if tower == "vision":
        cfg = config.vision_config
        return vision_layer(weights, cfg, vision_embeddings(weights, cfg, pixels, insert), insert)
    cfg = config.text_config
    x = text_embeddings(weights, cfg, ids, insert)
    if insert.prompt is not None:
        mask = torch.cat([mask.new_ones(mask.shape[0], insert.prompt.shape[0]), mask], 1)
    return text_layer(weights, cfg, x, mask, image, insert)


@pytest.mark.parametrize("tower", TOWERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_layer_output_and_gradients_match_the_papers_definition(tiny_model_dir, base_weights, case, tower):
    weights, config = base_weights
    vl = lively_model(tiny_model_dir, weights)
    method = attach_random(vl, case, tower)
    image = torch.randn(2, 17, config.vision_config.hidden_size, generator=torch.Generator().manual_seed(2))
    trained = trained_tensors(method)
    out = wrapped_layer0(vl, tower, image)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((out * probe).sum(), list(trained.values()), allow_unused=True)

    leaves = {k: p.detach().clone().requires_grad_(True) for k, p in trained.items()}
    cfg = config.text_config if tower == "text" else config.vision_config
    expected = reference_layer0(weights, config, tower, case.insert(leaves, tower, case.knob, cfg), image)
    base = reference_layer0(weights, config, tower, Insert(), image)
    assert out.shape == expected.shape
    assert base.abs().max() > 0.5  # a lively layer
    assert (expected[..., -base.shape[1] :, :] - base).abs().max() > 0.05  # the method really acts
    assert close(out, expected), (out - expected).abs().max()

    reference = torch.autograd.grad((expected * probe).sum(), list(leaves.values()), allow_unused=True)
    assert any(g is not None and g.abs().max() > 0 for g in reference)
    for key, got, want in zip(trained, grads, reference, strict=True):
        got = torch.zeros_like(trained[key]) if got is None else got
        want = torch.zeros_like(trained[key]) if want is None else want
        assert close(got, want), (key, (got - want).abs().max())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_training_steps_leave_every_base_tensor_unchanged_by_its_unwrapped_name(tiny_model_dir, base_weights, case):
    weights, _ = base_weights
    vl = lively_model(tiny_model_dir, weights)
    method = attach_random(vl, case, "both")
    before = {k: p.detach().clone() for k, p in trained_tensors(method).items()}
    optimizer = torch.optim.AdamW(list(method.train_parameters()), lr=1e-2, weight_decay=0.1)
    pixels, ids, mask = inputs()
    for _ in range(3):
        loss = vl.text_logits(vl.encode_images(pixels), ids, mask).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(p, before[k]) for k, p in trained_tensors(method).items())
    method.fold()
    state = {}
    for key, value in vl.model.state_dict().items():
        state.setdefault(unwrapped_name(key), value)
    missing = sorted(set(weights) - set(state))
    assert not missing, f"base tensors not found under their unwrapped names: {missing[:5]}"
    changed = [key for key, value in weights.items() if not torch.equal(state[key], value)]
    assert not changed, changed[:5]


# ------------------------------------------------------------------------------ memorisation


# Every method the catalog trains (not a list kept by hand): a new method joins the check by its catalog entry.
TRAINED = [name for name, info in CATALOG.items() if info.default_lr is not None]
HANDFUL = [  # (question, answer, colour, shape): four questions, four different answers
    ("what color is the square ?", "red", "red", "square"),
    ("what shape is the red shape ?", "circle", "green", "circle"),
    ("how many ?", "two", "blue", "square"),
    ("is there a circle ?", "yes", "yellow", "circle"),
]
MEMORISE_BUDGET = "1k"  # text decoder: prompt 31 vectors, prefix 8, LoRA rank 2, adapters 3-7, DoRA rank 1
MEMORISE_LR_FACTOR = 10  # times the catalog's default rate: a tiny model from scratch-like weights learns slower
MEMORISE_STEPS = 300  # the bound; every method memorises well within it (prompt tuning, the slowest, ~250)
LOSS_NEAR_ZERO = 0.1  # nats per answer token, from ln(vocabulary) ~ 3.8 at the start: p(answer) ~ 0.9


class InMemoryImage:
    def __init__(self, image) -> None:
        self.image = image

    def load(self):
        return self.image


@pytest.fixture(scope="module")
def memorising_weights(tiny_model_dir) -> Tensors:
    """The tiny model's weights made lively (as `base_weights`), with word embeddings at a trained model's scale
    (std 1): the tied output layer can then be confident, as a pre-trained one is. At the tiny init's scale the
    best a frozen base allows is p ~ 0.5 per token, so no PEFT method could bring the loss near zero."""
    model = load_base_model(str(tiny_model_dir)).model
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_((1.0 if "word_embeddings" in name else 0.2) * noise)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def handful() -> list[Example]:
    from tests.conftest import draw_tiny

    return [
        Example(image=InMemoryImage(draw_tiny(colour, shape)), image_id=f"m{i}", question=question, answers=[answer])
        for i, (question, answer, colour, shape) in enumerate(HANDFUL)
    ]


def memorise(vl: VLModel, lr: float, steps: int = MEMORISE_STEPS) -> tuple[int | None, tuple[float, float], list[str]]:
    """Train the attached adapter on the handful (linear decay over `steps`, clipped as the trainer does): (the
    step at which the loss is near zero and every answer exact, or None; the first and last losses; the answers)."""
    examples = handful()
    pairs = training_pairs("vqa", examples)
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    pixels = PixelCache(vl.base.processor)
    params = list(vl.adapters["run"].train_parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    answers: list[str] = []
    first = None
    for step in range(1, steps + 1):
        vl.model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - (step - 1) / steps)
        loss = batch_loss(vl, pairs, encoder, pixels, {})
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 25 == 0:
            vl.model.eval()
            answers = predict(vl, "vqa", examples, pixels, encoder, max_new_tokens=4)
            if loss.item() < LOSS_NEAR_ZERO and answers == [answer for _, answer, _, _ in HANDFUL]:
                return step, (first, loss.item()), answers
    return None, (first, loss.item()), answers


def memorising_model(tiny_model_dir, weights: Tensors, method: str) -> VLModel:
    vl = VLModel(load_base_model(str(tiny_model_dir)))
    vl.model.load_state_dict(weights)
    plan = plan_method(vl.model, method, MEMORISE_BUDGET, "text")
    if not plan.feasible:  # its smallest size is above the budget (LoHa's rank 1 is 1,024 here): train that size
        plan = plan_method(vl.model, method, str(plan.min_params), "text")
    assert plan.feasible, plan
    vl.attach(method, "run", "text", plan.value, seed=0)
    vl.set_active("run")
    vl.freeze_all_but("run")
    return vl


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_memorises_a_handful_of_training_examples(tiny_model_dir, memorising_weights, method):
    torch.manual_seed(0)
    vl = memorising_model(tiny_model_dir, memorising_weights, method)
    step, (first, loss), answers = memorise(vl, MEMORISE_LR_FACTOR * CATALOG[method].default_lr)
    assert step is not None, (
        f"{method} did not memorise {len(HANDFUL)} training examples in {MEMORISE_STEPS} steps: loss {first:.3f} -> "
        f"{loss:.3f}, "
        f"answers {answers}: a frozen parameter, a detached graph, or an input that never reaches the layers?"
    )


def test_the_memorisation_check_fails_for_a_method_that_cannot_learn(tiny_model_dir, memorising_weights, monkeypatch):
    """A prompt whose vectors never reach the layers (zeros arrive in their place, so no gradient moves them)
    never learns, and the check says so."""
    from training.methods.prompt import PromptTuning

    original = PromptTuning.text_prompt
    monkeypatch.setattr(PromptTuning, "text_prompt", lambda self, batch: 0 * original(self, batch))
    torch.manual_seed(0)
    vl = memorising_model(tiny_model_dir, memorising_weights, "prompt")
    step, (first, loss), _ = memorise(vl, MEMORISE_LR_FACTOR * CATALOG["prompt"].default_lr, steps=50)
    assert step is None and loss == pytest.approx(first, rel=1e-4) and loss > 3  # ln(vocabulary size): chance
