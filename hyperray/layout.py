"""The layout of a target model's LoRA slots: which modules get generated weights, at which depth.

A slot is one target module (``model.layers.3.self_attn.q_proj``). Its *kind* is the name with
every layer index replaced by ``*`` plus its shape, so all ``q_proj`` of a Llama share a kind and
a generator head can share an output projection across depth. The layout is also the target
model's fingerprint in a checkpoint: a hypernetwork only fits a model with the same layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Slot:
    name: str
    layer: int
    kind: int


@dataclass(frozen=True)
class Kind:
    pattern: str
    d_in: int
    d_out: int

    @property
    def suffix(self) -> str:
        return self.pattern.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Layout:
    slots: tuple[Slot, ...]
    kinds: tuple[Kind, ...]
    num_layers: int

    @classmethod
    def from_model(cls, model: nn.Module, module_names: list[str]) -> Layout:
        modules = dict(model.named_modules())
        kinds: list[Kind] = []
        slots = []
        for name in module_names:
            linear = modules[name]
            kind = Kind(
                re.sub(r"\.\d+(?=\.|$)", ".*", name), linear.in_features, linear.out_features
            )
            if kind not in kinds:
                kinds.append(kind)
            numbers = re.findall(r"\.(\d+)(?=\.|$)", name)
            slots.append(Slot(name, int(numbers[0]) if numbers else 0, kinds.index(kind)))
        num_layers = max(slot.layer for slot in slots) + 1
        return cls(tuple(slots), tuple(kinds), num_layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "kinds": [[k.pattern, k.d_in, k.d_out] for k in self.kinds],
            "slots": [[s.name, s.layer, s.kind] for s in self.slots],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        return cls(
            slots=tuple(Slot(n, int(layer), int(k)) for n, layer, k in data["slots"]),
            kinds=tuple(Kind(p, int(i), int(o)) for p, i, o in data["kinds"]),
            num_layers=int(data["num_layers"]),
        )

    def describe(self) -> str:
        kinds = ", ".join(f"{k.pattern} ({k.d_in}->{k.d_out})" for k in self.kinds)
        return f"{len(self.slots)} modules over {self.num_layers} layers: {kinds}"
