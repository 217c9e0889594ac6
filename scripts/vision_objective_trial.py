"""Which vision objective teaches the tower shape? A short vision-only pre-training, then the probe.

    python scripts/vision_objective_trial.py --object-weight 0 --steps 300
    python scripts/vision_objective_trial.py --object-weight 1 --steps 300

Trains a fresh vision tower of the embedded model's shape (no text tower work: captioning is left out so that
the comparison is cheap and isolates the vision objectives) on the pre-training corpus's images with the
dense patch objective, plus the object-level objective when its weight is above 0, under the same schedule
(AdamW, warm-up then cosine), and prints the linear probe's held-out accuracy per attribute as JSON. Two runs
that differ only in --object-weight compare the objectives at equal cost.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from training.data import scenes
from training.methods.vlmodel import VLModel
from training.model.base_model import build_blip
from training.pretraining.pretrain import ObjectHead, PatchHead, PretrainConfig, normalizer, render_pool, to_pixels
from training.pretraining.probe import probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--object-weight", type=float, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pool-images", type=int, default=6000)
    parser.add_argument("--image-size", type=int, default=PretrainConfig.image_size)
    parser.add_argument("--patch-size", type=int, default=PretrainConfig.patch_size)
    parser.add_argument("--probe-scenes", type=int, nargs=2, default=(1000, 500), metavar=("FIT", "SCORE"))
    parser.add_argument("--probe-every", type=int, default=0, help="also probe every N steps (0: at the end only)")
    args = parser.parse_args()
    config = PretrainConfig(image_size=args.image_size, patch_size=args.patch_size)
    torch.manual_seed(config.seed)
    base = build_blip(
        scenes.vocabulary_words(),
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_hidden=config.hidden,
        vision_layers=config.vision_layers,
        text_hidden=config.hidden,
        text_layers=config.text_layers,
        heads=config.heads,
        seed=config.seed,
    )
    images, labels, _ = render_pool(args.pool_images, config.seed, config.image_size, config.patch_size, workers=1)
    mean, std = normalizer(base.processor)
    vision = base.model.vision_model
    patch_head, object_head = PatchHead(config.hidden), ObjectHead(config.hidden)
    trained = [*vision.parameters(), *patch_head.parameters(), *object_head.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=0.05, betas=(0.9, 0.98))
    rng = np.random.default_rng(config.seed)
    warmup = max(1, args.steps // 10)
    started = time.perf_counter()
    for step in range(args.steps):
        scale = (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))
        )
        for group in optimizer.param_groups:
            group["lr"] = config.lr * scale
        rows = torch.from_numpy(rng.integers(0, len(images), size=config.batch_size))
        tokens = vision(pixel_values=to_pixels(images[rows], mean, std)).last_hidden_state[:, 1:]
        loss, _ = patch_head(tokens, labels[rows])
        if args.object_weight > 0:
            object_loss, _ = object_head(tokens, labels[rows])
            loss = loss + args.object_weight * object_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.probe_every and (step + 1) % args.probe_every == 0 and step + 1 < args.steps:
            # How shape grows with steps decides whether a longer pre-training is worth its hours.
            vision.eval()
            midway = probe(VLModel(base), *args.probe_scenes)
            print(json.dumps({"step": step + 1, **midway, "minutes": round((time.perf_counter() - started) / 60, 1)}))
            vision.train()
    vision.eval()
    result = probe(VLModel(base), *args.probe_scenes)
    result.update(vars(args), train_minutes=round((time.perf_counter() - started) / 60, 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
