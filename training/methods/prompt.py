"""Prompt tuning (embedding composition): trainable vectors joined to the input of each chosen tower.

Text side: P vectors before the decoder's input embeddings (initialised from random word embeddings, as in
Lester et al. 2021). Vision side: P visual prompt tokens after the [CLS] token (VPT-shallow, Jia et al. 2022).
peft's PromptTuningConfig is not used: it breaks on BLIP (see docs/blip-peft-notes in the design notes).
"""

from __future__ import annotations

import torch
from torch import nn

from training.methods.base import ALL_ROWS, TOWER_CHOICES, AdapterContext, Method, register

MAX_PROMPT_LENGTH = 128


class Vectors(nn.Module):
    """A parameter tensor that lives in a ModuleDict (so it has a stable state-dict key)."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init)


@register
class PromptTuning(Method):
    name = "prompt"
    family = "embedding composition"
    knob = "prompt length"
    default_lr = 3e-2
    summary = ("Learns a few input vectors placed before the text (and image patches); the paper found it the "
               "weakest and least efficient family.")  # fmt: skip

    def __init__(self, model, ctx: AdapterContext, adapter: str, towers: str, knob_value: int | None) -> None:
        super().__init__(model, ctx, adapter, towers, knob_value)
        length = int(knob_value)
        generator = torch.Generator().manual_seed(0)
        if "text" in TOWER_CHOICES[towers]:
            words = model.text_decoder.bert.embeddings.word_embeddings.weight
            rows = torch.randint(0, words.shape[0], (length,), generator=generator)
            init = words.detach()[rows.to(words.device)].clone() if words.device.type != "meta" else \
                torch.empty(length, words.shape[1], device="meta")  # fmt: skip
            self.modules["text"] = Vectors(init)
        if "vision" in TOWER_CHOICES[towers]:
            hidden = model.config.vision_config.hidden_size
            device = model.vision_model.embeddings.class_embedding.device
            init = torch.randn(length, hidden, generator=generator) * 0.02
            self.modules["vision"] = Vectors(init.to(device))
            model.vision_model.embeddings.register_forward_hook(self._add_visual_prompt)

    @classmethod
    def max_knob(cls, model, towers: str) -> int:
        return MAX_PROMPT_LENGTH

    def lengthens_text(self) -> bool:
        return "text" in self.modules

    def lengthens_image(self) -> bool:
        return "vision" in self.modules

    def text_prompt(self, batch_size: int) -> torch.Tensor | None:
        if "text" not in self.modules:
            return None
        return self.modules["text"].weight.unsqueeze(0).expand(batch_size, -1, -1)

    def _add_visual_prompt(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        rows = self.ctx.rows(self.adapter, output.device)
        if rows is None:
            return None
        if rows is not ALL_ROWS:
            raise ValueError("visual prompt tokens lengthen the image sequence: encode these rows on their own")
        prompts = self.modules["vision"].weight.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :1], prompts, output[:, 1:]], dim=1)
