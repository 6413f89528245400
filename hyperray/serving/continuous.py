"""Continuous batching: requests join and leave a running greedy decode between steps.

A static batch waits for its slowest row and makes a request that arrives a moment late wait for
the whole pass. Here each model has one running batch, as in vLLM and TGI: a step either
prefills the rows that just arrived (each under its own LoRA, left-padded) and merges their KV
cache into the batch's, or decodes one token for every row. Rows leave as soon as they stop, and
the columns that only padding still uses are trimmed from the cache.

Left padding is exact: padded keys are masked out and every row keeps its own position ids, so a
row decodes what it would decode alone, up to float rounding. Causal decoders only; encoder-
decoders are answered a whole pass at a time (:class:`PassDecoder`). Torch work happens in
``step``, on the one thread that owns the model; :class:`Scheduler` feeds it from the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from hyperray.lora import Adapter, stack_adapters
from hyperray.model import HyperLoRA
from hyperray.serving.generation import AdapterCache, Answer, Row, answer_rows, make_answer

Key = Any
"""The caller's handle for a row (the scheduler's future); returned with the row's answer."""


@dataclass
class _Running:
    key: Key
    row: Row
    adapter: Adapter
    generated: bool
    position: int
    """Position id of the next input token: the prompt's length plus the tokens fed back so far."""
    tokens: list[int] = field(default_factory=list)
    peak: int = 0
    """The most rows decoded together while this row ran: the answer's ``batch_size``."""

    def done(self, end: int) -> bool:
        stopped = not self.row.ignore_eos and self.tokens[-1] == end
        return stopped or len(self.tokens) >= self.row.max_tokens


class ContinuousDecoder:
    """One causal model's running batch. Call :meth:`step` from the model's thread only."""

    def __init__(self, model: HyperLoRA, adapters: AdapterCache):
        self.model, self.adapters = model, adapters
        self.rows: list[_Running] = []
        self._cache: DynamicCache | None = None
        self._mask: Tensor | None = None  # (N, L): 1 where the cache holds a real token
        self._stacked: Adapter | None = None

    @staticmethod
    def supports(model: HyperLoRA) -> bool:
        """Causal models whose every layer keeps a plain growing cache (no sliding window)."""
        if model.is_encoder_decoder:
            return False
        layers = DynamicCache(config=model.target.config).layers
        return all(type(layer) is DynamicLayer for layer in layers)

    @torch.no_grad()
    def step(
        self, joining: list[tuple[Key, Row]], leaving: set[Key] = frozenset()
    ) -> tuple[list[tuple[Key, Answer]], list[tuple[Key, Exception]]]:
        """Admit ``joining`` (one prefill) or, with nobody joining, decode one token for all.

        ``leaving`` are keys whose callers gave up; their rows are dropped unanswered. Returns
        the rows that finished and the joining rows that failed (e.g. their adapter could not
        be generated); a failure of the pass itself raises, after :meth:`reset`.
        """
        failed: list[tuple[Key, Exception]] = []
        try:
            if leaving:
                self._keep([i for i, r in enumerate(self.rows) if r.key not in leaving])
            admitted = self._adapters_for(joining, failed)
            if admitted:
                self._prefill(admitted)
            elif self.rows:
                self._decode()
            return self._retire(), failed
        except Exception:
            self.reset()
            raise

    def reset(self) -> None:
        self.rows, self._cache, self._mask, self._stacked = [], None, None, None

    def _adapters_for(self, joining, failed) -> list[_Running]:
        admitted = []
        for key, row in joining:
            try:
                adapter, generated = self.adapters.get(row.adapter_id, row.task)
            except Exception as error:  # this request's task, not the batch's problem
                failed.append((key, error))
                continue
            admitted.append(_Running(key, row, adapter, generated, len(row.prompt_ids)))
        return admitted

    def _prefill(self, new: list[_Running]) -> None:
        model, device = self.model, self.model._device
        length = max(len(r.row.prompt_ids) for r in new)
        ids = torch.full((len(new), length), model.collator.pad, device=device)
        mask = torch.zeros((len(new), length), dtype=torch.long, device=device)
        for i, r in enumerate(new):
            prompt = torch.tensor(r.row.prompt_ids, device=device)
            ids[i, length - len(prompt) :] = prompt
            mask[i, length - len(prompt) :] = 1
        cache = DynamicCache(config=model.target.config)
        with model.hooks.apply(stack_adapters([r.adapter for r in new])):
            logits = model.target(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
        for r, token in zip(new, logits[:, -1].argmax(-1).tolist(), strict=True):
            r.tokens.append(token)
        if not self.rows:
            self._cache, self._mask = cache, mask
        else:
            self._cache, self._mask = _concat(self._cache, self._mask, cache, mask)
        self.rows += new
        self._stacked = None
        self._mark_peak()

    def _decode(self) -> None:
        model, device = self.model, self.model._device
        if self._stacked is None:
            self._stacked = stack_adapters([r.adapter for r in self.rows])
        ids = torch.tensor([[r.tokens[-1]] for r in self.rows], device=device)
        positions = torch.tensor([[r.position] for r in self.rows], device=device)
        mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=1)
        with model.hooks.apply(self._stacked):
            logits = model.target(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
        self._mask = mask
        for r, token in zip(self.rows, logits[:, -1].argmax(-1).tolist(), strict=True):
            r.tokens.append(token)
            r.position += 1
        self._mark_peak()

    def _retire(self) -> list[tuple[Key, Answer]]:
        end = self.model.collator.end
        finished = [r for r in self.rows if r.done(end)]
        if finished:
            self._keep([i for i, r in enumerate(self.rows) if not r.done(end)])
        return [
            (r.key, make_answer(self.model, r.row, r.tokens, r.peak, r.generated)) for r in finished
        ]

    def _keep(self, indices: list[int]) -> None:
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        self._stacked = None
        if not self.rows:
            self._cache = self._mask = None
            return
        index = torch.tensor(indices, device=self._mask.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        # Columns that only departed rows used are padding for everyone left: drop them.
        first = int(self._mask.any(0).nonzero()[0])
        if first:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self._mask = self._mask[:, first:]

    def _mark_peak(self) -> None:
        for r in self.rows:
            r.peak = max(r.peak, len(self.rows))


def _concat(
    cache: DynamicCache, mask: Tensor, other: DynamicCache, other_mask: Tensor
) -> tuple[DynamicCache, Tensor]:
    """Two batches' caches as one: the shorter is left-padded (masked) to the longer's length."""
    length = max(mask.shape[1], other_mask.shape[1])

    def pad(t: Tensor, dim: int) -> Tensor:
        missing = length - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for layer, new in zip(cache.layers, other.layers, strict=True):
        layer.keys = torch.cat([pad(layer.keys, -2), pad(new.keys, -2)])
        layer.values = torch.cat([pad(layer.values, -2), pad(new.values, -2)])
    return cache, torch.cat([pad(mask, 1), pad(other_mask, 1)])


class PassDecoder:
    """Encoder-decoders: the rows that join together are answered in one whole pass."""

    rows: tuple = ()

    def __init__(self, model: HyperLoRA, adapters: AdapterCache):
        self.model, self.adapters = model, adapters

    def step(self, joining, leaving=frozenset()):
        joining = [(key, row) for key, row in joining if key not in leaving]
        if not joining:
            return [], []
        answers = answer_rows(self.model, self.adapters, [row for _, row in joining])
        return [(key, a) for (key, _), a in zip(joining, answers, strict=True)], []

    def reset(self) -> None:
        pass


def decoder_for(model: HyperLoRA, adapters: AdapterCache) -> ContinuousDecoder | PassDecoder:
    return (ContinuousDecoder if ContinuousDecoder.supports(model) else PassDecoder)(
        model, adapters
    )


class Scheduler:
    """Feeds one decoder from the event loop: requests queue, and join at the next step.

    ``run`` executes a function on the model's thread. When the decoder is idle, the first
    request waits ``gather_s`` for others so that a burst shares one prefill. At most
    ``max_rows`` rows decode together; the rest wait their turn in arrival order.
    """

    def __init__(
        self,
        decoder: ContinuousDecoder | PassDecoder,
        run: Callable[..., Awaitable[Any]],
        max_rows: int,
        gather_s: float,
    ):
        self.decoder, self._run = decoder, run
        self.max_rows, self.gather_s = max_rows, gather_s
        self._waiting: list[tuple[asyncio.Future, Row]] = []
        self._driver: asyncio.Task | None = None

    async def submit(self, row: Row) -> Answer:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((future, row))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        return await future

    async def _drive(self) -> None:
        if self.gather_s:
            await asyncio.sleep(self.gather_s)
        while self._waiting or self.decoder.rows:
            room = self.max_rows - len(self.decoder.rows)
            joining, self._waiting = self._waiting[:room], self._waiting[room:]
            running = [r.key for r in self.decoder.rows]
            leaving = {f for f in running if f.done()}  # callers that went away
            try:
                finished, failed = await self._run(self.decoder.step, joining, leaving)
            except Exception as error:  # the pass broke: everyone in it hears why
                for future in [*running, *(f for f, _ in joining)]:
                    if not future.done():
                        future.set_exception(error)
                continue
            for future, result in finished:
                if not future.done():
                    future.set_result(result)
            for future, error in failed:
                if not future.done():
                    future.set_exception(error)
