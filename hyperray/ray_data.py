"""The task-grouped Ray Data stream: groups in the driver, tokens in Ray Data, batches on workers.

Each row of the dataset is one packed group -- one task's text, its second demonstration text
for the consistency loss, and its (prompt, answer) rows -- drawn from the stage's group stream
(:func:`~hyperray.build.build_groups`), which visits every task once per epoch in a fresh order,
so no task is starved. Ray Data tokenises the rows (``map_batches`` with the
:class:`~hyperray.batching.Collator`'s tokeniser, in an actor that loads the tokenizer once);
workers receive equal shards (``get_dataset_shard``; Train's ``DataConfig`` splits with
``streaming_split(equal=True)``, so every rank takes the same number of DeepSpeed steps) and
read ``groups_per_batch`` rows at a time, padded into a :class:`~hyperray.batching.TaskBatch`.

Rows stay whole groups because ``groupby().map_groups()`` does not keep batch boundaries, and
batches are assembled by hand because ``iter_torch_batches`` cannot carry the string columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np

from hyperray.batching import Collator, Group, TaskBatch
from hyperray.config import Config, from_dict, to_dict
from hyperray.data import Task


def groups_per_batch(config: Config) -> int:
    """Groups in one mini-batch: one per task when fine-tuning, one per example when pretraining."""
    data = config.data
    if config.train.stage == "pretrain":
        return data.tasks_per_batch * data.rows_per_task
    return data.tasks_per_batch


def group_rows(config: Config, tasks: list[Task], num_batches: int) -> list[dict[str, Any]]:
    """The first ``num_batches`` mini-batches of the stage's group stream, one row per group."""
    from hyperray.build import build_groups

    rows = []
    for batch in islice(build_groups(config, tasks), num_batches):
        for g in batch:
            rows.append(
                {
                    "task": g.task,
                    "task_text": g.task_text,
                    "alt_task_text": g.alt_task_text or "",
                    "has_alt": g.alt_task_text is not None,
                    "prompts": [p for p, _ in g.rows],
                    "answers": [a for _, a in g.rows],
                }
            )
    return rows


def build_dataset(config: Config, tasks: list[Task], num_batches: int):
    """A Ray Dataset of ``num_batches`` tokenised mini-batches' worth of groups."""
    import ray.data

    dataset = ray.data.from_items(group_rows(config, tasks, num_batches))
    return dataset.map_batches(
        Tokeniser,
        fn_constructor_kwargs={"config": to_dict(config)},
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )


class Tokeniser:
    """Ray Data actor: adds ``prompt_ids`` and ``answer_ids`` (one id list per row of a group)."""

    def __init__(self, config: dict[str, Any]):
        from hyperray.models import load_target_model

        cfg = from_dict(config)
        target = load_target_model(cfg.model.name, cfg.model.dtype, cfg.model.cache_dir)
        self.collator = Collator(
            target.tokenizer,
            target.is_encoder_decoder,
            cfg.model.chat_template,
            cfg.data.max_prompt_tokens,
            cfg.data.max_answer_tokens,
        )

    def __call__(self, frame):
        ids = [
            self.collator.tokenise(Group("", tuple(zip(prompts, answers, strict=True))))
            for prompts, answers in zip(frame["prompts"], frame["answers"], strict=True)
        ]
        frame["prompt_ids"] = [[p for p, _ in rows] for rows in ids]
        frame["answer_ids"] = [[a for _, a in rows] for rows in ids]
        return frame.drop(columns=["prompts", "answers"])


def collate(batch: dict[str, np.ndarray], collator: Collator) -> TaskBatch:
    """Pad one numpy batch of tokenised group rows into a TaskBatch."""
    has_alt = bool(np.all(batch["has_alt"]))
    return collator.assemble(
        [str(t) for t in batch["task_text"]],
        [str(t) if has_alt else None for t in batch["alt_task_text"]],
        [str(t) for t in batch["task"]],
        [
            list(zip(prompts, answers, strict=True))
            for prompts, answers in zip(batch["prompt_ids"], batch["answer_ids"], strict=True)
        ],
    )


def task_batches(shard, collator: Collator, batch_size: int) -> Iterator[TaskBatch]:
    """Endless TaskBatches from a worker's dataset shard, starting it over when it runs out."""
    while True:
        empty = True
        for batch in shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", drop_last=True
        ):
            empty = False
            yield collate(batch, collator)
        if empty:
            raise ValueError(
                f"this worker's data shard holds fewer than {batch_size} groups; "
                "lower train.num_workers or data.tasks_per_batch"
            )
