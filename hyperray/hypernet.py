"""The hypernetwork: a task embedding in, LoRA weights for every target module out.

    t = norm(W_in e(task text)),   f = head(t),   (A, B) = output(f)

Plain PyTorch: the task encoder that produced e and the target model the weights are for live
elsewhere, so this module is the only thing an optimiser ever updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hyperray.adapter_output import AdapterOutput
from hyperray.heads import build_head
from hyperray.layout import Layout


@dataclass
class Generated:
    weights: dict[str, tuple[Tensor, Tensor]]
    """module name -> (A (G, r, d_in), B (G, d_out, r))"""
    codes: Tensor
    """(G, P): every generated parameter, flat (the cores, for lightweight LoRA)."""
    states: Tensor
    """(G, L, H): the head's per-layer states."""


class HyperNetwork(nn.Module):
    def __init__(
        self,
        layout: Layout,
        task_dim: int,
        head: str = "shared",
        rank: int = 8,
        hidden_size: int = 256,
        embedding_size: int = 64,
        depth: int = 2,
        dropout: float = 0.0,
        refinement_steps: int = 3,
        lightweight: bool = False,
        core_size: int = 32,
        basis_seed: int = 0,
    ):
        super().__init__()
        self.layout = layout
        self.task_dim = task_dim
        self.inp = nn.Sequential(nn.Linear(task_dim, hidden_size), nn.LayerNorm(hidden_size))
        self.head = build_head(
            head, layout, hidden_size, embedding_size, depth, dropout, refinement_steps
        )
        self.output = AdapterOutput(layout, hidden_size, rank, lightweight, core_size, basis_seed)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, task_embedding: Tensor) -> Generated:
        """(G, task_dim) task embeddings -> LoRA weights for G adapters."""
        # Encoders may run in another precision than the engine (bf16 DeepSpeed): follow ours.
        head = self.head(self.inp(task_embedding.to(self.dtype)))
        weights, codes = self.output(head.features)
        return Generated(weights, codes, head.states)
