"""Pre-train the embedded default: a small BLIP on the scene world's web-like corpus (captioning objective).

`python -m training pretrain --out DIR [--seed S]`. A pool of pre-training images is rendered once; each
step draws fresh alt-text or descriptive sentences for them, so the text side never repeats exactly.
Reproducible from the seed on one machine (CPU kernels may differ in the last bits across machines).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from training import runs
from training.base_model import build_blip, save_base_model
from training.data import scenes
from training.tasks import Encoder
from training.vlmodel import VLModel

log = logging.getLogger("vlpeft.pretrain")
# The VQA prompt's words: never trained here, but in the vocabulary so that fine-tuning can learn them.
EXTRA_WORDS = ["question", "answer", ":", "?", ",", ".", "-", "'"]


@dataclass
class PretrainConfig:
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 300
    pool_images: int = 60000
    image_size: int = 64
    patch_size: int = 8
    hidden: int = 160
    vision_layers: int = 4
    text_layers: int = 4
    heads: int = 4
    max_positions: int = 64
    sentence_share: float = 0.5


def _render_chunk(args: tuple[int, int, int, int]) -> tuple[np.ndarray, list]:
    start, stop, seed, size = args
    images, scene_list = [], []
    for index in range(start, stop):
        scene = scenes.sample_scene(scenes.scene_rng("pretrain", "train", index, seed))
        images.append(np.asarray(scenes.render_scene(scene, size), dtype=np.uint8))
        scene_list.append(scene)
    return np.stack(images), scene_list


def render_pool(count: int, seed: int, size: int, workers: int = 2) -> tuple[torch.Tensor, list]:
    """count pre-training images as a uint8 tensor [N, H, W, 3], with their scenes."""
    chunk = 2000
    jobs = [(s, min(count, s + chunk), seed, size) for s in range(0, count, chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(_render_chunk, jobs))
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    return images, [s for p in parts for s in p[1]]


def normalizer(processor) -> tuple[torch.Tensor, torch.Tensor]:
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return mean, std


def to_pixels(batch_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (batch_uint8.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def pretrain(config: PretrainConfig, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    words = scenes.vocabulary_words() + EXTRA_WORDS
    base = build_blip(
        words, image_size=config.image_size, patch_size=config.patch_size, vision_hidden=config.hidden,
        vision_layers=config.vision_layers, text_hidden=config.hidden, text_layers=config.text_layers,
        heads=config.heads, max_positions=config.max_positions, seed=config.seed,
    )  # fmt: skip
    params = sum(p.numel() for p in base.model.parameters())
    log.info("model: %s parameters, vocabulary %d words", f"{params:,}", len(base.tokenizer))
    log.info("rendering %d pre-training images", config.pool_images)
    images, scene_list = render_pool(config.pool_images, config.seed, config.image_size)
    log.info("rendered in %.0f s", time.perf_counter() - started)
    mean, std = normalizer(base.processor)
    vl = VLModel(base)
    encoder = Encoder(base.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    model = base.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05, betas=(0.9, 0.98))
    rng = np.random.default_rng(config.seed)
    loop_start = time.perf_counter()
    history = []
    for step in range(config.steps):
        if step < config.warmup_steps:
            lr = config.lr * (step + 1) / config.warmup_steps
        else:
            progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
            lr = config.lr * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        indices = rng.integers(0, len(scene_list), size=config.batch_size)
        texts = []
        for index in indices:
            scene = scene_list[int(index)]
            sentence = rng.random() < config.sentence_share
            texts.append(scenes.pretrain_sentence(scene, rng) if sentence else scenes.alt_text(scene, rng))
        pixels = to_pixels(images[torch.from_numpy(indices)], mean, std)
        input_ids, mask, labels = encoder.training_batch([("", t) for t in texts])
        loss = vl.loss(vl.encode_images(pixels), input_ids, mask, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0 or step == 0:
            elapsed = time.perf_counter() - loop_start
            eta = elapsed / (step + 1) * (config.steps - step - 1)
            history.append({"step": step + 1, "loss": round(loss.item(), 4), "lr": lr})
            log.info("step %d/%d loss %.4f lr %.2e  %.1f steps/s  eta %.0f min", step + 1, config.steps,
                     loss.item(), lr, (step + 1) / elapsed, eta / 60)  # fmt: skip
    model.eval()
    save_base_model(base, out)
    minutes = (time.perf_counter() - started) / 60
    runs.write_json(out / "pretrain.json", {
        "config": asdict(config), "parameters": params, "vocabulary": len(base.tokenizer),
        "minutes": round(minutes, 1), "final_loss": history[-1]["loss"] if history else None,
        "command": f"python -m training pretrain --out {out} --seed {config.seed} --steps {config.steps}",
        "history": history,
    })  # fmt: skip
    log.info("saved to %s after %.1f minutes", out, minutes)
    return out
