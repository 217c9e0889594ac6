"""The one interface every PEFT method follows, and the registry the CLI and the app read.

A method is attached to a BLIP model under an adapter name. Several adapters (of any kinds) can live on
one frozen base; exactly one acts at a time, on the whole batch (`AdapterContext.active`). Every module a
method installs checks it, and `set_active(active)` tells a method when it became (in)active (a peft-based
method switches peft's own adapter there), so with no adapter active the model is exactly the base model.
`detach()` takes a method off the model (see `Method.detach`).

What the trainer calls, in order (see `Method`):
1. `VLModel.attach(method, adapter, towers, knob_value, seed=..., options=...)` builds the method. `seed` drives
   every random initialisation the method makes; `options` are method-specific choices (`options_accepted`,
   e.g. {"reparam": True} for prefix tuning), and an unknown one is a ValueError naming the accepted ones.
2. `train_parameters()` is what the optimizer updates (usually `parameters()`; for reparametrised prefix
   tuning the embedding and MLP that produce the prefixes). `VLModel.freeze_all_but` sets requires_grad on it.
3. `fold()` after training, before saving or evaluating: turns a training-time form into the stored one (the
   reparametrised prefix MLP is evaluated into the plain prefixes and dropped); a no-op for other methods.
4. `parameters()`, `num_trainable()`, `state_dict()` and `load_state_dict()` always mean the stored form, the
   one the budget solver counts, before and after `fold()`.
5. `VLModel.set_active(adapter)` calls `set_active(False)` on every method, then `set_active(True)` on the
   chosen one; `VLModel.detach(adapter)` calls `detach()`, which removes every hook handle and wrapper the
   method installed and its weights (peft layers included), leaving the module tree of the base model.

A method installs its modules through `hook` and `wrap`, which remember what they did so `detach` can undo it,
and reaches into transformers and peft only through the names in training/model/blip_internals.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import BlipForConditionalGeneration, PreTrainedTokenizerBase

from training.catalog import CATALOG

TOWER_CHOICES = {"vision": ("vision",), "text": ("text",), "both": ("vision", "text")}


@dataclass
class AdapterContext:
    """Shared by all modules a method installs on one model: the one adapter that acts now, on the whole
    batch (None: the plain base model)."""

    active: str | None = None


class Method:
    """Base class: subclasses build their parameters in `__init__` and install them on the model."""

    name: ClassVar[str]
    # What the method is (family, knob, default learning rate, summary) is read from training/catalog.py by
    # `register`, so that the app, the report and the sweeps, which read the catalog, say the same.
    family: ClassVar[str]
    knob: ClassVar[str | None] = None
    default_lr: ClassVar[float] = 1e-3
    summary: ClassVar[str] = ""
    trains_vision: ClassVar[bool | None] = None  # None: depends on the towers

    # option name -> default; `options` given to the constructor may set only these
    options_accepted: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        model: BlipForConditionalGeneration,
        ctx: AdapterContext,
        adapter: str,
        towers: str,
        knob_value: int | None,
        *,
        seed: int = 0,
        options: dict[str, Any] | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        unknown = sorted(set(options or {}) - set(self.options_accepted))
        if unknown:
            accepted = ", ".join(self.options_accepted) or "none"
            raise ValueError(f"{self.name} has no option {', '.join(map(repr, unknown))}; accepted options: {accepted}")
        self.model = model
        self.ctx = ctx
        self.adapter = adapter
        self.towers = towers
        self.knob_value = knob_value
        self.options = {**self.options_accepted, **(options or {})}
        # Methods that start from real vocabulary (prompt tuning) read it here; the budget solver, which builds
        # methods on a weightless (meta) model, passes none.
        self.tokenizer = tokenizer
        self.generator = torch.Generator().manual_seed(seed)
        self.modules = nn.ModuleDict()  # name -> module holding this adapter's parameters (state-dict keys)
        # Modules used only while training (dropped by fold); VLModel registers them on the model so they move
        # with it, but they are never stored or counted.
        self.training_modules = nn.ModuleDict()
        self._handles: list[RemovableHandle] = []
        self._wrappers: list[nn.Module] = []

    def seeded(
        self, shape: tuple[int, ...], device: torch.device, fill: Callable[[torch.Tensor, torch.Generator], object]
    ) -> torch.Tensor:
        """A tensor of `shape` on `device`, filled on the CPU by `fill(tensor, generator)` from this method's
        seeded generator (so the values do not depend on the device). Left empty on the meta device."""
        if torch.device(device).type == "meta":
            return torch.empty(shape, device="meta")
        tensor = torch.empty(shape)
        fill(tensor, self.generator)
        return tensor.to(device)

    # -- installing on the model and taking off ---------------------------------------------------------
    def hook(self, handle: RemovableHandle) -> None:
        """Remember a hook this method registered on the model (`detach` removes it)."""
        self._handles.append(handle)

    def wrap(self, parent: nn.Module, attribute: str, wrapper: nn.Module) -> nn.Module:
        """Put `wrapper` (which keeps the module it replaces as `.inner`) in place of `parent.attribute`."""
        setattr(parent, attribute, wrapper)
        self._wrappers.append(wrapper)
        return wrapper

    def detach(self) -> None:
        """Take the method off the model: hooks removed, each wrapper replaced by the module it wraps (wherever
        it now sits, other adapters' wrappers around it included), and its parameters dropped."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        mine = {id(wrapper) for wrapper in self._wrappers}
        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                while id(child) in mine:
                    child = child.inner
                    setattr(parent, name, child)
        self._wrappers.clear()
        self.modules.clear()
        self.training_modules.clear()

    # -- sizing ---------------------------------------------------------------------------------------
    @classmethod
    def max_knob(cls, model: BlipForConditionalGeneration, towers: str) -> int | None:
        """The largest knob value this method accepts on this model (None: the method has no knob)."""
        return None

    # -- parameters -----------------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The stored parameters under their state-dict keys."""
        return self.modules.named_parameters()

    def parameters(self) -> Iterator[nn.Parameter]:
        return (param for _, param in self.named_parameters())

    def train_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimizer updates: the stored parameters, unless a training-time form produces them."""
        return self.parameters()

    def fold(self) -> None:
        """After training: write any training-time form into the stored parameters (a no-op here)."""

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.modules.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.modules.load_state_dict(state, strict=True)

    def touches_vision(self) -> bool:
        return "vision" in TOWER_CHOICES[self.towers]

    # -- hooks the decoder asks for (embedding composition on the text side) ----------------------------
    def text_prompt(self, batch_size: int) -> torch.Tensor | None:
        """Embeddings [B, P, d] joined before the decoder's input embeddings, or None."""
        return None

    def text_prefix(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per decoder layer, (key, value) prefixes [B, heads, P, head_dim] for the self-attention, or None."""
        return None

    def set_active(self, active: bool) -> None:
        """Called when the active adapter changes; methods whose modules cannot read the context (peft's own
        forward) override it."""

    @property
    def active(self) -> bool:
        return self.ctx.active == self.adapter


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name not in CATALOG:
        raise ValueError(f"method {cls.name!r} has no entry in training/catalog.py")
    info = CATALOG[cls.name]
    cls.family, cls.knob, cls.summary = info.family, info.knob, info.summary
    if info.default_lr is not None:
        cls.default_lr = info.default_lr
    METHODS[cls.name] = cls
    return cls


def linear_init(weight: torch.Tensor, generator: torch.Generator) -> None:
    """nn.Linear's default weight initialisation (kaiming-uniform, a=sqrt(5)), from a given generator."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)


def bias_init(fan_in: int) -> Callable[[torch.Tensor, torch.Generator], None]:
    """nn.Linear's default bias initialisation, uniform in +-1/sqrt(fan_in), from a given generator."""
    bound = 1 / math.sqrt(fan_in)
    return lambda bias, generator: nn.init.uniform_(bias, -bound, bound, generator=generator)


def smallest_hidden(model: BlipForConditionalGeneration, towers: str) -> int:
    """The narrowest hidden size among the chosen towers (the most a rank or bottleneck width can be)."""
    dims = {"text": model.config.text_config.hidden_size, "vision": model.config.vision_config.hidden_size}
    return min(dims[t] for t in TOWER_CHOICES[towers])
