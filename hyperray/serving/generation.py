"""Answering a batch of requests that each use their own adapter, in one generation pass.

Each request is a row: its prompt tokens, its adapter, its token budget. Rows are left-padded
into one batch and decoded greedily with every row's LoRA applied to that row only (the same
per-row hooks as training), for as many steps as the largest budget; each row is then cut to its
own budget. Greedy decoding makes a row's first k tokens independent of the budget, so a row
gets the answer it would get alone. Adapter weights are generated on first use and kept in an
LRU; ``generate_adapter`` is deterministic, so a regenerated adapter equals the evicted one.
Plain PyTorch: no Ray here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hyperray.lora import Adapter, stack_adapters
from hyperray.model import HyperLoRA, cut_at
from hyperray.serving.store import LRU, TaskSpec


@dataclass(frozen=True)
class Row:
    adapter_id: str
    task: TaskSpec
    prompt_ids: tuple[int, ...]
    max_tokens: int
    ignore_eos: bool = False
    """Decode all ``max_tokens`` tokens, past the end token (fixed-length benchmarks)."""


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: list[int]
    finish_reason: str
    """"stop" (the model ended its answer) or "length" (the row's budget ran out)."""
    prompt_tokens: int
    batch_size: int
    """The most rows decoded together while this answer was produced (its pass, or its batch)."""
    adapter_generated: bool
    """This row's adapter was generated for this pass (not found in the cache)."""


class AdapterCache:
    """Generated adapters of one model by adapter id, at most ``capacity`` of them."""

    def __init__(self, model: HyperLoRA, capacity: int):
        self.model = model
        self._adapters: LRU[str, Adapter] = LRU(capacity)
        self.generated = 0

    def get(self, adapter_id: str, task: TaskSpec) -> tuple[Adapter, bool]:
        """The adapter for ``adapter_id`` and whether it had to be generated now."""
        adapter = self._adapters.get(adapter_id)
        if adapter is not None:
            return adapter, False
        adapter = self.model.generate_adapter(task.definition, _examples(task))
        self._adapters.put(adapter_id, adapter)
        self.generated += 1
        return adapter, True


def chat_prompt_ids(model: HyperLoRA, messages: Sequence[dict[str, str]]) -> list[int]:
    """Chat messages as the target model reads them: its chat template, or the contents joined."""
    collator, tokenizer = model.collator, model.tokenizer
    if collator.chat and not collator.is_encoder_decoder:
        text = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-collator.max_prompt_tokens :]
    return collator.prompt_ids("\n".join(m["content"] for m in messages))


def answer_rows(model: HyperLoRA, cache: AdapterCache, rows: Sequence[Row]) -> list[Answer]:
    """One greedy generation pass over ``rows``, each row under its own adapter."""
    adapters, generated = [], []
    for row in rows:
        adapter, new = cache.get(row.adapter_id, row.task)
        adapters.append(adapter)
        generated.append(new)
    budget = max(row.max_tokens for row in rows)
    # Rows that stop at their end token are cut there afterwards: greedy tokens before it are
    # the same whether or not decoding went on.
    stop = not any(row.ignore_eos for row in rows)
    outputs = model.generate_ids(
        [row.prompt_ids for row in rows], stack_adapters(adapters), budget, stop_at_end=stop
    )
    return [
        make_answer(model, row, ids, len(rows), new)
        for row, ids, new in zip(rows, outputs, generated, strict=True)
    ]


def make_answer(
    model: HyperLoRA, row: Row, ids: list[int], batch_size: int, adapter_generated: bool
) -> Answer:
    """A row's decoded tokens as its answer: cut at the end token, then at its budget."""
    if not row.ignore_eos:
        ids = cut_at(ids, model.collator.end)
    stopped = len(ids) < row.max_tokens
    ids = ids[: row.max_tokens]
    return Answer(
        text=model.tokenizer.decode(ids, skip_special_tokens=True).strip(),
        token_ids=ids,
        finish_reason="stop" if stopped else "length",
        prompt_tokens=len(row.prompt_ids),
        batch_size=batch_size,
        adapter_generated=adapter_generated,
    )


def _examples(task: TaskSpec) -> list[dict[str, str]]:
    return [{"input": i, "output": o} for i, o in task.examples]
