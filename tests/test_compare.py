"""Side-by-side compare: zero-shot first, adapters swapped on one base, and clear errors for bad input."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import draw_tiny
from training.compare import Comparer, check_image
from training.config import RunConfig
from training.errors import UserError
from training.trainer import train


@pytest.fixture(scope="module")
def vqa_runs(tiny_model_dir, tiny_vqa_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for method in ("lora", "prefix", "full"):
        config = RunConfig(task="vqa", method=method, budget="2k", base_model=str(tiny_model_dir),
                           dataset=str(tiny_vqa_dataset), max_steps=6, batch_size=8, lr=3e-2, eval_limit=4)  # fmt: skip
        train(config, root / method, install_signals=False)
        dirs.append(root / method)
    return dirs


def test_compare_gives_zero_shot_then_one_column_per_run(tiny_model_dir, vqa_runs):
    comparer = Comparer(str(tiny_model_dir))
    columns = comparer.compare(draw_tiny("red", "square"), "vqa", vqa_runs, question="what color is the square ?",
                               answers=["red"] * 10)  # fmt: skip
    assert [c.method for c in columns] == ["zero-shot", "lora", "prefix", "full"]
    assert all(isinstance(c.output, str) for c in columns)
    assert all("VQA accuracy" in c.sample_score for c in columns)
    assert columns[1].trainable_params > 0 and columns[1].data_fraction == 1.0 and "accuracy" in columns[1].test_score
    base = comparer.base
    assert set(base.adapters) == {"lora", "prefix"}  # PEFT runs share the one base; full has its own model
    again = comparer.compare(draw_tiny("red", "square"), "vqa", vqa_runs, question="what color is the square ?")
    assert [c.output for c in again] == [c.output for c in columns] and comparer.base is base


def test_compare_of_one_run_equals_its_output_alone(tiny_model_dir, vqa_runs):
    together = Comparer(str(tiny_model_dir)).compare(draw_tiny("blue", "circle"), "vqa", vqa_runs,
                                                     question="what shape is the blue shape ?")  # fmt: skip
    for index, run in enumerate(vqa_runs, start=1):
        alone = Comparer(str(tiny_model_dir)).compare(draw_tiny("blue", "circle"), "vqa", [run],
                                                      question="what shape is the blue shape ?")  # fmt: skip
        assert alone[1].output == together[index].output


@pytest.mark.parametrize(("question", "message"), [("", "Type a question"), ("x" * 2000, "keep it under")])
def test_bad_questions_are_explained(tiny_model_dir, question, message):
    with pytest.raises(UserError, match=message):
        Comparer(str(tiny_model_dir)).compare(draw_tiny("red", "square"), "vqa", [], question=question)


def test_bad_images_are_explained(tmp_path):
    (tmp_path / "text.png").write_text("not an image at all")
    with pytest.raises(UserError, match="not an image"):
        check_image(tmp_path / "text.png")
    Image.new("1", (10000, 10000)).save(tmp_path / "huge.png")  # 100 megapixels in a small file
    with pytest.raises(UserError, match="too large"):
        check_image(tmp_path / "huge.png")
    with pytest.raises(UserError, match="Pick an image"):
        check_image(None)
    assert check_image(draw_tiny("red", "square").convert("L")).mode == "RGB"
