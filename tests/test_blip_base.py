"""Every method at the real size of Salesforce/blip-image-captioning-base (random weights, built and saved here
in Hub layout, loaded through --base-model PATH): the budget table against counts by hand, one training step
and one decode per method, and a Compare of three adapters. On a machine with CUDA the runs use it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_WORDS
from training.catalog import FAMILY
from training.cli import main
from training.model.blip_base import TEXT_CONFIG, VISION_CONFIG, save_blip_base
from training.run import runs

pytestmark = pytest.mark.slow

H = 768  # hidden size of both towers (TEXT_CONFIG, VISION_CONFIG)
LAYERS = 12  # layers of each tower


def linear(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def blip_base_total_by_hand() -> int:
    """BLIP-base's parameters, module by module (the LM head's weight is tied to the word embeddings)."""
    patches = (VISION_CONFIG["image_size"] // VISION_CONFIG["patch_size"]) ** 2
    vision_layer = linear(H, 3 * H) + linear(H, H) + linear(H, 4 * H) + linear(4 * H, H) + 2 * 2 * H
    vision = 3 * 16 * 16 * H + H + H + (patches + 1) * H + LAYERS * vision_layer + 2 * H  # conv, [CLS], positions
    text_layer = 2 * (4 * linear(H, H) + 2 * H) + linear(H, 4 * H) + linear(4 * H, H) + 2 * H  # self, cross, FFN
    embeddings = TEXT_CONFIG["vocab_size"] * H + TEXT_CONFIG["max_position_embeddings"] * H + 2 * H
    lm_head = linear(H, H) + 2 * H + TEXT_CONFIG["vocab_size"]  # transform, its LayerNorm, the decoder's bias
    return vision + embeddings + LAYERS * text_layer + lm_head


# Trainable parameters as an affine function of the knob k, by hand, towers=both: (a, b) in a + b * k.
BY_HAND = {
    # rank r on the fused vision qkv (768 -> 2304) and on query and value of the decoder's self- and
    # cross-attention (768 -> 768): r * (in + out) each
    "lora": (0, LAYERS * (H + 3 * H) + LAYERS * 4 * (H + H)),
    # width w, a bottleneck down (H*w + w) and up (w*H + H) after attention and after the FFN, both towers
    "serial-adapter": (2 * 2 * LAYERS * H, 2 * 2 * LAYERS * (2 * H + 1)),
    # one bottleneck beside each FFN, both towers
    "parallel-adapter": (2 * LAYERS * H, 2 * LAYERS * (2 * H + 1)),
    # P keys and P values of width H in every attention layer of both towers
    "prefix": (0, 2 * LAYERS * 2 * H),
}
# One training step per method at batch 2; prompt tuning cannot reach 0.5 % here (see the budget test).
STEP_BUDGETS = {method: "0.5%" for method in ("full", *BY_HAND)} | {"prompt": "10k"}
# `make test` trains the first method of each family (catalog.FAMILY) at this size: full, LoRA and prefix tuning;
# the others run in the long set (`make test-long`).
FAMILY_PICKS = [next(m for m in STEP_BUDGETS if FAMILY[m] == family) for family in set(FAMILY.values())]


def by_family(methods) -> list:
    """The methods as test parameters: the family picks plain, the others marked long."""
    return [m if m in FAMILY_PICKS else pytest.param(m, marks=pytest.mark.long) for m in methods]


def solver_knob(a: int, b: int, target: int, high: int) -> int:
    """The knob whose count is nearest the target (the count is affine in it), within 1..high."""
    return min(high, max(1, round((target - a) / b)))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_blip_base(list(TINY_WORDS), tmp_path_factory.mktemp("blip-base"))


def run_cli(args: list[str]) -> int:
    """`python -m training ARGS` in this process, leaving pytest's signal handlers as they were."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return main(args)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.fixture(scope="module")
def base_run(base_dir, tiny_vqa_dataset, tmp_path_factory):
    """One optimizer step at batch 2 and the decode of one image's two questions, for a method, trained the first
    time a test asks for it (a `make test` run trains only the methods its tests ask for)."""
    out = tmp_path_factory.mktemp("base-runs")
    done: dict[str, Path] = {}

    def trained(method: str) -> Path:
        if method in done:
            return done[method]
        run_dir = out / method
        code = run_cli(
            [
                "train",
                "--task",
                "vqa",
                "--method",
                method,
                "--budget",
                STEP_BUDGETS[method],
                "--base-model",
                str(base_dir),
                "--dataset",
                str(tiny_vqa_dataset),
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--eval-limit",
                "2",
                "--max-new-tokens",
                "3",
                "--patience",
                "0",  # no validation pass: at this size it took longer than the training step
                "--out",
                str(run_dir),
            ]
        )
        assert code == 0, (run_dir / runs.LOG).read_text()
        done[method] = run_dir
        return run_dir

    return trained


def test_the_saved_model_has_blip_base_size_and_hub_layout(base_dir):
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json"):
        assert (base_dir / name).is_file(), name
    config = json.loads((base_dir / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == 30524 and config["vision_config"]["image_size"] == 384
    assert config["text_config"]["num_attention_heads"] == 12  # BlipConfig's default is 8


@pytest.mark.parametrize("percent", ["0.5", "0.1"])
def test_methods_budget_table_matches_counts_by_hand(base_dir, capsys, percent):
    assert run_cli(["methods", "--budget", f"{percent}%", "--base-model", str(base_dir), "--json"]) == 0
    plans = {plan["method"]: plan for plan in json.loads(capsys.readouterr().out)}
    total = blip_base_total_by_hand()
    assert total == 223_971_644
    assert plans["full"]["trainable_params"] == total
    target = round(total * float(percent) / 100)
    for method, (a, b) in BY_HAND.items():
        high = 128 if method == "prefix" else H
        knob = solver_knob(a, b, target, high)
        plan = plans[method]
        assert plan["feasible"], plan
        assert (plan["value"], plan["trainable_params"]) == (knob, a + b * knob), method
        assert plan["min_params"] == a + b and plan["max_params"] == a + b * high
    # Prompt tuning's 128 vectors per tower (1,536 parameters each pair) stop at 0.088 % of this model.
    prompt = plans["prompt"]
    assert not prompt["feasible"] and prompt["max_params"] == 128 * 2 * H
    assert "cannot reach a budget" in prompt["message"] and "Choose a budget in that range" in prompt["message"]


@pytest.mark.parametrize("method", by_family(STEP_BUDGETS))
def test_one_training_step_and_one_decode(base_run, base_dir, method):
    run_dir = base_run(method)
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    info = runs.read_json(run_dir / runs.CONFIG)
    assert info["base_model"] == str(base_dir) and info["total_params"] == 223_971_644
    assert info["device"].startswith(expected_device)
    (row,) = runs.read_jsonl(run_dir / runs.METRICS)
    assert row["step"] == 1 and row["loss"] > 0
    records = runs.read_jsonl(run_dir / runs.PREDICTIONS)
    assert len(records) == 2 and all(isinstance(r["prediction"], str) for r in records)
    assert runs.read_json(run_dir / runs.EVAL)["metrics"]["num_examples"] == 2
    if method == "lora":
        assert (info["knob_value"], info["trainable_params"]) == (10, 10 * BY_HAND["lora"][1])


@pytest.mark.parametrize(
    "adapters",
    [("lora", "prefix"), pytest.param(("lora", "prefix", "parallel-adapter"), marks=pytest.mark.long)],
    ids=["one-per-family", "three"],
)
def test_compare_of_adapters_answers_at_base_size(base_run, base_dir, tiny_vqa_dataset, adapters):
    from training.compare import Comparer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    comparer = Comparer(str(base_dir), device=device)
    image = tiny_vqa_dataset / "test" / "0000.png"
    chosen = [base_run(m) for m in adapters]
    columns = comparer.compare(str(image), "vqa", chosen, question="what color is the circle ?", max_new_tokens=3)
    assert [c.method for c in columns] == ["zero-shot", *adapters]
    assert all(isinstance(c.output, str) for c in columns)
    assert columns[1].trainable_params == 10 * BY_HAND["lora"][1]
