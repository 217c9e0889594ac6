"""What every method whose weights live in peft tuner layers shares (LoRA, DoRA, IA3, LoHa): injecting through
peft, peft's own forward switched on for the active adapter, the stored tensors read through `named_parameters`
(by default every plain parameter peft keeps for the adapter, under the name peft saves it by), detaching."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from peft import PeftConfig
from torch import nn

from training.methods.base import Method
from training.methods.wrappers import unwrapped_name
from training.model.blip_internals import (
    BaseTunerLayer,
    forget_peft_config,
    inject_adapter_in_model,
    peft_adapters,
    peft_parameters,
    remove_peft_adapter,
    use_peft_path,
)


class PeftLayersMethod(Method):
    """A subclass fills `self.layers` (module path -> peft tuner layer holding this adapter) and yields its
    stored tensors from `named_parameters`; peft runs the forward."""

    layers: dict[str, BaseTunerLayer]

    def inject(self, config: PeftConfig) -> None:
        """peft injects this adapter's layers; keep the tuner layers that hold it, switched off until active.
        (peft marks only adapters trainable on the whole model; the trainer sets requires_grad itself.)"""
        inject_adapter_in_model(config, self.model, adapter_name=self.adapter)
        self.layers = {
            name: module
            for name, module in self.model.named_modules()
            if isinstance(module, BaseTunerLayer) and self.adapter in peft_adapters(module)
        }
        self.set_active(False)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for path, layer in self.layers.items():
            for attribute, tensor in peft_parameters(layer, self.adapter):
                yield f"{unwrapped_name(path)}.{attribute}", tensor

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().contiguous() for k, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        if set(own) != set(state):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise KeyError(f"{self.name} weights do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(state[key])

    def set_active(self, active: bool) -> None:
        # Injecting turns peft's path on for the newest adapter: every layer is switched explicitly here.
        for layer in self.layers.values():
            use_peft_path(layer, self.adapter if active else None)

    def detach(self) -> None:
        super().detach()
        for layer in self.layers.values():
            remove_peft_adapter(self.model, layer, self.adapter)
        self.layers = {}
        forget_peft_config(self.model, self.adapter)
