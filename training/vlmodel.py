"""A BLIP model with any number of PEFT adapters on one frozen base, and the decoding loop they share.

The decoder forward and the greedy decoder are written here (not `generate`) because prompt and prefix
tuning need to put vectors before the text and keys/values into the self-attention cache, which
`generate` cannot do on BLIP (see the design notes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from training.base_model import BaseModel
from training.errors import UserError
from training.methods import METHODS, AdapterContext, Method


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


def _pad(tensor: torch.Tensor, dim: int, width: int, side: str) -> torch.Tensor:
    """Zeros on one side of `dim` up to `width`."""
    shape = list(tensor.shape)
    shape[dim] = width - tensor.shape[dim]
    if shape[dim] == 0:
        return tensor
    zeros = tensor.new_zeros(shape)
    return torch.cat([zeros, tensor] if side == "left" else [tensor, zeros], dim)


def _padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image embeddings [1, N_i, d] of several rows as one batch, right-padded, and its mask (None: no padding)."""
    width = max(row.shape[1] for row in rows)
    embeds = torch.cat([_pad(row, 1, width, "right") for row in rows])
    if all(row.shape[1] == width for row in rows):
        return embeds, None
    mask = torch.cat([_pad(torch.ones(row.shape[:2], dtype=torch.long, device=row.device), 1, width, "right")
                      for row in rows])  # fmt: skip
    return embeds, mask


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
        last = self.model.text_decoder.bert.encoder.layer[-1]
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
        return self.model.vision_model.embeddings.patch_embedding.weight.device

    # -- adapters -------------------------------------------------------------------------------------
    def attach(self, method: str, adapter: str, towers: str = "both", knob_value: int | None = None, *,
               seed: int = 0, options: dict | None = None) -> Method:  # fmt: skip
        """Build `method` on the model under the name `adapter`; `seed` drives its initialisation and
        `options` are its method-specific choices (see training/methods/base.py)."""
        if method not in METHODS:
            raise UserError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        if adapter in self.adapters:
            raise ValueError(f"an adapter named {adapter!r} is already attached")
        attached = METHODS[method](self.model, self.ctx, adapter, towers, knob_value, seed=seed, options=options,
                                   tokenizer=self.tokenizer)  # fmt: skip
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
        dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        return self.model.vision_model(pixel_values=pixel_values.to(self.device, dtype)).last_hidden_state

    @contextmanager
    def mixed(self, row_adapters: Sequence[str | None]) -> Iterator[None]:
        """Inside, batch row i runs through adapter row_adapters[i] (None: the plain base model).

        For side-by-side comparison: one batched forward or decode serves several adapters. Bottleneck
        adapters, LoRA updates and prefixes act on their own rows, and
        text prompts and prefixes of different lengths are left-padded and masked. Visual prompt tokens
        lengthen the image sequence, so rows of a prompt adapter with vision prompts cannot be encoded here.
        """
        unknown = [name for name in row_adapters if name is not None and name not in self.adapters]
        if unknown:
            raise KeyError(unknown[0])
        previous = self.ctx.active
        self.set_active(None)
        self.ctx.row_adapters = tuple(row_adapters)
        try:
            yield
        finally:
            self.ctx.row_adapters = None
            self.set_active(previous)

    def _row_methods(self, batch: int) -> list[Method | None]:
        if self.ctx.row_adapters is None:
            return [self.active] * batch
        if len(self.ctx.row_adapters) != batch:
            raise ValueError(f"a mixed batch names {len(self.ctx.row_adapters)} adapters for {batch} rows")
        return [self.adapters[name] if name is not None else None for name in self.ctx.row_adapters]

    def _text_prompt(self, methods: list[Method | None]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Prompt vectors [B, P, d] for the rows, and (mixed rows only) their mask [B, P]: left-padded."""
        if all(m is methods[0] for m in methods):
            return (methods[0].text_prompt(len(methods)) if methods[0] else None), None
        rows = [m.text_prompt(1) if m else None for m in methods]
        width = max((r.shape[1] for r in rows if r is not None), default=0)
        if width == 0:
            return None, None
        like = next(r for r in rows if r is not None)
        prompt = like.new_zeros(len(rows), width, like.shape[2])
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=like.device)
        for index, row in enumerate(rows):
            if row is not None:
                prompt[index, width - row.shape[1] :] = row[0]
                mask[index, width - row.shape[1] :] = 1
        return prompt, mask

    def _text_prefix(self, methods: list[Method | None]):
        """Per decoder layer (key, value) [B, heads, P, head_dim], and (mixed rows only) the mask [B, P]."""
        if all(m is methods[0] for m in methods):
            return (methods[0].text_prefix(len(methods)) if methods[0] else None), None
        rows = [m.text_prefix(1) if m else None for m in methods]
        width = max((r[0][0].shape[2] for r in rows if r is not None), default=0)
        if width == 0:
            return None, None
        like = next(r for r in rows if r is not None)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=like[0][0].device)
        layers = []
        for layer, (key_like, _) in enumerate(like):
            keys = key_like.new_zeros(len(rows), key_like.shape[1], width, key_like.shape[3])
            values = torch.zeros_like(keys)
            for index, row in enumerate(rows):
                if row is not None:
                    length = row[layer][0].shape[2]
                    keys[index, :, width - length :] = row[layer][0][0]
                    values[index, :, width - length :] = row[layer][1][0]
                    mask[index, width - length :] = 1
            layers.append((keys, values))
        return layers, mask

    def _decoder_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Embeddings (or ids), position ids, mask and a fresh cache, with the rows' prompts/prefixes."""
        batch, length = input_ids.shape
        methods = self._row_methods(batch)
        prompt, prompt_mask = self._text_prompt(methods)
        prefix, prefix_mask = self._text_prefix(methods)
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0).expand(batch, -1)
        inputs: dict = {"input_ids": input_ids}
        if prompt is not None:
            words = self.model.text_decoder.bert.embeddings.word_embeddings(input_ids)
            # A fresh tensor (torch.cat): BLIP adds position embeddings to inputs_embeds in place.
            inputs = {"inputs_embeds": torch.cat([prompt.to(words.dtype), words], dim=1)}
            # Prompt vectors sit at position 0 so the text keeps the positions it had in pre-training.
            positions = torch.cat([torch.zeros_like(positions[:, :1]).expand(-1, prompt.shape[1]), positions], 1)
            if prompt_mask is None:
                prompt_mask = attention_mask.new_ones(batch, prompt.shape[1])
            attention_mask = torch.cat([prompt_mask.to(attention_mask), attention_mask], dim=1)
        self_cache = DynamicCache()
        if prefix is not None:
            for index, (key, value) in enumerate(prefix):
                self_cache.update(key, value, index)
            if prefix_mask is None:
                prefix_mask = attention_mask.new_ones(batch, prefix[0][0].shape[2])
            attention_mask = torch.cat([prefix_mask.to(attention_mask), attention_mask], 1)
        cache = EncoderDecoderCache(self_cache, DynamicCache())
        skip = prompt.shape[1] if prompt is not None else 0
        return inputs, positions, attention_mask, cache, skip

    def text_logits(self, image_embeds: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Teacher-forced logits [B, T, vocab] at the text positions (prompt-tuning positions dropped)."""
        input_ids = input_ids.to(self.device)
        inputs, positions, mask, cache, skip = self._decoder_inputs(input_ids, attention_mask.to(self.device))
        # Only the text positions leave the last layer and go through the LM head (prompt-tuning positions
        # never have a label).
        with self._unread(skip):
            out = self.model.text_decoder(
                **inputs, attention_mask=mask, position_ids=positions, encoder_hidden_states=image_embeds,
                cache=cache, use_cache=True, logits_to_keep=input_ids.shape[1] if skip else 0,
            )  # fmt: skip
        return out.logits

    def loss(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Next-token cross-entropy on the label positions (-100 elsewhere: padding, prompt, question)."""
        logits = self.text_logits(image_embeds, input_ids, attention_mask)
        labels = labels.to(logits.device)
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    @torch.no_grad()
    def generate(self, image_embeds: torch.Tensor, prompts: list[list[int]], max_new_tokens: int = 20,
                 return_logits: bool = False, image_mask: torch.Tensor | None = None):  # fmt: skip
        """Greedy decoding of each prompt (token ids starting with BOS) against its row of image_embeds.

        image_mask [B, N] (1 = a real image token) lets rows with image sequences of different lengths
        (visual prompt tokens) share a batch: the shorter ones are right-padded and masked.

        Returns the new token ids per row (without the prompt, up to and excluding [SEP]); with
        return_logits, also the logits of every generated step (for tests that compare with teacher forcing).
        """
        outputs: list[list[int] | None] = [None] * len(prompts)
        step_logits: list[torch.Tensor | None] = [None] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for index, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(index)
        mixed = self.ctx.row_adapters
        for length, rows in by_length.items():
            max_new = max(0, min(max_new_tokens, self.max_positions - length))
            ids = torch.tensor([prompts[i] for i in rows], device=self.device)
            if mixed is not None:  # a mixed batch: each group keeps its rows' adapters
                self.ctx.row_adapters = tuple(mixed[i] for i in rows)
            try:
                mask = image_mask[rows] if image_mask is not None else None
                tokens, logits = self._greedy(image_embeds[rows], ids, max_new, mask)
            finally:
                self.ctx.row_adapters = mixed
            for position, row in enumerate(rows):
                outputs[row] = tokens[position]
                step_logits[row] = logits[position] if logits is not None else None
        return (outputs, step_logits) if return_logits else outputs

    def _greedy(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, max_new: int,
                image_mask: torch.Tensor | None = None):  # fmt: skip
        last, cache, mask = self._prefill(image_embeds, input_ids, image_mask)
        return self._decode_steps(last, cache, mask, image_embeds, image_mask, input_ids.shape[1], max_new)

    def _prefill(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, image_mask: torch.Tensor | None):
        """The prompt through the decoder: last position's logits, the cache and the self-attention mask."""
        inputs, positions, mask, cache, skip = self._decoder_inputs(input_ids, torch.ones_like(input_ids))
        with self._unread(skip):
            out = self.model.text_decoder(
                **inputs, attention_mask=mask, position_ids=positions, encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask, cache=cache, use_cache=True, logits_to_keep=1,
            )  # fmt: skip
        return out.logits[:, -1], out.cache, mask

    @torch.no_grad()
    def generate_groups(self, groups: Sequence[Sequence[tuple[str | None, torch.Tensor]]], prompt: list[int],
                        max_new_tokens: int = 20, return_logits: bool = False):  # fmt: skip
        """Greedy decoding of one prompt for groups of rows, each row an (adapter name, image embeddings
        [1, N, d]) pair, where the groups cannot share a prefill: prompt-tuned rows carry their prompt vectors,
        which would lengthen every row of a shared prefill. Each group is prefilled on its own; then the
        caches are merged (self-attention keys left-padded, cross-attention keys right-padded, both masked)
        and every row decodes in one loop; a group whose rows all end at their first token (short VQA
        answers) needs no step and is left out of the merge. Image sequences of different lengths (visual
        prompt tokens) are right-padded and masked. Returns the new token ids per row, groups in order (with
        return_logits, also each row's logits at every step [steps, vocab])."""
        max_new = max(0, min(max_new_tokens, self.max_positions - len(prompt)))
        prefills = []
        for rows in groups:
            embeds, image_mask = _padded([features for _, features in rows])
            ids = torch.tensor([prompt] * len(rows), device=self.device)
            with self.mixed([name for name, _ in rows]):
                prefills.append((*self._prefill(embeds, ids, image_mask), embeds, image_mask))
        results: list[tuple[list, list] | None] = [None] * len(groups)  # (tokens, logits) per group
        pending = []
        for index, (last, *_) in enumerate(prefills):
            if max_new > 0 and bool((last.argmax(-1) == self.sep_id).all()):
                results[index] = ([[] for _ in groups[index]], list(last[:, None]))
            else:
                pending.append(index)
        if pending:
            merged = prefills[pending[0]] if len(pending) == 1 else self._merge([prefills[i] for i in pending])
            with self.mixed([name for i in pending for name, _ in groups[i]]):
                tokens, logits = self._decode_steps(*merged, len(prompt), max_new)
            row_logits = list(logits) if logits is not None else [None] * len(tokens)
            start = 0
            for index in pending:
                end = start + len(groups[index])
                results[index] = (tokens[start:end], row_logits[start:end])
                start = end
        tokens = [row for group_tokens, _ in results for row in group_tokens]
        return (tokens, [row for _, group_logits in results for row in group_logits]) if return_logits else tokens

    def _merge(self, prefills: list) -> tuple:
        """One batch from several prefilled groups (see generate_groups)."""
        self_width = max(mask.shape[1] for _, _, mask, _, _ in prefills)
        image_width = max(embeds.shape[1] for _, _, _, embeds, _ in prefills)
        self_cache, cross_cache = DynamicCache(), DynamicCache()
        for index in range(len(self.model.text_decoder.bert.encoder.layer)):
            sides = ((self_cache, "left", self_width, "self_attention_cache"),
                     (cross_cache, "right", image_width, "cross_attention_cache"))  # fmt: skip
            for target, side, width, part in sides:
                layers = [getattr(cache, part).layers[index] for _, cache, _, _, _ in prefills]
                target.update(torch.cat([_pad(layer.keys, 2, width, side) for layer in layers]),
                              torch.cat([_pad(layer.values, 2, width, side) for layer in layers]), index)  # fmt: skip
        masks = []
        for _, _, _, embeds, image_mask in prefills:
            if image_mask is None:
                image_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            masks.append(_pad(image_mask, 1, image_width, "right"))
        image_mask = torch.cat(masks)
        return (torch.cat([last for last, _, _, _, _ in prefills]), EncoderDecoderCache(self_cache, cross_cache),
                torch.cat([_pad(mask, 1, self_width, "left") for _, _, mask, _, _ in prefills]),
                torch.cat([_pad(embeds, 1, image_width, "right") for _, _, _, embeds, _ in prefills]),
                None if bool(image_mask.all()) else image_mask)  # fmt: skip

    def _decode_steps(self, last: torch.Tensor, cache, mask: torch.Tensor, image_embeds: torch.Tensor,
                      image_mask: torch.Tensor | None, length: int, max_new: int):  # fmt: skip
        """Greedy steps after a prefill whose last logits are `last`; text positions continue at `length`."""
        batch = last.shape[0]
        decoder = self.model.text_decoder
        if max_new > 1:
            layers = cache.self_attention_cache.layers
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
            out = decoder(input_ids=next_ids[:, None], attention_mask=mask, position_ids=position,
                          encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask, cache=cache,
                          use_cache=True)  # fmt: skip
            last, cache = out.logits[:, -1], out.cache
        result = []
        table = torch.stack(tokens, 1).tolist() if tokens else [[] for _ in range(batch)]
        for row in table:
            result.append(row[: row.index(self.sep_id)] if self.sep_id in row else row)
        stacked = torch.stack(logits, 1) if logits else None
        return result, stacked
