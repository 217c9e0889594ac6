"""How far the caption task's references are from the pre-training text, measured without any model.

`python scripts/caption_style_ceilings.py [--edition 2] [--split validation]` scores, with the project's
CIDEr-D against four of each image's five references (the first is held out as a candidate):

- one annotator against the other four (human agreement);
- the most frequent of ten fresh annotator captions (what a model that learned the style's mode could write);
- a pre-training sentence of the true scene, with every object's position and without positions (what a
  zero-shot model that sees perfectly and writes like its pre-training text could write).

It also prints the share of the references' 4-grams that occur in pre-training texts of the edition's recipe
(alt-text and descriptive sentences of 3 000 pre-training scenes).

The ratio of the last two to the second is the zero-shot share of the fine-tuned score that a perfect vision
tower allows: the design figure behind docs/embedded-world-v2.md. It reads the validation split by default,
since it chose the pre-training text's recipe.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from training.data import scenes
from training.metrics.caption import cider_d
from training.pretraining.pretrain import PretrainConfig


def ceilings(edition: int, split: str, count: int) -> dict[str, float]:
    references, candidates = {}, {"one annotator": {}, "mode of ten": {}, "with positions": {}, "no positions": {}}
    for index in range(count):
        rng = scenes.scene_rng("caption", split, index)
        scene = scenes.sample_scene(rng)
        captions = scenes.caption_references(scene, rng, edition=edition)
        key = f"{split}-{index}"
        references[key] = captions[1:]
        fresh = np.random.default_rng(10_000 + index)  # a stream the references never drew
        samples = [scenes.EDITION_CAPTIONS[edition](scene, fresh) for _ in range(10)]
        candidates["one annotator"][key] = captions[0]
        candidates["mode of ten"][key] = Counter(samples).most_common(1)[0][0]
        candidates["with positions"][key] = scenes.pretrain_sentence(scene, fresh, 0.0, ("{list}",), 1.0)
        candidates["no positions"][key] = scenes.pretrain_sentence(scene, fresh, 0.0, ("{list}",), 0.0)
    return {name: cider_d(predictions, references) for name, predictions in candidates.items()}


def _four_grams(text: str) -> set[tuple[str, ...]]:
    words = scenes.text_words(text)
    return {tuple(words[i : i + 4]) for i in range(len(words) - 3)}


def shared_four_grams(edition: int, split: str, count: int, position_share: float, corpus_scenes: int = 3000) -> float:
    """The share of the references' 4-grams (with repeats) that pre-training texts also contain."""
    corpus: set[tuple[str, ...]] = set()
    for index in range(corpus_scenes):
        rng = scenes.scene_rng("pretrain", "train", index)
        scene = scenes.sample_scene(rng)
        corpus |= _four_grams(scenes.alt_text(scene, rng))
        corpus |= _four_grams(scenes.pretrain_sentence(scene, rng, position_share=position_share))
    grams = []
    for index in range(count):
        rng = scenes.scene_rng("caption", split, index)
        captions = scenes.caption_references(scenes.sample_scene(rng), rng, edition=edition)
        grams += [g for caption in captions for g in _four_grams(caption)]
    return sum(g in corpus for g in grams) / len(grams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edition", type=int, default=2, choices=scenes.EDITIONS)
    parser.add_argument("--split", default="validation", choices=scenes.TASK_SPLITS)
    parser.add_argument("--count", type=int, default=200, help="images of the split")
    args = parser.parse_args()
    scores = ceilings(args.edition, args.split, args.count)
    mode = scores["mode of ten"]
    print(f"CIDEr-D against 4 of 5 references, edition {args.edition}, {args.count} {args.split} images")
    for name, score in scores.items():
        print(f"  {name:<15} {score:6.3f}  ({score / mode:.0%} of the mode of ten)")

    position_share = PretrainConfig.for_edition(args.edition).position_share
    shared = shared_four_grams(args.edition, args.split, args.count, position_share)
    print(f"references' 4-grams found in the edition's pre-training texts: {shared:.0%}")


if __name__ == "__main__":
    main()
