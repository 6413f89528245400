"""Builders: a :class:`~hyperray.config.Config` in, ready objects out.

The only place that reads configs; the modules it wires together take flat arguments.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hyperray.batching import Collator, Group, instruction_groups, pretrain_groups
from hyperray.config import Config
from hyperray.data import (
    BUILTIN_EVAL_TASKS,
    Task,
    build_pretrain_tasks,
    builtin_tasks,
    load_tasks,
    load_text_passages,
    passages_from_tasks,
    split_tasks,
)
from hyperray.encoders import SentenceEncoder, TargetModelEncoder
from hyperray.hypernet import HyperNetwork
from hyperray.layout import Layout
from hyperray.model import HyperLoRA
from hyperray.models import TargetModel, load_target_model
from hyperray.targets import find_target_modules


def build(config: Config, target: TargetModel | None = None) -> HyperLoRA:
    """The frozen target model, its task encoder and a freshly initialised hypernetwork."""
    torch.manual_seed(config.train.seed)
    if target is None:
        target = load_target_model(config.model.name, config.model.dtype, config.model.cache_dir)
    spec = config.model.target_modules
    spec = spec[0] if len(spec) == 1 and not _is_suffix(spec[0]) else spec
    layout = Layout.from_model(target.model, find_target_modules(target.model, spec))
    if config.encoder.kind == "target":
        encoder = TargetModelEncoder(target.model, target.tokenizer, config.encoder.max_length)
    else:
        encoder = SentenceEncoder(config.encoder.name, config.encoder.max_length)
    h, lora = config.hypernet, config.lora
    hypernet = HyperNetwork(
        layout,
        encoder.dim,
        head=h.head,
        rank=lora.rank,
        hidden_size=h.hidden_size,
        embedding_size=h.embedding_size,
        depth=h.depth,
        dropout=h.dropout,
        refinement_steps=h.refinement_steps,
        lightweight=lora.lightweight,
        core_size=lora.core_size,
        basis_seed=lora.basis_seed,
    )
    collator = Collator(
        target.tokenizer,
        target.is_encoder_decoder,
        config.model.chat_template,
        config.data.max_prompt_tokens,
        config.data.max_answer_tokens,
    )
    return HyperLoRA(
        target.model,
        target.tokenizer,
        encoder,
        hypernet,
        collator,
        target_modules=spec,
        rank=lora.rank,
        alpha=lora.alpha,
        base_model=target.source,
        consistency_weight=config.train.consistency_weight,
        consistency_on=config.train.consistency_on,
    )


def build_tasks(config: Config) -> tuple[list[Task], list[Task]]:
    """Training and held-out tasks: SNI files when ``data.path`` is set, else the built-in suite.

    Held-out tasks come from ``data.eval_path`` when set; otherwise the built-in suite holds out
    its evaluation tasks and SNI folders hold out ``data.eval_fraction`` of their tasks.
    """
    data = config.data
    k = data.num_demos
    if data.path is None:
        tasks = builtin_tasks(data.builtin_instances, data.seed)
        train = [t for t in tasks if t.name not in BUILTIN_EVAL_TASKS]
        held_out = [t for t in tasks if t.name in BUILTIN_EVAL_TASKS]
    elif data.eval_path is None:
        train, held_out = split_tasks(
            load_tasks(data.path, min_positive_examples=k), data.eval_fraction, data.seed
        )
    else:
        train = load_tasks(data.path, min_positive_examples=k)
    if data.eval_path is not None:
        held_out = load_tasks(data.eval_path, min_positive_examples=k)
    return train, held_out


def build_groups(config: Config, tasks: list[Task]) -> Iterator[list[Group]]:
    """The stage's endless stream of task-grouped batches (before tokenisation)."""
    data = config.data
    if config.train.stage == "pretrain":
        text = load_text_passages(data.text_path) if data.text_path else passages_from_tasks(tasks)
        examples = build_pretrain_tasks(text, data.pretrain_objective, data.seed)
        if not examples:
            raise ValueError(
                "no pretraining passage is long enough for the objective; "
                "point data.text_path at longer text"
            )
        return pretrain_groups(examples, data.tasks_per_batch * data.rows_per_task, data.seed)
    return instruction_groups(
        tasks,
        data.tasks_per_batch,
        data.rows_per_task,
        data.num_demos,
        data.include_definition,
        with_alt=config.train.consistency_weight > 0,
        seed=data.seed,
    )


def _is_suffix(name: str) -> bool:
    """A plain module suffix like ``q_proj``, as opposed to a regex or ``all-linear``."""
    return name.replace("_", "").isalnum()
