"""The per-module head: one MLP per module kind (q, v, ...), shared across depth.

f_s = MLP_kind(s)([t ; e_layer(s)])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyperray.heads.blocks import HeadOutput, ResidualMLP, SlotIndex, per_layer_mean
from hyperray.layout import Layout


class PerModuleHead(nn.Module):
    def __init__(
        self, layout: Layout, hidden_size: int, embedding_size: int, depth: int, dropout: float
    ):
        super().__init__()
        self.index = SlotIndex(layout)
        self.hidden_size = hidden_size
        self.layer_embedding = nn.Embedding(layout.num_layers, embedding_size)
        self.inp = nn.ModuleList(
            nn.Linear(hidden_size + embedding_size, hidden_size) for _ in layout.kinds
        )
        self.mlp = nn.ModuleList(ResidualMLP(hidden_size, depth, dropout) for _ in layout.kinds)
        for k in range(len(layout.kinds)):
            self.register_buffer(
                f"slots_{k}", (self.index.kind == k).nonzero().squeeze(1), persistent=False
            )

    def forward(self, task: Tensor) -> HeadOutput:
        g, s = task.shape[0], len(self.index.layer)
        features = task.new_zeros(g, s, self.hidden_size)
        for k, (inp, mlp) in enumerate(zip(self.inp, self.mlp, strict=True)):
            slots = getattr(self, f"slots_{k}")
            layer = self.layer_embedding(self.index.layer[slots])  # (S_k, E)
            x = torch.cat(
                [task[:, None].expand(g, len(slots), -1), layer[None].expand(g, -1, -1)], -1
            )
            features = features.index_copy(1, slots, mlp(inp(x)))
        return HeadOutput(
            features, per_layer_mean(features, self.index.layer, self.index.num_layers)
        )
