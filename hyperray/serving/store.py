"""What the server remembers: bounded LRU maps, adapter ids and the adapter registry.

An adapter id is a hash of the checkpoint's fingerprint and the task text, so the same task on
the same checkpoint always gets the same id (generated once), and ids never collide across the
served checkpoints. The registry maps ids to their task text, not to weights: any replica that
lacks the weights regenerates them from the text, which is deterministic.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from hyperray.data import Example, format_task_text

K = TypeVar("K")
V = TypeVar("V")

ID_PREFIX = "hr-"


class LRU(Generic[K, V]):
    """A dict that forgets its least recently used entry beyond ``capacity``."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"an LRU needs capacity >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> list[K]:
        """Store ``value``; returns the keys evicted to make room."""
        self._items[key] = value
        self._items.move_to_end(key)
        evicted = []
        while len(self._items) > self.capacity:
            evicted.append(self._items.popitem(last=False)[0])
        return evicted

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[V]:
        return list(self._items.values())


@dataclass(frozen=True)
class TaskSpec:
    """A task as a request states it: its definition and positive examples (Def+kPos)."""

    definition: str
    examples: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        """The text the hypernetwork reads, exactly as in training."""
        return format_task_text(self.definition, [Example(i, o) for i, o in self.examples])

    def as_json(self) -> dict:
        return {
            "definition": self.definition,
            "examples": [{"input": i, "output": o} for i, o in self.examples],
        }


def adapter_id(fingerprint: str, task: TaskSpec) -> str:
    digest = hashlib.sha256(f"{fingerprint}\0{task.text}".encode()).hexdigest()
    return ID_PREFIX + digest[:24]


@dataclass(frozen=True)
class AdapterRecord:
    id: str
    checkpoint: str
    task: TaskSpec
    rank: int
    modules: tuple[str, ...]
    base: str
    created: int

    def describe(self) -> dict:
        return {
            "adapter_id": self.id,
            "checkpoint": self.checkpoint,
            "base": self.base,
            "rank": self.rank,
            "modules": list(self.modules),
            "created": self.created,
        }


class AdapterRegistry:
    """Adapter ids the server knows, most recently used last, at most ``capacity`` of them."""

    def __init__(self, capacity: int):
        self._records: LRU[str, AdapterRecord] = LRU(capacity)

    def get(self, id: str) -> AdapterRecord | None:
        return self._records.get(id)

    def add(self, record: AdapterRecord) -> None:
        self._records.put(record.id, record)

    def records(self) -> Sequence[AdapterRecord]:
        return self._records.values()
