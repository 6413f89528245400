"""Pieces every generator head is made of: the head's output record and a residual MLP block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hyperray.layout import Layout


@dataclass
class HeadOutput:
    features: Tensor
    """(G, S, H): one feature vector per LoRA slot, projected to weights by the adapter output."""
    states: Tensor
    """(G, L, H): the head's per-layer states, which the consistency loss may compare."""


class ResidualMLP(nn.Module):
    """``depth`` pre-norm residual blocks: x + W2 gelu(W1 norm(x))."""

    def __init__(self, hidden_size: int, depth: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden_size),
                nn.Linear(hidden_size, 2 * hidden_size),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(2 * hidden_size, hidden_size),
            )
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class SlotIndex(nn.Module):
    """Each slot's layer and kind as index tensors, so heads gather embeddings without loops."""

    def __init__(self, layout: Layout):
        super().__init__()
        self.register_buffer(
            "layer", torch.tensor([s.layer for s in layout.slots]), persistent=False
        )
        self.register_buffer("kind", torch.tensor([s.kind for s in layout.slots]), persistent=False)
        self.num_layers = layout.num_layers
        self.num_kinds = len(layout.kinds)


def per_layer_mean(features: Tensor, slot_layer: Tensor, num_layers: int) -> Tensor:
    """(G, S, H) slot features -> (G, L, H) mean over each layer's slots."""
    g, _, h = features.shape
    sums = features.new_zeros(g, num_layers, h).index_add_(1, slot_layer, features)
    counts = torch.bincount(slot_layer, minlength=num_layers).clamp(min=1).to(features.dtype)
    return sums / counts[None, :, None]
