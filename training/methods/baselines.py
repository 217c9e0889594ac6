"""The two baselines beside the five methods: no training at all, and training every weight."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from training.methods.base import Method, register


@register
class ZeroShot(Method):
    name = "zero-shot"
    trains_vision = False

    def touches_vision(self) -> bool:
        return False


@register
class FullFineTune(Method):
    name = "full"
    trains_vision = True

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.model.named_parameters()

    def touches_vision(self) -> bool:
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        # Tied weights (the LM head shares the word embeddings) are stored once, as save_pretrained does.
        seen: set[int] = set()
        state = {}
        for key, value in self.model.state_dict().items():
            if value.data_ptr() in seen:
                continue
            seen.add(value.data_ptr())
            state[key] = value.detach().contiguous()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = set(getattr(self.model, "_tied_weights_keys", {}) or {})
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise KeyError(
                f"full fine-tuning weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.model.tie_weights()
