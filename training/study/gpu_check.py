"""The checks `scripts/gpu_check.sh` runs on a CUDA machine (`python -m training gpu-check ...`, in
training/commands/gpu_check.py).

- `precision`: every method's loss and gradients under the trainer's autocast (bf16) against fp32 on the
  same batch, and whether each fast path written for the CPU is used under autocast and agrees:
  `ReservedLayer` in decoding (checked against a plain concatenating cache), prompt tuning's last-layer
  truncation (checked against the full computation). It runs on any device, so the CPU's bf16 autocast
  exercises it here too.
- `build-base`: a BLIP-base-size model with random weights (training/model/blip_base.py) over the embedded
  model's vocabulary, so the embedded datasets tokenize the same on it.
- `job`: one job of default settings through the queue and a `python -m training worker` process.
- `collect`: the pieces into one JSON (results/bench-gpu.json), with the issue's targets evaluated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from transformers import BertTokenizer

from training.catalog import PEFT_METHODS
from training.data.dataset import load_dataset
from training.jobs.limits import JobLimits
from training.jobs.status import job_status
from training.jobs.store import JobStore
from training.methods import vlmodel
from training.methods.budget import plan_method
from training.methods.vlmodel import VLModel
from training.model.base_model import SPECIAL_TOKENS, load_base_model
from training.model.blip_internals import DynamicLayer, text_layers
from training.model.pixels import PixelCache
from training.paths import DEFAULT_MODEL_DIR, REPO_ROOT
from training.run import runs
from training.run.tasks import Encoder, training_pairs
from training.run.trainer import batch_loss, resolve_device

# Tolerances of bf16 autocast against fp32 (bf16 keeps 8 bits of mantissa: about 0.4 % per rounding).
LOSS_REL_TOL = 2e-2  # |loss_bf16 - loss_fp32| / |loss_fp32|
GRAD_COSINE_MIN = 0.99  # cosine between the flattened gradients of the trained parameters
GRAD_NORM_REL_TOL = 5e-2  # |norm_bf16 / norm_fp32 - 1|
FAST_PATH_REL_TOL = 1e-2  # a fast path against its plain computation under autocast, relative to the largest logit
CHECK_METHODS = ("full", *PEFT_METHODS)
# The targets at BLIP-base size: each PEFT method against full fine-tuning at equal batch.
TARGET_SPEEDUP = 1.3
TARGET_MEMORY_SHARE = 0.6


def _take_grads(params: list) -> torch.Tensor:
    """The parameters' gradients, flattened into one float vector; the gradients are cleared."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    for p in params:
        p.grad = None
    return flat


@contextlib.contextmanager
def _counting(owner, name: str, counter: list[int]):
    """Count the calls of owner.name (a function or class) while inside."""
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    with mock.patch.object(owner, name, counted):
        yield


def check_method(
    method: str,
    base_model: str | None,
    device: torch.device,
    dtype: torch.dtype,
    task: str,
    dataset: str | None,
    batch_size: int,
    budget: str,
) -> dict:
    """One method's autocast-vs-fp32 comparison on one batch, and its fast paths under autocast."""
    base = load_base_model(base_model, device)
    vl = VLModel(base)
    plan = plan_method(base.model, method, budget, "both")
    vl.attach(method, "check", "both", plan.value)
    vl.set_active("check")
    vl.freeze_all_but("check")
    params = list(vl.adapters["check"].parameters())
    torch.manual_seed(0)
    if method != "full":  # non-zero weights everywhere: zero-initialised up-projections pass no gradient
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * 0.02)
    vl.model.eval()  # no dropout: both passes see the same function
    examples = load_dataset(dataset, task).split("train")
    pairs = training_pairs(task, examples)[:batch_size]
    encoder = Encoder(vl.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    pixels = PixelCache(base.processor)

    loss32 = batch_loss(vl, pairs, encoder, pixels, {})
    loss32.backward()
    g32 = _take_grads(params)
    with torch.autocast(device.type, dtype=dtype):
        loss16 = batch_loss(vl, pairs, encoder, pixels, {})
    loss16.backward()
    g16 = _take_grads(params)
    n32, n16 = g32.norm().item(), g16.norm().item()
    cosine = (g32 @ g16).item() / max(n32 * n16, 1e-30)
    row = {
        "method": method,
        "knob": plan.knob,
        "knob_value": plan.value,
        "trainable_params": plan.trainable_params,
        "loss_fp32": loss32.item(),
        "loss_autocast": loss16.item(),
        "loss_rel_diff": abs(loss16.item() - loss32.item()) / max(abs(loss32.item()), 1e-12),
        "grad_cosine": cosine,
        "grad_norm_ratio": n16 / n32 if n32 else math.nan,
    }
    row["ok"] = bool(
        row["loss_rel_diff"] <= LOSS_REL_TOL
        and cosine >= GRAD_COSINE_MIN
        and abs(row["grad_norm_ratio"] - 1) <= GRAD_NORM_REL_TOL
    )
    if method == "prompt":
        row["fast_path"] = _prompt_truncation(vl, pairs, encoder, pixels, device, dtype)
    row["decode_fast_path"] = _reserved_cache(vl, pairs, encoder, pixels, device, dtype)
    row["fast_paths_ok"] = all(v["ok"] for k, v in row.items() if k.endswith("fast_path"))
    return row


def _prompt_truncation(vl, pairs, encoder, pixels, device, dtype) -> dict:
    """Under autocast: the last layer sees only the text positions, and the logits equal the full computation."""
    seen: list[int] = []
    last = text_layers(vl.model)[-1].crossattention
    handle = last.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    examples = [example for example, _, _ in pairs]
    input_ids, mask, _ = encoder.training_batch([(prompt, target) for _, prompt, target in pairs])
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        embeds = vl.encode_images(pixels(examples))
        truncated = vl.text_logits(embeds, input_ids, mask).float()
        with mock.patch.object(vl, "_unread", lambda positions: contextlib.nullcontext()):
            full = vl.text_logits(embeds, input_ids, mask).float()
    handle.remove()
    diff = (truncated - full).abs().max().item() / max(full.abs().max().item(), 1e-12)
    used = seen[0] == input_ids.shape[1] and seen[1] > input_ids.shape[1]
    return {
        "name": "prompt tuning's last-layer truncation",
        "positions_seen": seen[:2],
        "status": "used",
        "rel_diff": diff,
        "ok": bool(used and diff <= FAST_PATH_REL_TOL),
    }


def _reserved_cache(vl, pairs, encoder, pixels, device, dtype, max_new: int = 6) -> dict:
    """Under autocast, greedy decoding with ReservedLayer against a plain concatenating cache layer."""

    def plain_layer(keys, values, room):
        layer = DynamicLayer()
        layer.update(keys, values)
        return layer

    example = pairs[0][0]
    prompts = [encoder.prompt_ids(pairs[0][1])] * 2
    built = [0]
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        embeds = vl.encode_images(pixels([example, example]))
        with _counting(vlmodel, "ReservedLayer", built):
            tokens, logits = vl.generate(embeds, prompts, max_new_tokens=max_new, return_logits=True)
        with mock.patch.object(vlmodel, "ReservedLayer", plain_layer):
            plain_tokens, plain_logits = vl.generate(embeds, prompts, max_new_tokens=max_new, return_logits=True)
    steps = min(len(logits[0]), len(plain_logits[0]))
    diff = (logits[0][:steps].float() - plain_logits[0][:steps].float()).abs().max().item()
    diff /= max(plain_logits[0][:steps].float().abs().max().item(), 1e-12)
    return {
        "name": "ReservedLayer",
        "layers_built": built[0],
        "status": "used under autocast" if built[0] else "not reached (decoding ended at its first token)",
        "same_tokens": tokens == plain_tokens,
        "rel_diff": diff,
        "ok": bool(tokens == plain_tokens and diff <= FAST_PATH_REL_TOL),
    }


def precision_check(
    base_model: str | None = None,
    device: str = "auto",
    dtype: str = "bfloat16",
    task: str = "vqa",
    dataset: str | None = None,
    batch_size: int = 8,
    budget: str = "0.5%",
    methods: tuple[str, ...] = CHECK_METHODS,
) -> dict:
    where = resolve_device(device)
    rows = [
        check_method(m, base_model, where, getattr(torch, dtype), task, dataset, batch_size, budget) for m in methods
    ]
    return {
        "device": str(where),
        "autocast_dtype": dtype,
        "task": task,
        "batch_size": batch_size,
        "base_model": base_model,
        "tolerances": {
            "loss_rel": LOSS_REL_TOL,
            "grad_cosine_min": GRAD_COSINE_MIN,
            "grad_norm_rel": GRAD_NORM_REL_TOL,
            "fast_path_rel": FAST_PATH_REL_TOL,
        },
        "methods": rows,
        "ok": all(r["ok"] and r["fast_paths_ok"] for r in rows),
    }


def embedded_words() -> list[str]:
    """The embedded model's vocabulary (what the embedded datasets are written in)."""
    tokenizer = BertTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    return [word for word in tokenizer.get_vocab() if word not in SPECIAL_TOKENS]


def run_queue_job(config, home: Path, timeout_s: float = 540) -> dict:
    """Submit one job, run a worker process until the queue is empty, and report how the job went."""
    store = JobStore(home / "jobs.sqlite3", limits=JobLimits(max_runtime_s=timeout_s))
    job_id = store.submit(config, submitter="gpu-check")
    env = {**os.environ, "VLPEFT_HOME": str(home), "VLPEFT_MAX_RUNTIME_S": str(timeout_s)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "training", "worker", "--exit-when-idle", "--poll", "0.5"],
        env=env,
        cwd=REPO_ROOT,
        timeout=timeout_s + 120,
        check=False,
    )
    status = job_status(store, job_id, log_lines=10)
    run_dir = Path(status["run_dir"])
    info = runs.read_json(run_dir / runs.CONFIG) or {}
    evaluation = runs.read_json(run_dir / runs.EVAL) or {}
    return {
        "job": job_id,
        "state": status["state"],
        "reason": status["reason"],
        "hint": status["hint"],
        "config": config.to_dict(),
        "device": info.get("device"),
        "precision": info.get("precision"),
        "total_steps": info.get("total_steps"),
        "wall_s": round(time.perf_counter() - started, 1),
        "metrics": evaluation.get("metrics"),
        "peak_mem_mb": evaluation.get("peak_mem_mb"),
        "log_tail": status["log_tail"],
    }


def targets(bench: dict) -> list[dict]:
    """Each PEFT method (both towers, default budget) against full fine-tuning at equal batch."""
    rows = [r for r in bench.get("train", []) if r["towers"] == "both" and not r["budget"].endswith("k")]
    full = next((r for r in rows if r["method"] == "full"), None)
    if full is None:
        return []
    verdicts = []
    for row in rows:
        if row["method"] == "full":
            continue
        share = row["peak_mem_mb"] / full["peak_mem_mb"]
        verdicts.append(
            {
                "method": row["method"],
                "speedup_vs_full": row["speedup_vs_full"],
                "memory_share_of_full": round(share, 3),
                "meets_speedup": row["speedup_vs_full"] >= TARGET_SPEEDUP,
                "meets_memory": share <= TARGET_MEMORY_SHARE,
            }
        )
    return verdicts


def collect(pieces: Path, out: Path) -> dict:
    """results/bench-gpu.json from the pieces the script wrote (any that are missing are left out)."""
    result: dict = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "targets_rule": {"speedup_vs_full_min": TARGET_SPEEDUP, "memory_share_of_full_max": TARGET_MEMORY_SHARE},
    }
    for name in ("environment", "tests", "precision", "bench-default", "bench-base", "job"):
        path = pieces / f"{name}.json"
        if path.is_file():
            result[name] = json.loads(path.read_text())
    if "bench-base" in result:
        result["targets_base_size"] = targets(result["bench-base"])
    if "bench-default" in result:
        result["targets_default"] = targets(result["bench-default"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result
