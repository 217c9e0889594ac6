"""Which words of a dataset's captions or answers a model's tokenizer cannot produce (they become [UNK]), and how
many examples they touch: a model never says a word it has no token for, so those examples cannot be matched."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from training.data.examples import Example

WORD = re.compile(r"\w+")


class Tokenizer(Protocol):
    unk_token: str | None

    def tokenize(self, text: str) -> list[str]: ...


@dataclass
class VocabularyCheck:
    """The target words a tokenizer turns into its unknown token, most used first, and the examples they touch."""

    unknown: list[tuple[str, int]]  # (word, examples whose captions or answers use it)
    affected: int  # examples with at least one such word
    examples: int

    @property
    def share(self) -> float:
        return self.affected / self.examples if self.examples else 0.0


def targets(example: Example) -> list[str]:
    """What a model must say for this example: its captions, or its answers."""
    return list(example.answers) if example.answers else list(example.captions)


def vocabulary_check(examples: list[Example], tokenizer: Tokenizer, top: int = 20) -> VocabularyCheck:
    """The words of the examples' captions or answers that `tokenizer` cannot produce (`top` most used)."""
    unk = tokenizer.unk_token
    known: dict[str, bool] = {}
    uses: Counter[str] = Counter()
    affected = 0
    for example in examples:
        words = {w for text in targets(example) for w in WORD.findall(text.lower())}
        for word in words:
            if word not in known:
                known[word] = unk is None or unk not in tokenizer.tokenize(word)
        missing = [w for w in words if not known[w]]
        uses.update(missing)
        affected += bool(missing)
    ranked = sorted(uses.items(), key=lambda item: (-item[1], item[0]))  # most used first, ties by name
    return VocabularyCheck(ranked[:top], affected, len(examples))
