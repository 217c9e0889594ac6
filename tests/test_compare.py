"""Side-by-side compare: zero-shot first, adapters swapped on one base, and clear errors for bad input."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.conftest import draw_tiny
from tests.method_table import KNOB
from training import compare as compare_module
from training.catalog import PEFT_METHODS
from training.compare import Comparer, GivenImage, answer, check_image
from training.data.examples import Example
from training.errors import UserError
from training.methods.vlmodel import VLModel
from training.model.base_model import load_base_model
from training.model.pixels import PixelCache
from training.run.config import RunConfig
from training.run.tasks import Encoder, prompt_text
from training.run.trainer import adapter_name, train


@pytest.fixture(scope="module")
def vqa_runs(tiny_model_dir, tiny_vqa_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for method in ("lora", "prefix", "full"):
        config = RunConfig(
            task="vqa",
            method=method,
            budget="2k",
            base_model=str(tiny_model_dir),
            dataset=str(tiny_vqa_dataset),
            max_steps=6,
            batch_size=8,
            lr=3e-2,
            eval_limit=4,
        )
        train(config, root / method, install_signals=False)
        dirs.append(root / method)
    return dirs


def test_compare_gives_zero_shot_then_one_column_per_run(tiny_model_dir, vqa_runs):
    comparer = Comparer(str(tiny_model_dir))
    columns = comparer.compare(
        draw_tiny("red", "square"), "vqa", vqa_runs, question="what color is the square ?", answers=["red"] * 10
    )
    assert [c.method for c in columns] == ["zero-shot", "lora", "prefix", "full"]
    assert all(isinstance(c.output, str) for c in columns)
    assert all("VQA accuracy" in c.sample_score for c in columns)
    assert columns[1].trainable_params > 0 and columns[1].data_fraction == 1.0 and "accuracy" in columns[1].test_score
    base = comparer.base
    # PEFT runs share the one base; full has its own model.
    assert set(base.adapters) == {adapter_name(vqa_runs[0]), adapter_name(vqa_runs[1])}
    again = comparer.compare(draw_tiny("red", "square"), "vqa", vqa_runs, question="what color is the square ?")
    assert [c.output for c in again] == [c.output for c in columns] and comparer.base is base


def test_compare_of_one_run_equals_its_output_alone(tiny_model_dir, vqa_runs):
    together = Comparer(str(tiny_model_dir)).compare(
        draw_tiny("blue", "circle"), "vqa", vqa_runs, question="what shape is the blue shape ?"
    )
    for index, run in enumerate(vqa_runs, start=1):
        alone = Comparer(str(tiny_model_dir)).compare(
            draw_tiny("blue", "circle"), "vqa", [run], question="what shape is the blue shape ?"
        )
        assert alone[1].output == together[index].output


def test_runs_of_one_name_in_two_sweeps_and_names_with_dots_compare_as_themselves(tiny_model_dir, vqa_runs, tmp_path):
    # A sweep's run folders are named like vqa__lora__b2k__f0.25__s0, and two sweeps hold runs of the same name.
    first, second = tmp_path / "a" / "vqa__lora__f0.25__s0", tmp_path / "b" / "vqa__lora__f0.25__s0"
    shutil.copytree(vqa_runs[0], first)
    shutil.copytree(vqa_runs[0], second)
    weights = load_file(str(second / "weights.safetensors"))
    save_file({k: v * 3 for k, v in weights.items()}, str(second / "weights.safetensors"))
    question = "what color is the square ?"
    comparer = Comparer(str(tiny_model_dir))
    together = comparer.compare(draw_tiny("red", "square"), "vqa", [first, second], question=question)
    assert len(comparer.base.adapters) == 2 and adapter_name(first) != adapter_name(second)
    for index, run in enumerate((first, second), start=1):
        alone = Comparer(str(tiny_model_dir)).compare(draw_tiny("red", "square"), "vqa", [run], question=question)
        assert alone[1].output == together[index].output


@pytest.mark.parametrize(("question", "message"), [("", "Type a question"), ("x" * 2000, "keep it under")])
def test_bad_questions_are_explained(tiny_model_dir, question, message):
    with pytest.raises(UserError, match=message):
        Comparer(str(tiny_model_dir)).compare(draw_tiny("red", "square"), "vqa", [], question=question)


def test_bad_images_are_explained(tmp_path):
    (tmp_path / "text.png").write_text("not an image at all")
    with pytest.raises(UserError, match="^The file 'text.png' is not a readable image"):
        check_image(tmp_path / "text.png")
    (tmp_path / "figure.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    with pytest.raises(UserError, match="^The file 'figure.eps' is not a readable image"):  # not run by Ghostscript
        check_image(tmp_path / "figure.eps")
    Image.new("1", (10000, 10000)).save(tmp_path / "huge.png")  # 100 megapixels in a small file
    with pytest.raises(UserError, match="too large"):
        check_image(tmp_path / "huge.png")
    with pytest.raises(UserError, match="Pick an image"):
        check_image(None)
    assert check_image(draw_tiny("red", "square").convert("L")).mode == "RGB"


def test_columns_in_turn_with_shared_image_features_equal_each_adapter_decoding_alone(tiny_model_dir):
    """Compare answers each column with its adapter active, reusing the base's image features for adapters
    that leave the vision tower untouched: each gives exactly the text it gives alone."""
    vl = VLModel(load_base_model(str(tiny_model_dir)))
    spec = {name: (name, "both", KNOB[name]) for name in PEFT_METHODS}
    spec |= {f"{name}-text": (name, "text", KNOB[name]) for name in PEFT_METHODS}
    generator = torch.Generator().manual_seed(0)
    for name, (method, towers, knob) in spec.items():
        vl.attach(method, name, towers, knob)
        with torch.no_grad():
            for param in vl.adapters[name].parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    question = "what color is the square ?"
    pixels = PixelCache(vl.base.processor)([Example(GivenImage(draw_tiny("red", "square")), "q", question=question)])
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    prompt = encoder.prompt_ids(prompt_text("vqa", question))
    with torch.no_grad():
        features = vl.encode_images(pixels)
    encoded = []
    vl.encode_images = lambda pixel_values, encode=vl.encode_images: (
        encoded.append(vl.ctx.active) or encode(pixel_values)
    )
    answered = {name: answer(vl, name, encoder, "vqa", prompt, pixels, 8, features).text for name in [None, *spec]}
    # the text-only ones share the base's features
    assert encoded == list(PEFT_METHODS)
    alone = {}
    for name in [None, *spec]:
        vl.set_active(name)
        with torch.no_grad():
            alone[name] = encoder.decode("vqa", vl.generate(vl.encode_images(pixels), [prompt], 8)[0])
    assert answered == alone
    assert len(set(alone.values())) > 2  # the adapters really answer differently


def test_an_answer_cut_by_the_token_limit_is_flagged_truncated(tiny_model_dir):
    vl = VLModel(load_base_model(str(tiny_model_dir)))
    pixels = PixelCache(vl.base.processor)([Example(GivenImage(draw_tiny("red", "square")), "q")])
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    prompt = encoder.prompt_ids(prompt_text("caption", ""))
    cut = answer(vl, None, encoder, "caption", prompt, pixels, 5)  # the untrained tiny model never says [SEP]
    assert cut.truncated and cut.text
    with torch.no_grad():
        vl.model.text_decoder.cls.predictions.bias[vl.sep_id] += 1e4  # now it ends at once, by itself
    ended = answer(vl, None, encoder, "caption", prompt, pixels, 5)
    assert not ended.truncated and ended.text == ""


def test_compare_keeps_a_bounded_set_of_adapters_resident_and_detaches_the_rest(tiny_model_dir, vqa_runs, monkeypatch):
    monkeypatch.setattr(compare_module, "MAX_RESIDENT_ADAPTERS", 1)
    comparer = Comparer(str(tiny_model_dir))
    base = comparer.base
    hooks = sum(len(m._forward_hooks) for m in base.model.modules())
    parameters = sum(p.numel() for p in base.model.parameters())
    lora, prefix, _ = vqa_runs
    question = "what color is the square ?"
    first = comparer.compare(draw_tiny("red", "square"), "vqa", [lora, prefix], question=question)
    assert set(base.adapters) == {adapter_name(prefix)}  # LoRA, used first, was detached when prefix came
    assert sum(len(m._forward_hooks) for m in base.model.modules()) == hooks  # LoRA's hooks went with it
    prefix_size = sum(p.numel() for p in base.adapters[adapter_name(prefix)].parameters())
    assert sum(p.numel() for p in base.model.parameters()) == parameters + prefix_size
    again = comparer.compare(draw_tiny("red", "square"), "vqa", [lora, prefix], question=question)
    assert [c.output for c in again] == [c.output for c in first]  # reloaded as it was
