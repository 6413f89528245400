"""Generator heads: task features -> one feature vector per LoRA slot. Chosen by name."""

from __future__ import annotations

from torch import nn

from hyperray.heads.autoregressive import AutoregressiveHead
from hyperray.heads.blocks import HeadOutput
from hyperray.heads.iterative import IterativeHead
from hyperray.heads.per_module import PerModuleHead
from hyperray.heads.shared import SharedHead
from hyperray.layout import Layout

HEADS = {
    "shared": SharedHead,
    "per_module": PerModuleHead,
    "autoregressive": AutoregressiveHead,
    "iterative": IterativeHead,
}


def build_head(
    name: str,
    layout: Layout,
    hidden_size: int,
    embedding_size: int,
    depth: int,
    dropout: float = 0.0,
    refinement_steps: int = 3,
) -> nn.Module:
    if name not in HEADS:
        raise ValueError(
            f"unknown generator head {name!r}; set hypernet.head to one of: {', '.join(HEADS)}"
        )
    args = (layout, hidden_size, embedding_size, depth, dropout)
    if name == "iterative":
        return IterativeHead(*args, refinement_steps=refinement_steps)
    return HEADS[name](*args)


__all__ = ["HEADS", "HeadOutput", "build_head"]
