"""A run in forms others can use: LoRA weights in peft's format, and a README that says what the adapter is,
how it scored and how to load it.

peft's format: `adapter_config.json` (a `LoraConfig`) and `adapter_model.safetensors` whose keys are the
module paths under `base_model.model.`, without the adapter name. `training.methods.lora` injects its layers
with peft and the same `lora_alpha`, so the scaling peft computes from the exported config (alpha / r) is the
one the run trained with, rank-stabilised above rank 4 included.
"""

from __future__ import annotations

from pathlib import Path

from training.run import runs
from training.run.config import RunConfig
from training.study.report import MAIN_METRIC

PEFT_FOLDER = "peft"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
TASK_NAMES = {"caption": "image captioning", "vqa": "visual question answering"}


def is_lora_run(info: dict) -> bool:
    """Whether a run's config.json (as read) is a LoRA run's, whose adapter peft can load."""
    return (info.get("config") or {}).get("method") == "lora" and info.get("knob_value") is not None


def write_peft_adapter(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a LoRA run's adapter in peft's format into `out_dir`, for `PeftModel.from_pretrained(base, out_dir)`."""
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    from training.errors import UserError
    from training.methods.lora import lora_alpha, lora_targets

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = runs.read_json(run_dir / runs.CONFIG) or {}
    if not is_lora_run(info) or not (run_dir / runs.WEIGHTS).is_file():
        raise UserError(f"{run_dir} is not a LoRA run with weights: only LoRA adapters export to peft's format.")
    config = RunConfig.from_dict(info["config"])
    rank = int(info["knob_value"])
    peft_config = LoraConfig(
        r=rank,
        lora_alpha=lora_alpha(rank),
        lora_dropout=0.0,
        bias="none",
        target_modules=lora_targets(config.towers),
        base_model_name_or_path=config.base_model or _embedded_model(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(out_dir))
    weights = load_file(str(run_dir / runs.WEIGHTS))
    save_file({PEFT_PREFIX + key: tensor for key, tensor in weights.items()}, str(out_dir / PEFT_WEIGHTS))
    return out_dir


def run_readme(run_dir: str | Path, run_id: str, state: str) -> str:
    """README.md of a run's download: what the adapter is, its scores, and the Python that loads it."""
    run_dir = Path(run_dir)
    info = runs.read_json(run_dir / runs.CONFIG) or {}
    config = info.get("config") or {}
    metrics = (runs.read_json(run_dir / runs.EVAL) or {}).get("metrics") or {}
    method, task, base = config.get("method", "?"), config.get("task", "?"), config.get("base_model")
    on = f"`{base}`" if base else "the embedded scene-BLIP (`training.paths.DEFAULT_MODEL_DIR` of VL-PEFT Lab)"
    what = f"A `{method}` adapter trained by VL-PEFT Lab for {TASK_NAMES.get(task, task)} on {on}; the run {state}."
    if info.get("trainable_params") is not None:
        what += (
            f" {info['trainable_params']:,} trainable parameters ({info.get('trainable_percent', 0):.3g} % of "
            f"the base), {info.get('knob') or 'knob'} {info.get('knob_value')}, towers {config.get('towers')}, "
            f"{config.get('data_fraction', 1) * 100:g} % of the training data, seed {config.get('seed')}, "
            f"{info.get('total_steps')} steps."
        )
    lines = [f"# {run_id}: {method} for {TASK_NAMES.get(task, task)}", "", what, ""]
    scores = {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "num_examples" and not k.endswith("_s")
    }
    if scores:
        ordered = sorted(scores, key=lambda k: k != MAIN_METRIC.get(task))
        lines.append(
            f"**Test scores** (on {metrics.get('num_examples', '?')} test examples): "
            + ", ".join(f"{k} {scores[k]:.4g}" for k in ordered)
            + "."
        )
    else:
        lines.append("**Test scores:** none (the run was not evaluated).")
    peft_files = f", and `{PEFT_FOLDER}/` (the same adapter in peft's format)" if method == "lora" else ""
    lines += [
        "",
        "Files: `weights.safetensors` (the method's parameters), `config.json` (the resolved config and "
        "the command that reproduces the run), `log.txt`, `metrics.jsonl` (the training curve), `eval.json` "
        f"and `predictions.jsonl` (the test outputs the scores come from){peft_files}.",
        "",
    ]
    question = ', question="what colour is the circle?"' if task == "vqa" else ""
    new_tokens = config.get("max_new_tokens") or RunConfig().max_new_tokens
    lines += [
        "## Load it with VL-PEFT Lab",
        "",
        "With VL-PEFT Lab installed (`pip install .` in its repository), from the folder that holds this one:",
        "",
        "```python",
        "from PIL import Image",
        "",
        "from training.model.compare import Comparer",
        "",
        f'columns = Comparer({repr(base) if base else ""}).compare(Image.open("picture.png"), {task!r}, '
        f"[{run_id!r}]{question}, max_new_tokens={new_tokens})",
        "print(columns[1].output)  # columns[0] is the base model without the adapter",
        "```",
        "",
    ]
    if method != "lora":
        return "\n".join([*lines, f"peft has no `{method}` method: load it with VL-PEFT Lab as above.", ""])
    text = '"a picture of"' if task == "caption" else '"question: what colour is the circle? answer:"'
    lines += [
        "## Load it with peft",
        "",
        "The adapter in `peft/` loads onto the base model with peft alone. Give the prompt the run was trained "
        "with; the output repeats it before the new words.",
        "",
        "```python",
        "from peft import PeftModel",
        "from PIL import Image",
        "from transformers import BlipForConditionalGeneration, BlipProcessor",
        "",
        f"base = {base!r}" if base else "from training.paths import DEFAULT_MODEL_DIR as base",
        "processor = BlipProcessor.from_pretrained(base)",
        f"model = PeftModel.from_pretrained(BlipForConditionalGeneration.from_pretrained(base), "
        f'"{run_id}/{PEFT_FOLDER}").eval()',
        f'inputs = processor(images=Image.open("picture.png").convert("RGB"), text={text}, return_tensors="pt")',
        f"tokens = model.generate(**inputs, max_new_tokens={new_tokens})",
        "print(processor.decode(tokens[0], skip_special_tokens=True))",
        "```",
        "",
    ]
    return "\n".join(lines)


def _embedded_model() -> str:
    from training.paths import DEFAULT_MODEL_DIR

    return str(DEFAULT_MODEL_DIR)
