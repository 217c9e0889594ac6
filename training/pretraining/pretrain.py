"""Pre-train the embedded default: a small BLIP on the scene world's web-like corpus.

`python -m training pretrain --out DIR [--seed S]`. A pool of pre-training images is rendered once; each
step draws fresh alt-text or descriptive sentences for them, so the text side never repeats exactly.

Two objectives, summed: captioning (language modelling on the text, conditioned on the image), and a dense
one on the vision tower alone - every output patch token names the shape, colour, size and grid cell of
the object it shows (or background), through a linear head that is dropped afterwards. The dense objective
stands in for what real BLIP gets from its ImageNet-initialised ViT: a vision tower that already sees what
is where. Captioning alone, in the 45 minutes this machine allows, taught the tower colours and counts but
not shapes or positions. The second edition's recipe (`--edition 2`) adds an object-level objective on the same
labels (ObjectHead: the tokens averaged over each object's patches name its attributes), since the dense one
left shape unlearned (docs/embedded-world-v2.md).
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

from training.data import scenes
from training.methods.vlmodel import VLModel
from training.model.base_model import BaseModel, build_blip, save_base_model
from training.pretraining import checkpoint
from training.run import runs
from training.run.tasks import Encoder

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
    # Of the sentences: the share in per-object clauses ("a red circle is at the top left and ..."), and whether
    # the list-shaped rest may use the caption task's own frames, its prompt "a picture of" among them. With
    # them (the shipped model's recipe) the corpus holds the task's captions verbatim and zero-shot captioning
    # is about as good as fine-tuning (docs/headroom.md); `--clause-share 0.5 --no-caption-frames` keeps the
    # task's phrases but not its sentence shapes, the candidate recipe for a model with fine-tuning headroom.
    clause_share: float = 0.25
    caption_frames: bool = True
    # Of the list-shaped sentences, the share that give each object's position (the rest name the objects only).
    position_share: float = 1.0
    dense_weight: float = 1.0  # weight of the vision tower's dense patch objective (0: captioning only)
    # Weight of the object-level objective (ObjectHead): the second edition's fix for a tower that had not
    # learned shape (docs/embedded-world-v2.md).
    object_weight: float = 0.0
    # The scene world's edition: the second adds its caption references' words to the vocabulary.
    edition: int = 1

    @classmethod
    def for_edition(cls, edition: int, seed: int = 0) -> PretrainConfig:
        """The recipe of an edition of the embedded world (docs/embedded-world-v2.md for the second)."""
        if edition not in scenes.EDITIONS:
            raise ValueError(f"unknown edition {edition!r}: the scene world has editions {scenes.EDITIONS}")
        return cls(seed=seed, edition=edition, **EDITION_RECIPES[edition])


# What each edition changes from the dataclass defaults (the first edition's recipe).
EDITION_RECIPES: dict[int, dict] = {1: {}, 2: {"object_weight": 1.0, "position_share": 0.5}}


def _render_chunk(args: tuple[int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray, list]:
    start, stop, seed, size, patch = args
    images, labels, scene_list = [], [], []
    for index in range(start, stop):
        scene = scenes.sample_scene(scenes.scene_rng("pretrain", "train", index, seed))
        images.append(np.asarray(scenes.render_scene(scene, size), dtype=np.uint8))
        labels.append(scenes.patch_labels(scene, size, patch))
        scene_list.append(scene)
    return np.stack(images), np.stack(labels), scene_list


def render_pool(
    count: int, seed: int, size: int, patch: int = 8, workers: int = 2
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """count pre-training images as uint8 [N, H, W, 3], their patch labels [N, 4, patches], and scenes."""
    chunk = 2000
    jobs = [(s, min(count, s + chunk), seed, size, patch) for s in range(0, count, chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(_render_chunk, jobs))
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return images, labels, [s for p in parts for s in p[2]]


class PatchHead(torch.nn.Module):
    """Linear classifiers over the vision tower's patch tokens, one per label kind (dropped after pre-training)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.sizes = list(scenes.PATCH_LABEL_HEADS.values())
        self.linear = torch.nn.Linear(hidden, sum(self.sizes))

    def forward(self, patch_tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Mean cross-entropy over the label kinds, and each kind's accuracy on object patches."""
        logits = self.linear(patch_tokens).split(self.sizes, dim=-1)
        losses, accuracies = [], []
        on_object = labels[:, 0] > 0
        for kind, kind_logits in enumerate(logits):
            target = labels[:, kind]
            losses.append(torch.nn.functional.cross_entropy(kind_logits.flatten(0, 1), target.flatten()))
            hits = kind_logits.argmax(-1) == target
            accuracies.append(hits[on_object].float().mean().item() if on_object.any() else float("nan"))
        return torch.stack(losses).mean(), accuracies


class ObjectHead(torch.nn.Module):
    """Linear classifiers over each object's pooled patch tokens (the mean over the patches it covers), one per
    label kind: the object-level counterpart of PatchHead, and like it dropped after pre-training."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.sizes = list(scenes.PATCH_LABEL_HEADS.values())
        self.linear = torch.nn.Linear(hidden, sum(self.sizes))

    def forward(self, patch_tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Mean cross-entropy over the label kinds, and each kind's accuracy, over every object of the batch."""
        owner = labels[:, 3]  # one object per grid cell: the cell label (1-9, 0 = background) names the owner
        members = torch.nn.functional.one_hot(owner, 10)[..., 1:].to(patch_tokens.dtype)  # [B, patches, 9]
        counts = members.sum(1)  # [B, 9]
        present = counts > 0
        pooled = (members.transpose(1, 2) @ patch_tokens)[present] / counts[present].unsqueeze(-1)
        # Every patch of an object carries the object's labels, so the largest label over its patches is its own.
        targets = (labels.unsqueeze(-1) * members.long().unsqueeze(1)).amax(2)  # [B, 4, 9]
        targets = targets.transpose(1, 2)[present]  # [objects, 4]
        logits = self.linear(pooled).split(self.sizes, dim=-1)
        losses = [
            torch.nn.functional.cross_entropy(kind_logits, targets[:, kind]) for kind, kind_logits in enumerate(logits)
        ]
        accuracies = [
            (kind_logits.argmax(-1) == targets[:, kind]).float().mean().item()
            for kind, kind_logits in enumerate(logits)
        ]
        return torch.stack(losses).mean(), accuracies


def normalizer(processor) -> tuple[torch.Tensor, torch.Tensor]:
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return mean, std


def to_pixels(batch_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (batch_uint8.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def pretrain_command(config: PretrainConfig, out: Path) -> str:
    """The `python -m training pretrain` command that reproduces config."""
    command = f"python -m training pretrain --out {out} --seed {config.seed} --steps {config.steps}"
    recipe = PretrainConfig.for_edition(config.edition)
    if config.edition != 1:
        command += f" --edition {config.edition}"
    if config.pool_images != recipe.pool_images:
        command += f" --pool-images {config.pool_images}"
    if config.object_weight != recipe.object_weight:
        command += f" --object-weight {config.object_weight:g}"
    if config.clause_share != PretrainConfig.clause_share:
        command += f" --clause-share {config.clause_share:g}"
    if not config.caption_frames:
        command += " --no-caption-frames"
    return command


def _build(config: PretrainConfig) -> BaseModel:
    words = scenes.vocabulary_words(config.edition) + EXTRA_WORDS
    return build_blip(
        words,
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_hidden=config.hidden,
        vision_layers=config.vision_layers,
        text_hidden=config.hidden,
        text_layers=config.text_layers,
        heads=config.heads,
        max_positions=config.max_positions,
        seed=config.seed,
    )


def model_from_state(out_dir: str | Path) -> tuple[BaseModel, int]:
    """(the model of a stopped or running pre-training's last saved state, its step): to probe it midway."""
    fields = checkpoint.read_fields(out_dir)
    config = PretrainConfig(**fields["config"])
    base = _build(config)
    checkpoint.load_weights(out_dir, list(base.model.parameters()))
    base.model.eval()
    return base, fields["step"]


def pretrain(config: PretrainConfig, out_dir: str | Path, checkpoint_every: int = 250, resume: bool = True) -> Path:
    """Pre-train the embedded model on the scene world into out_dir; resumes a stopped run's saved state there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    base = _build(config)
    params = sum(p.numel() for p in base.model.parameters())
    log.info("model: %s parameters, vocabulary %d words", f"{params:,}", len(base.tokenizer))
    log.info("rendering %d pre-training images", config.pool_images)
    images, patch_targets, scene_list = render_pool(
        config.pool_images, config.seed, config.image_size, config.patch_size
    )
    log.info("rendered in %.0f s", time.perf_counter() - started)
    mean, std = normalizer(base.processor)
    vl = VLModel(base)
    encoder = Encoder(base.tokenizer, vl.bos_id, vl.sep_id, vl.pad_id, vl.max_positions)
    model = base.model
    model.train()
    head, object_head = PatchHead(config.hidden), ObjectHead(config.hidden)
    trained = [*model.parameters(), *head.parameters(), *object_head.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=0.05, betas=(0.9, 0.98))
    rng = np.random.default_rng(config.seed)
    history: list[dict] = []
    first_step, earlier_seconds = 0, 0.0
    if resume and checkpoint.exists(out):
        state = checkpoint.load(out, asdict(config), trained, optimizer)
        rng.bit_generator.state = state.sampler
        first_step, history, earlier_seconds = state.step, state.history, state.seconds
        log.info("resuming at step %d/%d from %s", first_step, config.steps, out / checkpoint.FOLDER)
    frames = scenes.SENTENCE_FRAMES if config.caption_frames else scenes.NON_CAPTION_FRAMES
    loop_start = time.perf_counter()
    warmup = min(config.warmup_steps, config.steps // 10)  # a short trial run warms up for a tenth of its steps
    for step in range(first_step, config.steps):
        if step < warmup:
            lr = config.lr * (step + 1) / warmup
        else:
            progress = (step - warmup) / max(1, config.steps - warmup)
            lr = config.lr * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        indices = rng.integers(0, len(scene_list), size=config.batch_size)
        texts = []
        for index in indices:
            scene = scene_list[int(index)]
            sentence = rng.random() < config.sentence_share
            texts.append(
                scenes.pretrain_sentence(scene, rng, config.clause_share, frames, config.position_share)
                if sentence
                else scenes.alt_text(scene, rng)
            )
        rows = torch.from_numpy(indices)
        pixels = to_pixels(images[rows], mean, std)
        input_ids, mask, labels = encoder.training_batch([("", t) for t in texts])
        image_embeds = vl.encode_images(pixels)
        caption_loss = vl.loss(image_embeds, input_ids, mask, labels)
        loss = caption_loss
        dense_acc: list[float] = []
        object_acc: list[float] = []
        if config.dense_weight > 0:
            dense_loss, dense_acc = head(image_embeds[:, 1:], patch_targets[rows])  # token 0 is [CLS]
            loss = loss + config.dense_weight * dense_loss
        if config.object_weight > 0:
            object_loss, object_acc = object_head(image_embeds[:, 1:], patch_targets[rows])
            loss = loss + config.object_weight * object_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0 or step == 0:
            elapsed = time.perf_counter() - loop_start
            eta = elapsed / (step + 1 - first_step) * (config.steps - step - 1)
            accuracy = dict(zip(scenes.PATCH_LABEL_HEADS, (round(a, 3) for a in dense_acc), strict=False))
            objects = dict(zip(scenes.PATCH_LABEL_HEADS, (round(a, 3) for a in object_acc), strict=False))
            history.append(
                {
                    "step": step + 1,
                    "loss": round(caption_loss.item(), 4),
                    "lr": lr,
                    "patch_accuracy": accuracy,
                    "object_accuracy": objects,
                }
            )
            log.info(
                "step %d/%d caption loss %.4f patch accuracy %s object accuracy %s lr %.2e  %.1f steps/s  eta %.0f min",
                step + 1,
                config.steps,
                caption_loss.item(),
                accuracy,
                objects,
                lr,
                (step + 1 - first_step) / elapsed,
                eta / 60,
            )
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
            seconds = earlier_seconds + time.perf_counter() - started
            state = checkpoint.PretrainState(step + 1, asdict(config), rng.bit_generator.state, history, seconds)
            checkpoint.save(out, state, trained, optimizer)
    model.eval()
    save_base_model(base, out)
    checkpoint.discard(out)
    minutes = (earlier_seconds + time.perf_counter() - started) / 60
    runs.write_json(
        out / "pretrain.json",
        {
            "config": asdict(config),
            "parameters": params,
            "vocabulary": len(base.tokenizer),
            "minutes": round(minutes, 1),
            "final_loss": history[-1]["loss"] if history else None,
            "command": pretrain_command(config, out),
            "history": history,
        },
    )
    log.info("saved to %s after %.1f minutes", out, minutes)
    return out
