"""Task-grouped mini-batches: which rows share a task, and their tokens.

A mini-batch holds ``tasks_per_batch`` groups. A group is one task's text (definition plus k
positive examples, as the hypernetwork reads it), optionally a second text built from different
demonstrations of the same task (for the consistency loss), and ``rows_per_task`` (prompt,
answer) rows for the target model. Only answer tokens are scored.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hyperray.data import Example, PretrainExample, Task, format_instance, format_task_text

IGNORE = -100


@dataclass(frozen=True)
class Group:
    task_text: str
    rows: tuple[tuple[str, str], ...]
    """(prompt, answer) pairs the target model is trained on."""
    alt_task_text: str | None = None
    task: str = ""


@dataclass
class TaskBatch:
    task_texts: list[str]
    alt_task_texts: list[str] | None
    row_task: Tensor  # (N,) index into task_texts
    input_ids: Tensor  # (N, T)
    attention_mask: Tensor  # (N, T)
    labels: Tensor  # (N, T) causal: aligned with input_ids; seq2seq: decoder targets
    tasks: list[str]

    @property
    def num_tokens(self) -> int:
        """Tokens the target model reads (prompt and answer)."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(
            self.task_texts,
            self.alt_task_texts,
            self.row_task.to(device),
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.tasks,
        )


def demo_text(task: Task, examples: Sequence[Example]) -> str:
    return format_task_text(task.definition, examples)


def instruction_groups(
    tasks: Sequence[Task],
    tasks_per_batch: int,
    rows_per_task: int,
    num_demos: int = 2,
    include_definition: bool = False,
    with_alt: bool = False,
    seed: int = 0,
) -> Iterator[list[Group]]:
    """Endless task-grouped batches: every task once per epoch in a fresh order, none starved."""
    rng = random.Random(seed)
    cursors = {t.name: 0 for t in tasks}
    orders = {t.name: rng.sample(range(len(t.instances)), len(t.instances)) for t in tasks}
    queue: list[Task] = []
    while True:
        batch = []
        for _ in range(tasks_per_batch):
            if not queue:
                queue = rng.sample(list(tasks), len(tasks))
            task = queue.pop()
            picked = []
            for _ in range(rows_per_task):
                order = orders[task.name]
                picked.append(task.instances[order[cursors[task.name] % len(order)]])
                cursors[task.name] += 1
            rows = tuple(
                (
                    format_instance(i.input, task.definition if include_definition else None),
                    i.outputs[0],
                )
                for i in picked
            )
            alt = None
            if with_alt:
                alt = demo_text(
                    task, alternative_demos(task, num_demos, {i.id for i in picked}, rng)
                )
            batch.append(
                Group(demo_text(task, task.positive_examples[:num_demos]), rows, alt, task.name)
            )
        yield batch


def pretrain_groups(
    examples: Sequence[PretrainExample], batch_size: int, seed: int = 0
) -> Iterator[list[Group]]:
    """Endless batches of pretraining examples; each is its own group, its context the task text."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        batch = []
        for _ in range(batch_size):
            if not order:
                order = rng.sample(range(len(examples)), len(examples))
            e = examples[order.pop()]
            batch.append(Group(e.context, ((e.prompt, e.completion),), None, "pretrain"))
        yield batch


def alternative_demos(task: Task, k: int, exclude: set[str], rng: random.Random) -> list[Example]:
    """k demonstrations other than the canonical first k positive examples, if the task has them."""
    pool = list(task.positive_examples[k:]) + [
        Example(i.input, i.outputs[0]) for i in task.instances if i.id not in exclude
    ]
    return rng.sample(pool, k) if len(pool) >= k else list(task.positive_examples[:k])


class Collator:
    """Tokenises groups into a :class:`TaskBatch` for a causal or an encoder-decoder target."""

    def __init__(
        self,
        tokenizer,
        is_encoder_decoder: bool,
        chat_template: bool = True,
        max_prompt_tokens: int = 256,
        max_answer_tokens: int = 64,
    ):
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.chat = chat_template and getattr(tokenizer, "chat_template", None) is not None
        self.max_prompt_tokens = max_prompt_tokens
        self.max_answer_tokens = max_answer_tokens
        self.end = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end

    def prompt(self, text: str) -> str:
        if self.chat and not self.is_encoder_decoder:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
        return text

    def prompt_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(self.prompt(text), add_special_tokens=not self.chat)["input_ids"]
        return ids[-self.max_prompt_tokens :]

    def answer_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[: self.max_answer_tokens - 1] + [self.end]

    def tokenise(self, group: Group) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids) of each of a group's rows."""
        return [(self.prompt_ids(p), self.answer_ids(a)) for p, a in group.rows]

    def __call__(self, groups: Sequence[Group]) -> TaskBatch:
        return self.assemble(
            [g.task_text for g in groups],
            [g.alt_task_text for g in groups],
            [g.task for g in groups],
            [self.tokenise(g) for g in groups],
        )

    def assemble(
        self,
        task_texts: Sequence[str],
        alt_task_texts: Sequence[str | None],
        tasks: Sequence[str],
        token_rows: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]],
    ) -> TaskBatch:
        """Pad already tokenised groups (one list of (prompt, answer) ids each) into a batch."""
        rows, row_task = [], []
        for g, group_rows in enumerate(token_rows):
            rows += [(list(p), list(a)) for p, a in group_rows]
            row_task += [g] * len(group_rows)
        if self.is_encoder_decoder:
            input_ids, attention_mask = pad([p for p, _ in rows], self.pad)
            labels, _ = pad([a for _, a in rows], IGNORE)
        else:
            input_ids, attention_mask = pad([p + a for p, a in rows], self.pad)
            labels, _ = pad([[IGNORE] * len(p) + a for p, a in rows], IGNORE)
        alts = list(alt_task_texts)
        return TaskBatch(
            task_texts=list(task_texts),
            alt_task_texts=alts if all(a is not None for a in alts) else None,
            row_task=torch.tensor(row_task),
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            tasks=list(tasks),
        )


def pad(sequences: Sequence[list[int]], value: int) -> tuple[Tensor, Tensor]:
    """Right-pad to the longest sequence: (N, T) ids and (N, T) mask."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
