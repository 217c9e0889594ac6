"""A run's download as others use it: a LoRA, DoRA or IA3 adapter in peft's format that
`PeftModel.from_pretrained` loads with the outputs the app gives, and a README whose Python runs as written."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import zipfile

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import BlipForConditionalGeneration

from app.services import Services
from app.settings import Settings
from tests.conftest import draw_tiny
from tests.method_table import PEFT_FORMAT
from tests.test_jobs import wait_for
from training.errors import UserError
from training.jobs.limits import JobLimits
from training.run.config import RunConfig
from training.run.export import exports_to_peft, run_readme, write_peft_adapter
from training.run.tasks import Encoder, prompt_text
from training.run.trainer import load_run, train

LIMITS = JobLimits(max_queued=5, max_queued_per_submitter=5, max_runtime_s=0, max_concurrent=1, stop_grace_s=5)


def test_the_readme_of_a_method_peft_lacks_says_how_to_load_it_with_this_package(tmp_path):
    config = RunConfig(task="vqa", method="prefix", base_model="Salesforce/blip-image-captioning-base")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "config": config.to_dict(),
                "trainable_params": 15360,
                "trainable_percent": 0.515,
                "knob": "prefix length",
                "knob_value": 6,
                "total_steps": 40,
            }
        )
    )
    (tmp_path / "eval.json").write_text(
        json.dumps({"metrics": {"accuracy": 0.4125, "num_examples": 80, "eval_s": 3.2}})
    )
    text = run_readme(tmp_path, "20261201-120000-abcdef", "finished")
    assert text.startswith("# prefix for visual question answering on the embedded scenes (run 20261201-120000-abcdef)")
    assert "with the data of **the embedded scenes** (VL-PEFT Lab's embedded scenes)" in text
    assert "15,360 trainable parameters (0.515 % of the base), prefix length 6" in text
    assert "**Test scores** (on 80 test examples): accuracy 0.4125." in text
    assert "Comparer('Salesforce/blip-image-captioning-base')" in text and "question=" in text
    assert "peft has no `prefix` method" in text and "PeftModel" not in text


@pytest.mark.parametrize("method", PEFT_FORMAT)
def test_every_peft_format_methods_export_loads_in_peft_with_the_runs_outputs(
    tmp_path, method, tiny_model_dir, tiny_caption_dataset
):
    run_dir = tmp_path / method
    config = RunConfig(
        task="caption",
        method=method,
        towers="both",
        budget="6144",
        base_model=str(tiny_model_dir),
        dataset=str(tiny_caption_dataset),
        max_steps=1,
        batch_size=4,
        eval_limit=2,
    )
    train(config, run_dir, install_signals=False)
    info = json.loads((run_dir / "config.json").read_text())
    assert exports_to_peft(info)
    # Weights far from their start (B = 0, IA3 vectors at one, DoRA magnitudes at the row norms), so a key
    # that peft read wrongly, or not at all, changes the output.
    weights = load_file(str(run_dir / "weights.safetensors"))
    generator = torch.Generator().manual_seed(0)
    weights = {k: v + 0.3 * torch.randn(v.shape, generator=generator) for k, v in weights.items()}
    save_file(weights, str(run_dir / "weights.safetensors"))

    folder = write_peft_adapter(run_dir, tmp_path / "export")
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config.get("use_dora", False) == (method == "dora")
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)

    vl, adapter, _ = load_run(run_dir)
    vl.set_active(adapter)
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    input_ids, mask, _ = encoder.training_batch([(prompt_text("caption"), "a red circle")] * 2)
    pixels = torch.rand(2, 3, 32, 32, generator=generator)
    with torch.no_grad():
        ours = vl.text_logits(vl.encode_images(pixels), input_ids, mask)
        base = BlipForConditionalGeneration.from_pretrained(str(tiny_model_dir)).eval()
        plain = base(pixel_values=pixels, input_ids=input_ids, attention_mask=mask).logits
        peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
        theirs = peft_model(pixel_values=pixels, input_ids=input_ids, attention_mask=mask).logits
    assert (ours - plain).abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_a_method_peft_lacks_or_weights_of_another_model_do_not_export(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text(
        json.dumps({"config": RunConfig(method="prefix", base_model=str(tiny_model_dir)).to_dict(), "knob_value": 4})
    )
    save_file({"x": torch.zeros(1)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(UserError, match="LoRA, .*IA.*DoRA"):
        write_peft_adapter(tmp_path, tmp_path / "out")
    lora = RunConfig(method="lora", towers="text", base_model=str(tiny_model_dir))
    (tmp_path / "config.json").write_text(json.dumps({"config": lora.to_dict(), "knob_value": 2}))
    with pytest.raises(UserError, match="do not match the lora adapter"):
        write_peft_adapter(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_lora_runs_zip_loads_with_peft_and_its_readme_gives_the_apps_output(
    tmp_path, monkeypatch, tiny_model_dir, tiny_caption_dataset
):
    settings = Settings(
        base_model=str(tiny_model_dir),
        datasets={"caption": str(tiny_caption_dataset), "vqa": None},
        home=tmp_path / "home",
        limits=LIMITS,
    )
    services = Services(settings)
    # 768 parameters per rank on the tiny BLIP: rank 8, above rank 4 where the scaling is rank-stabilised.
    config = RunConfig(
        task="caption",
        method="lora",
        budget="6144",
        base_model=str(tiny_model_dir),
        dataset=str(tiny_caption_dataset),
        max_steps=6,
        batch_size=4,
        eval_limit=6,
        patience=0,  # keep the trained weights: on the tiny model no validation beats step 0's
    )
    job_id = services.submit(config, "ann")
    wait_for(lambda: services.store.get(job_id).is_final, timeout=240, step=0.2, tick=services.supervisor.run_once)
    assert services.store.get(job_id).state == "finished", services.store.get(job_id).log_tail

    with zipfile.ZipFile(services.zip_run(job_id)) as archive:
        names = {name.removeprefix(f"{job_id}/") for name in archive.namelist()}
        archive.extractall(tmp_path / "download")
    assert names == {
        "weights.safetensors",
        "config.json",
        "log.txt",
        "metrics.jsonl",
        "eval.json",
        "predictions.jsonl",
        "README.md",
        "peft/adapter_config.json",
        "peft/adapter_model.safetensors",
    }
    folder = tmp_path / "download" / job_id
    info = json.loads((folder / "config.json").read_text())
    adapter_config = json.loads((folder / "peft" / "adapter_config.json").read_text())
    assert info["knob_value"] == adapter_config["r"] == 8
    assert adapter_config["lora_alpha"] / adapter_config["r"] == pytest.approx(2 * math.sqrt(4 / 8))

    # Teacher-forced logits: the app's model with the run's adapter, and peft's model from the export.
    vl, adapter, _ = load_run(folder)
    vl.set_active(adapter)
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    input_ids, mask, _ = encoder.training_batch([(prompt_text("caption"), "a red circle")] * 2)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ours = vl.text_logits(vl.encode_images(pixels), input_ids, mask)
        base = BlipForConditionalGeneration.from_pretrained(str(tiny_model_dir)).eval()
        plain = base(pixel_values=pixels, input_ids=input_ids, attention_mask=mask).logits
        peft_model = PeftModel.from_pretrained(base, str(folder / "peft")).eval()
        theirs = peft_model(pixel_values=pixels, input_ids=input_ids, attention_mask=mask).logits
    assert (ours - plain).abs().max() > 1e-4  # the adapter does something, so the match below means something
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)

    # The README's two snippets, run as written from the download folder, print what the app's Compare shows.
    draw_tiny("red", "circle").save(tmp_path / "download" / "picture.png")
    column = services.compare("caption", [job_id], image_path=str(tmp_path / "download" / "picture.png")).columns[1]
    snippets = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)
    assert len(snippets) == 2
    monkeypatch.chdir(tmp_path / "download")
    printed = []
    for code in snippets:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
        printed.append(out.getvalue().strip())
    assert printed == [column.output, f"{prompt_text('caption')} {column.output}".strip()]
    services.close()
