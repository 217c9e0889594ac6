"""A BLIP model with any number of PEFT adapters on one frozen base, one of them active at a time, and the
decoding loop they share.

The decoder forward and the greedy decoder are written here (not `generate`) because prompt and prefix
tuning need to put vectors before the text and keys/values into the self-attention cache, which
`generate` cannot do on BLIP (see the design notes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from training.errors import UserError
from training.methods import METHODS, AdapterContext, Method
from training.model.base_model import BaseModel
from training.model.blip_internals import (
    CACHE_KEYWORD,
    DynamicCache,
    DynamicLayer,
    EncoderDecoderCache,
    self_attention_layers,
    text_layers,
    vision_embeddings,
    word_embeddings,
)


class ReservedLayer(DynamicLayer):
    """A self-attention cache layer that writes each step's keys and values into room reserved for the whole
    decode. DynamicLayer concatenates, copying the whole cache at every step (a quadratic cost in the output
    length, and most of a 20-token caption's decoding time with a prompt-length cache on six rows)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        super().__init__()
        length = keys.shape[2]
        self._keys = keys.new_empty((*keys.shape[:2], length + room, keys.shape[3]))
        self._values = values.new_empty((*values.shape[:2], length + room, values.shape[3]))
        self._keys[:, :, :length] = keys
        self._values[:, :, :length] = values
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, end = self.keys.shape[2], self.keys.shape[2] + key_states.shape[2]
        if end > self._keys.shape[2]:
            return super().update(key_states, value_states, *args, **kwargs)
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


class VLModel:
    def __init__(self, base: BaseModel) -> None:
        self.base = base
        self.model = base.model
        self.tokenizer = base.tokenizer
        self.ctx = AdapterContext()
        self.adapters: dict[str, Method] = {}
        text = self.model.config.text_config
        self.bos_id, self.sep_id, self.pad_id = text.bos_token_id, text.sep_token_id, text.pad_token_id
        self.max_positions = text.max_position_embeddings
        # Leading positions (prompt vectors) whose last-layer outputs nothing reads: see _text_positions_only.
        self._unread_positions = 0
        last = text_layers(self.model)[-1]
        if hasattr(last, "crossattention"):
            last.crossattention.register_forward_pre_hook(self._text_positions_only, with_kwargs=True)

    def _text_positions_only(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """In the last decoder layer, the outputs at prompt-vector positions feed nothing: no label, no later
        layer, and their self-attention keys and values (what the text positions and the cache read) are
        computed before this point. So the cross-attention and the feed-forward block after it run on the
        text positions only (prompt tuning's 47-93 vectors are most of the sequence on the embedded default)."""
        skip = self._unread_positions
        if not skip:
            return None
        hidden = args[0][:, skip:]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4 and mask.shape[2] == args[0].shape[1]:
            kwargs["attention_mask"] = mask[:, :, skip:]
        return (hidden, *args[1:]), kwargs

    @contextmanager
    def _unread(self, positions: int) -> Iterator[None]:
        self._unread_positions = positions
        try:
            yield
        finally:
            self._unread_positions = 0

    @property
    def device(self) -> torch.device:
        return vision_embeddings(self.model).patch_embedding.weight.device

    # -- adapters -------------------------------------------------------------------------------------
    def attach(
        self,
        method: str,
        adapter: str,
        towers: str = "both",
        knob_value: int | None = None,
        *,
        seed: int = 0,
        options: dict | None = None,
    ) -> Method:
        """Build `method` on the model under the name `adapter`; `seed` drives its initialisation and
        `options` are its method-specific choices (see training/methods/base.py)."""
        if method not in METHODS:
            raise UserError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        if adapter in self.adapters:
            raise ValueError(f"an adapter named {adapter!r} is already attached")
        attached = METHODS[method](
            self.model, self.ctx, adapter, towers, knob_value, seed=seed, options=options, tokenizer=self.tokenizer
        )
        self.adapters[adapter] = attached
        # Parameters that no wrapped layer holds (prompts, prefixes, and training-only modules such as the
        # prefix MLP) join the model here, so they move with .to(device) and count among model.parameters().
        if not hasattr(self.model, "peft_adapters"):
            self.model.peft_adapters = nn.ModuleDict()
            self.model.peft_training = nn.ModuleDict()
        self.model.peft_adapters[adapter] = attached.modules
        self.model.peft_training[adapter] = attached.training_modules
        self.set_active(self.ctx.active)
        return attached

    def detach(self, adapter: str) -> None:
        """Take an adapter off the model (hooks, wrappers and weights); the others stay as they were."""
        method = self.adapters.pop(adapter)
        if self.ctx.active == adapter:
            self.set_active(None)
        method.detach()
        del self.model.peft_adapters[adapter], self.model.peft_training[adapter]
        if not self.adapters:
            del self.model.peft_adapters, self.model.peft_training

    def set_active(self, adapter: str | None) -> None:
        """Make one adapter act (None: the plain base model)."""
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(adapter)
        self.ctx.active = adapter
        for attached in self.adapters.values():
            attached.set_active(False)
        if adapter is not None:
            self.adapters[adapter].set_active(True)

    @property
    def active(self) -> Method | None:
        return self.adapters.get(self.ctx.active) if self.ctx.active else None

    def freeze_all_but(self, adapter: str) -> int:
        """requires_grad only on what the adapter trains (`train_parameters`); returns its stored trainable
        count (`num_trainable`, what the budget counts), which is the same number unless a training-time form
        (reparametrised prefixes) produces the stored parameters."""
        for param in self.model.parameters():
            param.requires_grad_(False)
        for param in self.adapters[adapter].train_parameters():
            param.requires_grad_(True)
        return self.adapters[adapter].num_trainable()

    # -- forward pieces -------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision tower's output tokens, which the decoder cross-attends to."""
        dtype = vision_embeddings(self.model).patch_embedding.weight.dtype
        return self.model.vision_model(pixel_values=pixel_values.to(self.device, dtype)).last_hidden_state

    def _decoder_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Embeddings (or ids), position ids, mask and a fresh cache, with the active adapter's prompt or prefix."""
        batch, length = input_ids.shape
        method = self.active
        prompt = method.text_prompt(batch) if method else None
        prefix = method.text_prefix(batch) if method else None
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0).expand(batch, -1)
        inputs: dict = {"input_ids": input_ids}
        if prompt is not None:
            words = word_embeddings(self.model)(input_ids)
            # A fresh tensor (torch.cat): BLIP adds position embeddings to inputs_embeds in place.
            inputs = {"inputs_embeds": torch.cat([prompt.to(words.dtype), words], dim=1)}
            # Prompt vectors sit at position 0 so the text keeps the positions it had in pre-training.
            positions = torch.cat([torch.zeros_like(positions[:, :1]).expand(-1, prompt.shape[1]), positions], 1)
            attention_mask = torch.cat([attention_mask.new_ones(batch, prompt.shape[1]), attention_mask], dim=1)
        self_cache = DynamicCache()
        if prefix is not None:
            for index, (key, value) in enumerate(prefix):
                self_cache.update(key, value, index)
            attention_mask = torch.cat([attention_mask.new_ones(batch, prefix[0][0].shape[2]), attention_mask], 1)
        cache = EncoderDecoderCache(self_cache, DynamicCache())
        skip = prompt.shape[1] if prompt is not None else 0
        return inputs, positions, attention_mask, cache, skip

    def text_logits(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced logits [B, T, vocab] at the text positions (prompt-tuning positions dropped)."""
        input_ids = input_ids.to(self.device)
        return self._run_decoder(image_embeds, input_ids, attention_mask.to(self.device), last_only=False)[0].logits

    def _run_decoder(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_only: bool
    ):
        """The text (after the active adapter's prompt or prefix) through the decoder with a fresh cache: the
        output and the self-attention mask. Only the text positions leave the last layer and reach the LM head
        (prompt-tuning positions never have a label), or only the last one (`last_only`)."""
        inputs, positions, mask, cache, skip = self._decoder_inputs(input_ids, attention_mask)
        keep = 1 if last_only else (input_ids.shape[1] if skip else 0)
        with self._unread(skip):
            out = self.model.text_decoder(
                **inputs,
                attention_mask=mask,
                position_ids=positions,
                encoder_hidden_states=image_embeds,
                use_cache=True,
                logits_to_keep=keep,
                **{CACHE_KEYWORD: cache},
            )
        return out, mask

    def loss(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Next-token cross-entropy on the label positions (-100 elsewhere: padding, prompt, question)."""
        logits = self.text_logits(image_embeds, input_ids, attention_mask)
        labels = labels.to(logits.device)
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    def token_limit(self, prompt_length: int, max_new_tokens: int) -> int:
        """How many tokens `generate` may produce after a prompt: max_new_tokens, or fewer where the decoder's
        positions run out. An output this long was cut by the limit (it never chose [SEP])."""
        return max(0, min(max_new_tokens, self.max_positions - prompt_length))

    @torch.inference_mode()
    def generate(
        self,
        image_embeds: torch.Tensor,
        prompts: list[list[int]],
        max_new_tokens: int = 20,
        return_logits: bool = False,
    ):
        """Greedy decoding of each prompt (token ids starting with BOS) against its row of image_embeds, with
        the active adapter acting on every row.

        Returns the new token ids per row (without the prompt, up to and excluding [SEP]); with
        return_logits, also the logits of every generated step (for tests that compare with teacher forcing).
        Runs in inference mode (not only without gradients): nothing it makes outlives the call but the token
        ids and logits, and the lighter bookkeeping takes 5-13 % off a Compare of 6 columns.
        """
        outputs: list[list[int] | None] = [None] * len(prompts)
        step_logits: list[torch.Tensor | None] = [None] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for index, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(index)
        for length, rows in by_length.items():
            ids = torch.tensor([prompts[i] for i in rows], device=self.device)
            tokens, logits = self._greedy(image_embeds[rows], ids, self.token_limit(length, max_new_tokens))
            for position, row in enumerate(rows):
                outputs[row] = tokens[position]
                step_logits[row] = logits[position] if logits is not None else None
        return (outputs, step_logits) if return_logits else outputs

    def _greedy(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, max_new: int):
        last, cache, mask = self._prefill(image_embeds, input_ids)
        return self._decode_steps(last, cache, mask, image_embeds, input_ids.shape[1], max_new)

    def _prefill(self, image_embeds: torch.Tensor, input_ids: torch.Tensor):
        """The prompt through the decoder: last position's logits, the cache and the self-attention mask."""
        out, mask = self._run_decoder(image_embeds, input_ids, torch.ones_like(input_ids), last_only=True)
        return out.logits[:, -1], getattr(out, CACHE_KEYWORD), mask

    def _decode_steps(
        self, last: torch.Tensor, cache, mask: torch.Tensor, image_embeds: torch.Tensor, length: int, max_new: int
    ):
        """Greedy steps after a prefill whose last logits are `last`; text positions continue at `length`."""
        batch = last.shape[0]
        decoder = self.model.text_decoder
        if max_new > 1:
            layers = self_attention_layers(cache)
            layers[:] = [ReservedLayer(layer.keys, layer.values, max_new - 1) for layer in layers]
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        tokens: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        for step in range(max_new):
            logits.append(last)
            next_ids = last.argmax(-1)
            tokens.append(torch.where(finished, torch.full_like(next_ids, self.sep_id), next_ids))
            finished |= next_ids == self.sep_id
            if finished.all() or step == max_new - 1:
                break
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            position = torch.full((batch, 1), length + step, device=self.device)
            out = decoder(
                input_ids=next_ids[:, None],
                attention_mask=mask,
                position_ids=position,
                encoder_hidden_states=image_embeds,
                use_cache=True,
                **{CACHE_KEYWORD: cache},
            )
            last, cache = out.logits[:, -1], getattr(out, CACHE_KEYWORD)
        result = []
        table = torch.stack(tokens, 1).tolist() if tokens else [[] for _ in range(batch)]
        for row in table:
            result.append(row[: row.index(self.sep_id)] if self.sep_id in row else row)
        stacked = torch.stack(logits, 1) if logits else None
        return result, stacked
