"""A run in forms others can use: the adapters of methods whose weights are peft's own tuner layers (LoRA,
DoRA, IA3: `peft_format` in the catalog) in peft's format, and a README that says what the adapter is, how it
scored and how to load it.

peft's format: `adapter_config.json` and `adapter_model.safetensors` whose keys are the module paths under
`base_model.model.`, without the adapter name. The config is the one the method injected its layers with
(for LoRA the same `lora_alpha`, so the scaling peft computes from it is the one the run trained with,
rank-stabilised above rank 4 included), read from the method attached to the base model built on the meta
device: no weight is loaded. The stored tensors must be exactly the keys peft saves for that config.
"""

from __future__ import annotations

from pathlib import Path

from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from training.catalog import CATALOG, MAIN_METRIC
from training.errors import UserError
from training.methods import METHODS, AdapterContext
from training.model.base_model import load_base_config, meta_model
from training.paths import DEFAULT_MODEL_DIR
from training.run import runs
from training.run.config import RunConfig

PEFT_FOLDER = "peft"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PEFT_ADAPTER = "default"  # the name PeftModel.from_pretrained gives the adapter it loads
TASK_NAMES = {"caption": "image captioning", "vqa": "visual question answering"}


def exports_to_peft(info: dict) -> bool:
    """Whether a run's config.json (as read) is that of a method whose adapter peft can load."""
    config = info.get("config") or {}
    method = CATALOG.get(config.get("method", ""))
    return method is not None and method.peft_format and (info.get("knob_value") is not None or not method.knob)


def write_peft_adapter(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a peft-format run's adapter into `out_dir`, for `PeftModel.from_pretrained(base, out_dir)`."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = runs.read_json(run_dir / runs.CONFIG) or {}
    if not exports_to_peft(info) or not (run_dir / runs.WEIGHTS).is_file():
        methods = ", ".join(info.label for info in CATALOG.values() if info.peft_format)
        raise UserError(f"{run_dir} is not a run with weights of a method peft has ({methods}): it cannot export.")
    config = RunConfig.from_dict(info["config"])
    base = config.base_model or _embedded_model()
    model = meta_model(load_base_config(base))
    METHODS[config.method](model, AdapterContext(), PEFT_ADAPTER, config.towers, info.get("knob_value"))
    peft_config = model.peft_config[PEFT_ADAPTER]
    peft_config.base_model_name_or_path = base
    peft_config.inference_mode = True
    expected = set(get_peft_model_state_dict(model, adapter_name=PEFT_ADAPTER))
    weights = load_file(str(run_dir / runs.WEIGHTS))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise UserError(
            f"{run_dir.name}'s weights do not match the {config.method} adapter peft would save on {base} "
            f"(missing {missing[:3]}, unexpected {extra[:3]}): was it trained on another base model?"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(out_dir))
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
    source = config.get("dataset")
    dataset = info.get("dataset_name") or (Path(source).name if source else "the embedded scenes")
    data = f"**{dataset}**" + (f" (`{source}`)" if source else " (VL-PEFT Lab's embedded scenes)")
    what = (
        f"A `{method}` adapter trained by VL-PEFT Lab for {TASK_NAMES.get(task, task)} on {on}, with the data of "
        f"{data}; the run {state}."
    )
    if info.get("trainable_params") is not None:
        what += (
            f" {info['trainable_params']:,} trainable parameters ({info.get('trainable_percent', 0):.3g} % of "
            f"the base), {info.get('knob') or 'knob'} {info.get('knob_value')}, towers {config.get('towers')}, "
            f"{config.get('data_fraction', 1) * 100:g} % of the training data, seed {config.get('seed')}, "
            f"{info.get('total_steps')} steps."
        )
    lines = [f"# {method} for {TASK_NAMES.get(task, task)} on {dataset} (run {run_id})", "", what, ""]
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
    peft = exports_to_peft(info)
    peft_files = f", and `{PEFT_FOLDER}/` (the same adapter in peft's format)" if peft else ""
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
        "from training.compare import Comparer",
        "",
        f'columns = Comparer({repr(base) if base else ""}).compare(Image.open("picture.png"), {task!r}, '
        f"[{run_id!r}]{question}, max_new_tokens={new_tokens})",
        "print(columns[1].output)  # columns[0] is the base model without the adapter",
        "```",
        "",
    ]
    if not peft:
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
        # peft alone: no import of VL-PEFT Lab; the embedded model is the folder assets/scene-blip of its checkout
        f"base = {base!r}" if base else 'base = "assets/scene-blip"  # the embedded model, in a VL-PEFT Lab checkout',
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
    return str(DEFAULT_MODEL_DIR)
