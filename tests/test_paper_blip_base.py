"""The real-BLIP study's sweep file (sweeps/paper-blip-base.yaml): its dry run lists the grid, solves every budget
on BLIP-base's architecture built empty (no download, no dataset read) and estimates GPU time from FLOPs."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout

import huggingface_hub
import pytest
import torch
from transformers import BlipForConditionalGeneration

from training.cli import main
from training.launch.ray_tasks import ray_task_options
from training.methods.budget import count_base_params
from training.model.base_model import load_base_config, meta_model
from training.model.blip_base import HUB_SPECIAL_TOKENS, blip_base_config
from training.paths import REPO_ROOT
from training.sweeps.gpu_estimate import forward_flops
from training.sweeps.grid import load_spec

SWEEP = REPO_ROOT / "sweeps" / "paper-blip-base.yaml"
BLIP_BASE_PARAMS = 223_971_644  # Salesforce/blip-image-captioning-base (docs/real-models.md)


def no_reading(*args, **kwargs):
    raise AssertionError("the dry run must not read a model's files or a dataset")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> str:
    """The dry run's output, with an empty Hugging Face cache and every way to a checkpoint or dataset closed."""
    tmp = tmp_path_factory.mktemp("blip-base-dry-run")
    patch = pytest.MonkeyPatch()
    patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp / "hf-cache"))
    patch.setattr("training.model.shape.load_base_config", no_reading)
    patch.setattr("training.model.base_model.load_base_model", no_reading)
    patch.setattr("training.data.dataset.load_dataset", no_reading)
    patch.setattr("training.data.hub.load_hub_dataset", no_reading)
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            code = main(
                ["sweep", "--config", str(SWEEP), "--dry-run", "--out", str(tmp / "out"), "--results", str(tmp / "r")]
            )
    finally:
        patch.undo()
    assert code == 0
    return out.getvalue()


def independent_model() -> BlipForConditionalGeneration:
    with torch.device("meta"):
        return BlipForConditionalGeneration(blip_base_config(*HUB_SPECIAL_TOKENS))


def test_the_dry_run_lists_the_grid_and_the_points_no_method_can_reach(dry_run):
    spec = load_spec(SWEEP)
    assert spec.base_model == "Salesforce/blip-image-captioning-base"
    assert "582 grid points, 126 skipped (budget out of the method's range), 456 runs: 0 finished" in dry_run
    # Prompt tuning's 128 vectors stop at 98,304 parameters: out of the data axis at 0.603 % (6 shares x 3 seeds
    # x 2 tasks), on the budget axis at 0.0191 % only.
    assert "skipped 36 x prompt trains 768-98,304 parameters, not 0.603%" in dry_run
    assert re.search(r"caption\s+prompt\s+3\s+1\s+1\s+3", dry_run)
    assert re.search(r"vqa\s+lora\s+33\s+6\s+6\s+3", dry_run)  # 6 budgets on the budget axis, the data axis's 6 shares
    assert "caption data: yerevann/coco-karpathy (a Hub id: fetched when the runs start, not read here)" in dry_run


def test_budgets_are_solved_on_blip_base_built_empty_from_its_written_out_config(dry_run):
    model = independent_model()
    total = sum(p.numel() for p in model.parameters())
    assert total == BLIP_BASE_PARAMS
    assert f"base model Salesforce/blip-image-captioning-base: {total:,} parameters" in dry_run
    assert "training/model/blip_base.py writes it out (the Hub id is not in the local cache)" in dry_run
    # LoRA on the text decoder: rank x (in + out) of each self- and cross-attention query and value projection.
    targets = re.compile(r"text_decoder\.bert\.encoder\.layer\.\d+\.(attention|crossattention)\.self\.(query|value)")
    per_rank = sum(m.in_features + m.out_features for name, m in model.named_modules() if targets.fullmatch(name))
    budget = round(total * 0.603 / 100)
    rank = round(budget / per_rank)
    assert (rank, per_rank) == (18, 73_728)
    assert f"0.603% = {budget:,} (text): " in dry_run
    assert f"lora: rank {rank} = {rank * per_rank:,}" in dry_run


def test_the_gpu_estimate_comes_from_the_architectures_flops(dry_run):
    config = blip_base_config(*HUB_SPECIAL_TOKENS)
    flops = forward_flops(config)
    # ViT-B/16 at 384 px: 577 tokens, 12 layers of width 768 (MLP 3072), and the patch embedding.
    layer = 2 * 577 * (4 * 768**2 + 2 * 768 * 3072) + 4 * 577**2 * 768
    assert flops.vision == 12 * layer + 2 * 576 * 3 * 16**2 * 768
    spec = load_spec(SWEEP)
    step_ms = 1000 * 3 * 32 * (flops.vision + flops.text(24)) / (989e12 * spec.gpu_estimate.utilisation)
    assert re.search(rf"full\s+H100 {step_ms:,.0f}, A100 ", dry_run)
    assert "GPU estimate from FLOPs (not measured): H100, A100, A10G, T4 at 35% of their datasheet peaks" in dry_run
    assert re.search(r"the 456 runs to go at their epoch caps .*one GPU: H100 \d", dry_run)


def test_the_grid_keeps_the_paper_grids_protocol_and_budget_shares():
    blip, paper = load_spec(SWEEP), load_spec(REPO_ROOT / "sweeps" / "paper.yaml")
    assert (blip.methods, blip.seeds, blip.data_axis[1]) == (paper.methods, paper.seeds, paper.data_axis[1])
    assert {k: blip.settings[k] for k in ("batch_size", "towers", "patience")} == {
        k: paper.settings[k] for k in ("batch_size", "towers", "patience")
    }
    assert blip.require_tuned_lr and blip.results != paper.results
    embedded = count_base_params(meta_model(load_base_config(None)))  # as the budget solver counts the model
    shares = [b.value for b in blip.budget_axis[1]["*"]]
    expected = [float(f"{100 * b.value / embedded:.3g}") for b in paper.budget_axis[1]["*"]]
    assert shares == expected
    assert blip.data_axis[0].value == float(f"{100 * paper.data_axis[0].value / embedded:.3g}")


def test_a_sweeps_own_learning_rate_table_goes_to_ray_nodes_by_its_absolute_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLPEFT_LR_TABLE", "results/blip-base/lr.csv")
    env = ray_task_options(8, 1)["runtime_env"]["env_vars"]
    assert env["VLPEFT_LR_TABLE"] == str(tmp_path / "results" / "blip-base" / "lr.csv")
