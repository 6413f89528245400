"""peft LoRA baselines: one LoRA trained on all training tasks, or one per held-out task.

Both attach a real peft ``LoraConfig`` LoRA with the hypernetwork's rank, alpha and
``target_modules`` to the frozen target (B = 0 at the start, as peft initialises it), train it
with the project's one training loop and the same answer-only loss as the hypernetwork
(:meth:`HyperLoRA.answer_loss`), and detach it afterwards, leaving the target as it was.

The multi-task LoRA gets the hypernetwork's budget: the same task-grouped batches
(:func:`~hyperray.batching.instruction_groups`), as many steps, as many rows per step. A per-task
LoRA trains on its task's training instances (all of them every step) and is scored every
``eval_every`` steps, so the step at which it first matches another method can be read off.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import Tensor

from hyperray.batching import Group, TaskBatch, instruction_groups
from hyperray.data import Task, format_instance
from hyperray.engine import TorchEngine
from hyperray.heldout import TaskSplit
from hyperray.model import HyperLoRA, LossOutput
from hyperray.trainer import MetricLogger, train


@dataclass
class Budget:
    """How much training the hypernetwork had, which the multi-task LoRA gets too."""

    steps: int
    tasks_per_batch: int
    rows_per_task: int

    @property
    def rows(self) -> int:
        return self.steps * self.tasks_per_batch * self.rows_per_task


@dataclass
class MultitaskLora:
    state: dict[str, Tensor]
    """peft state dict (``get_peft_model_state_dict``)."""
    steps: int
    """Optimiser steps taken."""
    rows: int
    """Training rows (instances) the LoRA was trained on, counted as batches were drawn."""
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class PerTaskLora:
    curve: list[tuple[int, float]]
    """(step, ROUGE-L on the task's test instances); step 0 is the untrained LoRA (B = 0)."""
    train_seconds: list[float]
    """Training wall time up to each curve step, evaluation excluded."""
    step_flops: int
    """FLOPs of one training step (forward and backward), counted once."""
    examples: list[dict]
    """The final LoRA's predictions on the test instances."""


class LoraObjective:
    """What the training loop calls: the answer loss of the target under its attached peft LoRA."""

    def __init__(self, model: HyperLoRA):
        self.model = model

    def train(self, mode: bool = True) -> LoraObjective:
        return self  # the target stays in eval mode (frozen, HyperLoRA.train); LoRA has no dropout

    def __call__(self, batch: TaskBatch) -> LossOutput:
        loss = self.model.answer_loss(batch)
        return LossOutput(loss, loss, loss.new_zeros(()))


@contextmanager
def attached_lora(
    model: HyperLoRA, seed: int = 0, state: dict[str, Tensor] | None = None
) -> Iterator[torch.nn.Module]:
    """The target wrapped in a fresh peft LoRA (or ``state``) inside the block, unwrapped after.

    While attached, :meth:`HyperLoRA.generate` with ``adapter=None`` decodes through the LoRA.
    """
    config = LoraConfig(
        r=model.rank,
        lora_alpha=model.alpha,
        target_modules=model.target_modules,
        lora_dropout=0.0,
        bias="none",
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model.target, config)
    try:
        if state is not None:
            set_peft_model_state_dict(peft_model, state)
        yield peft_model
    finally:
        peft_model.unload()


def lora_module_names(peft_model: torch.nn.Module) -> list[str]:
    """Target-model names of the modules the peft LoRA wraps (to compare with hyperray's slots)."""
    prefix = "base_model.model."
    return sorted(
        name.removeprefix(prefix)
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and hasattr(module, "base_layer")
    )


def train_multitask_lora(
    model: HyperLoRA,
    tasks: Sequence[Task],
    budget: Budget,
    num_demos: int = 2,
    include_definition: bool = False,
    lr: float = 1e-3,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    log_every: int = 10,
    loggers: Sequence[MetricLogger] = (),
) -> MultitaskLora:
    """One LoRA on every training task, ``budget.steps`` steps of the hypernetwork's batches."""
    groups = instruction_groups(
        tasks,
        budget.tasks_per_batch,
        budget.rows_per_task,
        num_demos,
        include_definition,
        seed=seed,
    )
    drawn = _CountingBatches(model.collator(g) for g in groups)
    with attached_lora(model, seed) as peft_model:
        engine = TorchEngine(peft_model, lr, budget.steps, warmup_steps, weight_decay, grad_clip)
        started = time.perf_counter()
        history = train(LoraObjective(model), drawn, engine, budget.steps, list(loggers), log_every)
        seconds = time.perf_counter() - started
        state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    return MultitaskLora(state, drawn.batches, drawn.rows, seconds, history)


def train_task_lora(
    model: HyperLoRA,
    split: TaskSplit,
    steps: int,
    eval_every: int,
    score: Callable[[], tuple[float, list[dict]]],
    initial_score: float,
    lr: float = 1e-3,
    seed: int = 0,
    count_flops: Callable[[Callable[[], None]], int] | None = None,
) -> PerTaskLora:
    """A LoRA on one task's training instances, scored by ``score()`` every ``eval_every`` steps.

    ``score()`` returns (ROUGE-L, per-instance rows) of the attached LoRA on the test instances;
    ``initial_score`` is the step-0 score (B = 0: the base model's, already measured elsewhere).
    """
    if not split.train:
        raise ValueError(
            f"task {split.name} has no training instances for a per-task LoRA; "
            "raise the split's train fraction"
        )
    batch = model.collator([task_group(split)])
    curve: list[tuple[int, float]] = [(0, initial_score)]
    seconds: list[float] = [0.0]
    with attached_lora(model, seed) as peft_model:
        objective = LoraObjective(model)
        step_flops = 0
        if count_flops is not None:
            step_flops = count_flops(lambda: objective(batch).loss.backward())
            peft_model.zero_grad(set_to_none=True)
        engine = TorchEngine(peft_model, lr, steps)
        clock = {"start": time.perf_counter(), "paused": 0.0}

        def evaluate(step: int) -> dict[str, float]:
            paused = time.perf_counter()
            seconds.append(paused - clock["start"] - clock["paused"])
            value, _ = score()
            curve.append((step, value))
            clock["paused"] += time.perf_counter() - paused
            return {}

        train(
            objective,
            itertools.repeat(batch),
            engine,
            steps,
            [],
            log_every=steps,
            eval_every=eval_every,
            evaluate=evaluate,
            verbose=False,
        )
        seconds.append(time.perf_counter() - clock["start"] - clock["paused"])
        value, examples = score()
        curve.append((steps, value))
    return PerTaskLora(curve, seconds, step_flops, examples)


def task_group(split: TaskSplit, include_definition: bool = False) -> Group:
    """All of a split's training instances as one group (first reference as the answer)."""
    definition = split.task.definition if include_definition else None
    rows = tuple((format_instance(i.input, definition), i.outputs[0]) for i in split.train)
    return Group("", rows, None, split.name)


class _CountingBatches:
    """An iterator over batches that counts the batches and rows drawn from it."""

    def __init__(self, batches: Iterator[TaskBatch]):
        self._batches = iter(batches)
        self.batches = 0
        self.rows = 0

    def __iter__(self) -> _CountingBatches:
        return self

    def __next__(self) -> TaskBatch:
        batch = next(self._batches)
        self.batches += 1
        self.rows += int(batch.input_ids.shape[0])
        return batch


def save_multitask_lora(lora: MultitaskLora, directory: str | Path, record: dict) -> Path:
    """The LoRA's peft state and what it was trained with (``record``: budget, data, settings)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in lora.state.items()}, directory / _WEIGHTS)
    meta = {**record, "steps": lora.steps, "rows": lora.rows, "seconds": lora.seconds}
    (directory / _META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_multitask_lora(directory: str | Path, record: dict) -> MultitaskLora | None:
    """The LoRA saved in ``directory`` if it was trained with exactly ``record``, else None."""
    directory = Path(directory)
    if not (directory / _META).is_file() or not (directory / _WEIGHTS).is_file():
        return None
    meta = json.loads((directory / _META).read_text())
    if {k: meta.get(k) for k in record} != json.loads(json.dumps(record)):
        return None
    return MultitaskLora(
        load_file(directory / _WEIGHTS), meta["steps"], meta["rows"], meta["seconds"]
    )


_WEIGHTS = "lora.safetensors"
_META = "multitask_lora.json"
