"""What the project knows about each method and task, as plain data: the one list every part reads.

Torch-free, so the web process, the report, the sweeps and the bench can read it without loading a model.
The implementations (`training.methods`) are looked up by the same names; a test checks that every list of
methods anywhere in the code agrees with this one. Adding a method is one module in `training/methods/`,
one entry here and one row in the methods' test table.
"""

from __future__ import annotations

from dataclasses import dataclass

BASELINE, EMBEDDING, LAYER = "baseline", "embedding composition", "layer composition"


@dataclass(frozen=True)
class MethodInfo:
    name: str  # what the CLI, the sweep files and the tables call it
    label: str  # what a person reads
    family: str  # BASELINE, EMBEDDING or LAYER
    knob: str | None  # what the budget solver sets (None: the method has no knob)
    takes_budget: bool  # False: no knob, the budget does not set the count (the baselines, fixed-count methods)
    default_lr: float | None  # before `python -m training tune` has found one on validation (None: no training)
    colour: str  # the same colour in the app's plots and the report's figures
    summary: str  # one line for the Train tab
    fixed_towers: str | None = None  # "both" or "none" when the method ignores the towers setting
    peft_format: bool = False  # its weights are peft's own tuner layers: a run exports for PeftModel.from_pretrained


CATALOG: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            "zero-shot",
            "Zero-shot (baseline: no training)",
            BASELINE,
            None,
            False,
            None,
            "#111111",
            "No training: the pre-trained model as it is, the reference every method must beat.",
            "none",
        ),
        MethodInfo(
            "full",
            "Full fine-tuning (baseline)",
            BASELINE,
            None,
            False,
            1e-4,
            "#7f7f7f",
            "Every weight is trained: the quality ceiling, at the cost of a full copy of the model per task.",
            "both",
        ),
        MethodInfo(
            "prompt",
            "Prompt tuning",
            EMBEDDING,
            "prompt length",
            True,
            3e-2,
            "#d62728",
            "Learns a few input vectors placed before the text (and image patches); the paper found it the "
            "weakest and least efficient family.",
        ),
        MethodInfo(
            "prefix",
            "Prefix tuning",
            EMBEDDING,
            "prefix length",
            True,
            1e-2,
            "#ff7f0e",
            "Learns keys and values that every attention layer attends to, like a virtual context; the "
            "paper found embedding composition behind LoRA and adapters.",
        ),
        MethodInfo(
            "lora",
            "LoRA",
            LAYER,
            "rank",
            True,
            6e-3,
            "#1f77b4",
            "Adds a trainable low-rank update to each attention projection; layer composition, which the "
            "paper found best in quality and efficiency.",
            peft_format=True,
        ),
        MethodInfo(
            "serial-adapter",
            "Serial adapter",
            LAYER,
            "bottleneck width",
            True,
            6e-3,
            "#2ca02c",
            "Small bottleneck layers inserted after attention and feed-forward blocks; layer composition, "
            "which the paper found best in quality and efficiency.",
        ),
        MethodInfo(
            "parallel-adapter",
            "Parallel adapter",
            LAYER,
            "bottleneck width",
            True,
            6e-3,
            "#17becf",
            "A scaled bottleneck running beside each feed-forward block (He et al. 2022); layer "
            "composition, which the paper found best in quality and efficiency.",
        ),
        MethodInfo(
            "ia3",
            "(IA)³",
            LAYER,
            None,
            False,
            1e-1,
            "#9467bd",
            "Learns vectors that rescale attention keys and values and the feed-forward activations (Liu et "
            "al. 2022); no knob: a fixed, very small count; layer composition.",
            peft_format=True,
        ),
        MethodInfo(
            "dora",
            "DoRA",
            LAYER,
            "rank",
            True,
            6e-3,
            "#8c564b",
            "LoRA split into a learned magnitude and a low-rank direction update of each attention "
            "projection (Liu et al. 2024); layer composition.",
            peft_format=True,
        ),
        MethodInfo(
            "loha",
            "LoHa",
            LAYER,
            "rank",
            True,
            6e-3,
            "#e377c2",
            "A Hadamard product of two low-rank updates of each attention projection (Hyeon-Woo et al. 2022): "
            "a higher-rank change than LoRA's for the same rank; layer composition, not in the paper.",
            peft_format=True,
        ),
    )
}

METHOD_NAMES = tuple(CATALOG)
PEFT_METHODS = tuple(name for name, info in CATALOG.items() if info.family != BASELINE)
NO_BUDGET_METHODS = tuple(name for name, info in CATALOG.items() if not info.takes_budget)
FAMILY = {name: info.family for name, info in CATALOG.items()}
METHOD_LABELS = {name: info.label for name, info in CATALOG.items()}
METHOD_COLOURS = {name: info.colour for name, info in CATALOG.items()}

TASKS = ("caption", "vqa")
TASK_LABELS = {"caption": "Image captioning", "vqa": "Visual question answering"}
MAIN_METRIC = {"caption": "CIDEr-D", "vqa": "accuracy"}
METRIC_UNIT = {"caption": "CIDEr-D", "vqa": "accuracy points"}


def trained_towers(method: str, towers: str | None) -> str | None:
    """The towers a run of `method` trains: its setting, unless the method fixes them (None: no tower)."""
    fixed = CATALOG[method].fixed_towers
    if fixed is None:
        return towers
    return None if fixed == "none" else fixed
