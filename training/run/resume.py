"""A run's resumable state: what the training loop needs to go on exactly where it was after its process died.

Saved after every validation and when a stop is asked for, into `RUN_DIR/resume/`: the tensors (the trained and
stored weights, the best checkpoint so far, the optimizer's moments, torch's random state) as safetensors, and
the rest (step, data order and its random state, the validation curve and its best) as JSON; never a pickle.
Each save writes new files and renames them into place, so a process killed mid-save leaves the previous state.
A run resumed from the state trains the steps after it with the same batches, learning rates and random draws
as a run that was never interrupted, so it ends with the same weights (tests/test_resume.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training.run import runs
from training.run.runs import ValidationRecord

FOLDER, FIELDS = runs.RESUME, runs.RESUME_FIELDS
TENSORS = "state.safetensors"
saved_step = runs.saved_step


@dataclasses.dataclass
class LoopState:
    """Everything of a training loop at the end of `step` that is not the model itself."""

    step: int
    epoch: int
    order: list[int]
    target: int
    reason: str
    best: float | None
    best_step: int
    since_best: int
    curve: list[ValidationRecord]
    python_rng: list  # random.Random.getstate(), as lists


def save(
    run_dir: str | Path,
    state: LoopState,
    weights: list[torch.Tensor],
    best: list[torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
) -> None:
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"weight.{i}": t.detach().cpu().contiguous() for i, t in enumerate(weights)}
    if best is not None:
        tensors |= {f"best.{i}": t.detach().cpu().contiguous() for i, t in enumerate(best)}
    tensors |= optimizer_tensors(optimizer)
    tensors["torch_rng"] = torch.get_rng_state()
    fields = dataclasses.asdict(state)
    # The tensors first, the fields last: a state is complete once its fields name the step.
    save_file(tensors, str(folder / f".{TENSORS}.tmp"))
    os.replace(folder / f".{TENSORS}.tmp", folder / TENSORS)
    (folder / f".{FIELDS}.tmp").write_text(json.dumps(fields), encoding="utf-8")
    os.replace(folder / f".{FIELDS}.tmp", folder / FIELDS)


def load(
    run_dir: str | Path, weights: list[torch.Tensor], optimizer: torch.optim.Optimizer
) -> tuple[LoopState, list[torch.Tensor] | None]:
    """Put the saved weights and optimizer moments back in place; (the loop's state, the best checkpoint)."""
    folder = Path(run_dir) / FOLDER
    fields = json.loads((folder / FIELDS).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / TENSORS))
    if sum(1 for key in tensors if key.startswith("weight.")) != len(weights):
        raise ValueError(f"{folder} holds the state of another method or budget: it cannot resume this run.")
    with torch.no_grad():
        for i, tensor in enumerate(weights):
            tensor.copy_(tensors[f"weight.{i}"])
    best = None
    if "best.0" in tensors:
        best = [tensors[f"best.{i}"].to(weights[i].device) for i in range(len(weights))]
    restore_optimizer(optimizer, tensors)
    torch.set_rng_state(tensors["torch_rng"])
    fields["curve"] = [ValidationRecord(**record) for record in fields["curve"]]
    return LoopState(**fields), best


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's moments as named tensors (`optimizer.<param index>.<name>`), for a safetensors file."""
    tensors = {}
    for index, moments in optimizer.state_dict()["state"].items():
        for key, value in moments.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Put the moments that optimizer_tensors saved back into optimizer (its parameter groups stay)."""
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})


def discard(run_dir: str | Path) -> None:
    """Remove a run's saved state (once it has finished, nothing resumes it)."""
    shutil.rmtree(Path(run_dir) / FOLDER, ignore_errors=True)


def python_rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def restore_python_rng(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def truncate_records(run_dir: str | Path, step: int) -> None:
    """Drop the training and validation records written after `step` (by the process that died later)."""
    for name in (runs.METRICS, runs.VALIDATION):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        kept = [row for row in runs.read_jsonl(path) if int(row.get("step", 0)) <= step]
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        os.replace(tmp, path)
