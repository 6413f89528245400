"""The held-out split every method of a comparison shares: demonstrations, LoRA data, test instances.

For each held-out task, once, by a fixed seed: the first ``num_demos`` positive examples are the
demonstrations (the Def+kPos text the hypernetwork and the in-context prompt read); the task's
instances are shuffled and cut into a part a per-task LoRA may train on and a part every method is
scored on. An instance whose input also appears as a demonstration or a training instance is
dropped from the scored part, so no method is scored on text it was shown.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hyperray.data import Example, Instance, Task


@dataclass(frozen=True)
class TaskSplit:
    task: Task
    demos: tuple[Example, ...]
    train: tuple[Instance, ...]
    """Instances a per-task LoRA trains on."""
    test: tuple[Instance, ...]
    """Instances every method is scored on."""

    @property
    def name(self) -> str:
        return self.task.name

    def test_task(self) -> Task:
        """The task as :func:`hyperray.evaluate.evaluate` reads it: its demos, only test instances."""
        return replace(self.task, positive_examples=self.demos, instances=self.test)


def split_task(
    task: Task,
    num_demos: int = 2,
    train_fraction: float = 0.5,
    seed: int = 0,
    max_test: int | None = None,
) -> TaskSplit:
    """One task's split; the same arguments always give the same split.

    ``max_test`` caps the scored instances (a quicker run); the training part is unchanged.
    """
    if not 0.0 <= train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in [0, 1), got {train_fraction}")
    if len(task.positive_examples) < num_demos:
        raise ValueError(
            f"task {task.name} has {len(task.positive_examples)} positive examples, "
            f"fewer than num_demos={num_demos}; lower num_demos"
        )
    order = sorted(task.instances, key=lambda i: i.id)
    random.Random(f"hyperray-heldout-{seed}-{task.name}").shuffle(order)
    n_train = int(len(order) * train_fraction)
    demos = task.positive_examples[:num_demos]
    train = tuple(order[:n_train])
    seen = {_norm(e.input) for e in demos} | {_norm(i.input) for i in train}
    test = tuple(i for i in order[n_train:] if _norm(i.input) not in seen)[:max_test]
    if not test:
        raise ValueError(
            f"task {task.name} keeps no test instance after the split "
            f"({len(task.instances)} instances, train_fraction={train_fraction}); "
            "lower train_fraction or give the task more instances"
        )
    return TaskSplit(task, tuple(demos), train, test)


def split_tasks_for_eval(
    tasks: Sequence[Task],
    num_demos: int = 2,
    train_fraction: float = 0.5,
    seed: int = 0,
    max_test: int | None = None,
) -> list[TaskSplit]:
    return [split_task(t, num_demos, train_fraction, seed, max_test) for t in tasks]


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()
