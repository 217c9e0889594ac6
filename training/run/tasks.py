"""How each task turns examples into decoder sequences, and generated ids back into text.

Captioning: `[DEC] a picture of <caption> [SEP]`, as BLIP does; VQA: `[DEC] question: <q> answer: <a> [SEP]`.
The loss covers only the caption or the answer (and [SEP]); the prompt and question positions are -100.
A generated VQA answer ends at its first ',' or '.' token (`Encoder.output`); a caption is kept whole.
"""

from __future__ import annotations

from collections import Counter

import torch
from transformers import PreTrainedTokenizerBase

from training.data.examples import Example
from training.metrics.vqa import vqa_scores

CAPTION_PROMPT = "a picture of"
MAX_TEXT_TOKENS = 40
# The second edition's protocol: a VQA answer is one short phrase, so the first of these tokens ends it, for every
# method alike (the zero-shot model says "circle, circle, circle, ..." up to the length limit otherwise).
ANSWER_ENDS = (",", ".")


def prompt_text(task: str, question: str = "") -> str:
    return CAPTION_PROMPT if task == "caption" else f"question: {question.strip()} answer:"


def majority_answer(answers: list[str]) -> str:
    """The most frequent answer (ties: the first seen), the training target for a VQA question."""
    counts = Counter(a.strip().lower() for a in answers)
    return max(counts, key=lambda a: (counts[a], -[x.strip().lower() for x in answers].index(a)))


def training_pairs(task: str, examples: list[Example]) -> list[tuple[Example, str, str]]:
    """(example, prompt, target) for training: every caption of an image, or a question's majority answer."""
    if task == "caption":
        return [(e, prompt_text(task), caption) for e in examples for caption in e.captions]
    return [(e, prompt_text(task, e.question), majority_answer(e.answers)) for e in examples]


class Encoder:
    """Token ids for prompts and training sequences, with the model's special tokens."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, bos_id: int, sep_id: int, pad_id: int, max_positions: int
    ) -> None:
        self.tokenizer = tokenizer
        self.bos_id, self.sep_id, self.pad_id = bos_id, sep_id, pad_id
        self.max_tokens = min(MAX_TEXT_TOKENS, max_positions)
        ids = tokenizer.convert_tokens_to_ids(list(ANSWER_ENDS))
        self.answer_end_ids = frozenset(i for i in ids if i is not None and i != tokenizer.unk_token_id)

    def words(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.bos_id, *self.words(prompt)][: self.max_tokens - 1]

    def training_batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask, labels for (prompt, target) pairs, right-padded."""
        rows, label_rows = [], []
        for prompt, target in pairs:
            head = self.prompt_ids(prompt)
            tail = [*self.words(target), self.sep_id]
            ids = (head + tail)[: self.max_tokens]
            rows.append(ids)
            label_rows.append([-100] * len(head) + ids[len(head) :])
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        return input_ids, mask, labels

    def output(self, task: str, ids: list[int]) -> list[int]:
        """The generated ids that make the output: a VQA answer up to (without) its first ',' or '.' token, a
        caption whole."""
        if task == "vqa":
            for position, token in enumerate(ids):
                if token in self.answer_end_ids:
                    return ids[:position]
        return ids

    def decode(self, task: str, ids: list[int]) -> str:
        """The text of a generated output (see `output`)."""
        return self.tokenizer.decode(self.output(task, ids), skip_special_tokens=True).strip()


def answer_prior(task_dataset) -> dict:
    """VQA accuracy of always answering each question type's most common training answer."""
    train_split, test = task_dataset.split("train"), task_dataset.split("test")
    per_type: dict[str, Counter] = {}
    for example in train_split:
        per_type.setdefault(example.question_type, Counter())[majority_answer(example.answers)] += 1
    prior = {qtype: counts.most_common(1)[0][0] for qtype, counts in per_type.items()}
    predictions = [prior.get(e.question_type, "") for e in test]
    result = vqa_scores(predictions, [e.answers for e in test], [e.question_type for e in test])
    result.pop("per_sample", None)
    return {**result, "answers": prior}
