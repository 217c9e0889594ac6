"""How long a sweep's runs would take on a GPU kind, estimated from FLOPs: nothing here is measured.

The floating-point operations of a run are counted from the base model's architecture (the config on the meta
device: layers, widths, image and patch size, vocabulary), a run's steps at its epoch cap, its validations and
its test scoring, and divided by a GPU kind's datasheet peak times an assumed utilisation, both given in the
sweep file's `gpu_estimate`. A multiply-add is 2 FLOPs; a training step of frozen weights costs its forward
twice (forward, and the backward to the activations), of trained weights three times (the weight gradients too).
Decoding is bound by latency more than by FLOPs, so validation and test time are under-estimated; the measured
step times of `python -m training bench --device cuda` on the machine replace all of this once it has run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from training.catalog import BASELINE, CATALOG
from training.errors import UserError
from training.run.config import RunConfig, planned_steps, val_every

if TYPE_CHECKING:
    from transformers import BlipConfig

    from training.methods.budget import Plan
    from training.model.shape import ModelShape

FIELDS = {"utilisation", "peak_tflops", "train_examples", "train_images", "text_tokens"}


@dataclass(frozen=True)
class GpuEstimate:
    """The sweep file's `gpu_estimate`: the assumptions the estimate rests on, each stated there with its source."""

    utilisation: float  # the share of the datasheet peak a training step sustains (an assumption)
    peak_tflops: dict[str, float]  # GPU kind -> dense bf16 (fp16 where there is no bf16) tensor peak, datasheet
    train_examples: dict[str, int]  # task -> training sequences of the whole dataset (captions, questions)
    train_images: dict[str, int]  # task -> training images (the frozen vision tower sees each once per run)
    text_tokens: dict[str, int]  # task -> tokens of a padded training sequence or a decoded one

    @classmethod
    def parse(cls, data, tasks: list[str]) -> GpuEstimate:
        if not isinstance(data, dict) or set(data) != FIELDS:
            raise UserError(f"`gpu_estimate` must be a mapping with exactly {', '.join(sorted(FIELDS))}.")
        utilisation = float(data["utilisation"])
        if not 0 < utilisation <= 1:
            raise UserError("`gpu_estimate.utilisation` is a share of the peak: above 0 and at most 1.")
        peaks = _numbers(data["peak_tflops"], "gpu_estimate.peak_tflops", None)
        per_task = {
            key: _numbers(data[key], f"gpu_estimate.{key}", tasks) for key in FIELDS - {"utilisation", "peak_tflops"}
        }
        return cls(
            utilisation,
            peaks,
            **{key: {t: int(v) for t, v in values.items()} for key, values in per_task.items()},
        )


def _numbers(value, key: str, tasks: list[str] | None) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise UserError(f"`{key}` must be a mapping, e.g. {{caption: 24, vqa: 24}}.")
    if tasks is not None and set(tasks) - set(value):
        raise UserError(f"`{key}` needs a value for every task of the sweep ({', '.join(tasks)}).")
    try:
        numbers = {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise UserError(f"`{key}` must map names to numbers.") from None
    if any(v <= 0 for v in numbers.values()):
        raise UserError(f"`{key}`: every value must be above 0.")
    return numbers


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs of one example through each part of a BLIP captioning model."""

    vision: float  # the vision tower on one image
    text_per_token: float  # the text decoder per token, without attention over the other text tokens
    text_image: float  # the decoder's cross-attention keys and values of the image tokens (once per example)
    text_pair: float  # self-attention over text tokens: times tokens squared

    def text(self, tokens: int) -> float:
        return self.text_image + self.text_per_token * tokens + self.text_pair * tokens * tokens


def forward_flops(config: BlipConfig) -> ForwardFlops:
    """Count the forward FLOPs of the architecture from its config (matrix products only; norms, softmax and
    activations are a few per cent and left out)."""
    vision, text = config.vision_config, config.text_config
    patches = (vision.image_size // vision.patch_size) ** 2
    tokens_v, d_v = patches + 1, vision.hidden_size
    embed = 2 * patches * vision.num_channels * vision.patch_size**2 * d_v
    layer_v = 2 * tokens_v * (4 * d_v * d_v + 2 * d_v * vision.intermediate_size) + 4 * tokens_v * tokens_v * d_v
    d_t, d_enc = text.hidden_size, text.encoder_hidden_size
    # Per text token and layer: self-attention projections (4), cross-attention query and output (2), the MLP,
    # and attention over the image tokens; the head: its transform and the vocabulary projection.
    per_token = text.num_hidden_layers * (
        2 * (6 * d_t * d_t + 2 * d_t * text.intermediate_size) + 4 * tokens_v * d_t
    ) + 2 * (d_t * d_t + d_t * text.vocab_size)
    image_kv = text.num_hidden_layers * 2 * tokens_v * 2 * d_enc * d_t
    return ForwardFlops(
        vision=embed + vision.num_hidden_layers * layer_v,
        text_per_token=per_token,
        text_image=image_kv,
        text_pair=text.num_hidden_layers * 4 * d_t,
    )


@dataclass(frozen=True)
class RunFlops:
    train_step: float  # one optimizer step at the run's batch size
    steps: int  # at the epoch cap (or the step floor)
    rest: float  # the vision features cached once, the validations and the test scoring

    @property
    def total(self) -> float:
        return self.train_step * self.steps + self.rest


def run_flops(
    flops: ForwardFlops,
    config: RunConfig,
    assumed: GpuEstimate,
    trainable: int,
    extra_tokens: int = 0,
) -> RunFlops:
    """The FLOPs of one run: `trainable` parameters (its solved count), `extra_tokens` its prompt vectors. Validation
    and test count `val_limit` and `eval_limit` examples: a sweep with an estimate sets both."""
    task, tokens = config.task, assumed.text_tokens[config.task]
    decode = flops.vision + flops.text(tokens + extra_tokens)  # a forward per decoded example (with a KV cache)
    tested = (config.eval_limit or 0) * decode if config.score_test else 0.0
    if config.method == "zero-shot":
        return RunFlops(0.0, 0, tested)
    share = config.data_fraction
    pairs = max(1, round(assumed.train_examples[task] * share))
    steps = planned_steps(config, pairs)
    both = CATALOG[config.method].family == BASELINE or config.towers != "text"
    text = flops.text(tokens + extra_tokens)
    if both:  # every weight trains (or the vision tower does): no cached features
        per_example = 3 * (flops.vision + text)
        cached = 0.0
    else:  # frozen decoder weights: forward and activation gradients, plus the method's own weights
        per_example = 2 * text + 6 * trainable * (tokens + extra_tokens)
        cached = flops.vision * assumed.train_images[task] * share
    validations = steps // val_every(config, pairs) if config.validates else 0
    validated = validations * (config.resolved_val_limit() or 0) * decode
    return RunFlops(per_example * config.batch_size * config.grad_accum, steps, cached + validated + tested)


class RunCost:
    """The FLOPs of a run on a base model: its method's budget solved on the model built empty, then run_flops."""

    def __init__(self, shape: ModelShape, assumed: GpuEstimate) -> None:
        from training.methods.budget import count_base_params  # torch: `python -m training --help` imports this module

        self.shape, self.assumed = shape, assumed
        self.flops = forward_flops(shape.config)
        self.total_params = count_base_params(shape.model)
        self.plans: dict[tuple[str, str, str], Plan] = {}

    def __call__(self, config: RunConfig) -> RunFlops:
        from training.methods.budget import plan_method  # torch: `python -m training --help` imports this module

        trainable, extra = 0, 0
        if config.method == "full":
            trainable = self.total_params
        elif config.method != "zero-shot":
            key = (config.method, config.budget, config.towers)
            if key not in self.plans:
                self.plans[key] = plan_method(self.shape.model, config.method, config.budget, config.towers)
            plan = self.plans[key]
            trainable = plan.trainable_params  # a method without a knob: its fixed count
            extra = plan.value if config.method == "prompt" else 0  # its vectors lengthen every sequence
        return run_flops(self.flops, config, self.assumed, trainable, extra)


def seconds(flop_count: float, assumed: GpuEstimate, kind: str) -> float:
    return flop_count / (assumed.peak_tflops[kind] * 1e12 * assumed.utilisation)


def gpu_hours_text(total_flops: float, assumed: GpuEstimate) -> str:
    """`H100 12 h, A100 38 h, ...`: the hours of one GPU of each kind."""
    return ", ".join(f"{kind} {_hours(seconds(total_flops, assumed, kind))}" for kind in assumed.peak_tflops)


def _hours(value: float) -> str:
    hours = value / 3600
    return f"{hours:.2g} h" if hours < 10 else f"{math.ceil(hours):,} h"
