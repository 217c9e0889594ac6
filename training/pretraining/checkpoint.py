"""Pre-training's resumable state: a pre-training of about two hours survives a stopped or killed process.

Saved every few hundred steps into `OUT/pretrain-state/`: the trained tensors (model and both vision heads), the
optimizer's moments and torch's random state as safetensors; the step, the batch sampler's random state, the
history and the time spent so far as JSON; never a pickle. Each save writes new files and renames them into place,
so a process killed mid-save leaves the previous state. A resumed pre-training draws the same batches and learning
rates as one that was never stopped, so it ends with the same weights (tests/test_embedded.py).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training.run import resume

FOLDER = "pretrain-state"
TENSORS = "state.safetensors"
FIELDS = "state.json"


@dataclass
class PretrainState:
    """Where a pre-training stands after `step` optimizer steps, besides its tensors."""

    step: int
    config: dict
    sampler: dict  # numpy Generator.bit_generator.state
    history: list[dict]
    seconds: float  # time spent before this process, rendering included


def exists(out_dir: str | Path) -> bool:
    return (Path(out_dir) / FOLDER / FIELDS).is_file()


def save(
    out_dir: str | Path, state: PretrainState, trained: list[torch.Tensor], optimizer: torch.optim.Optimizer
) -> None:
    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"weight.{i}": t.detach().cpu().contiguous() for i, t in enumerate(trained)}
    tensors |= resume.optimizer_tensors(optimizer)
    tensors["torch_rng"] = torch.get_rng_state()
    # The tensors first, the fields last: a state is complete once its fields name the step.
    save_file(tensors, str(folder / f".{TENSORS}.tmp"))
    os.replace(folder / f".{TENSORS}.tmp", folder / TENSORS)
    (folder / f".{FIELDS}.tmp").write_text(json.dumps(state.__dict__), encoding="utf-8")
    os.replace(folder / f".{FIELDS}.tmp", folder / FIELDS)


def load(
    out_dir: str | Path, config: dict, trained: list[torch.Tensor], optimizer: torch.optim.Optimizer
) -> PretrainState:
    """Put the saved tensors and moments back in place and return the state, if it is this config's."""
    folder = Path(out_dir) / FOLDER
    state = PretrainState(**read_fields(out_dir))
    if state.config != config:
        changed = sorted(k for k in config if state.config.get(k) != config[k])
        raise ValueError(
            f"{folder} holds a pre-training with other settings ({', '.join(changed)} differ): resume it with "
            f"the same options, or remove {folder} (or use another --out) to start afresh."
        )
    tensors = load_file(str(folder / TENSORS))
    with torch.no_grad():
        for i, tensor in enumerate(trained):
            tensor.copy_(tensors[f"weight.{i}"])
    resume.restore_optimizer(optimizer, tensors)
    torch.set_rng_state(tensors["torch_rng"])
    return state


def read_fields(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / FOLDER / FIELDS).read_text(encoding="utf-8"))


def load_weights(out_dir: str | Path, tensors: list[torch.Tensor]) -> None:
    """Copy the first len(tensors) saved weights into tensors (the model's come before the heads')."""
    saved = load_file(str(Path(out_dir) / FOLDER / TENSORS))
    with torch.no_grad():
        for i, tensor in enumerate(tensors):
            tensor.copy_(saved[f"weight.{i}"])


def discard(out_dir: str | Path) -> None:
    """Remove the state once the model is saved: nothing resumes a finished pre-training."""
    shutil.rmtree(Path(out_dir) / FOLDER, ignore_errors=True)
