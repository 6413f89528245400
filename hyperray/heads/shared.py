"""The shared head: one MLP generates every slot, told apart by learned layer and module embeddings.

f_s = MLP([t ; e_layer(s) ; e_kind(s)])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyperray.heads.blocks import HeadOutput, ResidualMLP, SlotIndex, per_layer_mean
from hyperray.layout import Layout


class SharedHead(nn.Module):
    def __init__(
        self, layout: Layout, hidden_size: int, embedding_size: int, depth: int, dropout: float
    ):
        super().__init__()
        self.index = SlotIndex(layout)
        self.layer_embedding = nn.Embedding(layout.num_layers, embedding_size)
        self.kind_embedding = nn.Embedding(len(layout.kinds), embedding_size)
        self.inp = nn.Linear(hidden_size + 2 * embedding_size, hidden_size)
        self.mlp = ResidualMLP(hidden_size, depth, dropout)

    def forward(self, task: Tensor) -> HeadOutput:
        g, s = task.shape[0], len(self.index.layer)
        position = torch.cat(
            [self.layer_embedding(self.index.layer), self.kind_embedding(self.index.kind)], dim=-1
        )  # (S, 2E)
        x = torch.cat([task[:, None].expand(g, s, -1), position[None].expand(g, -1, -1)], dim=-1)
        features = self.mlp(self.inp(x))  # (G, S, H)
        return HeadOutput(
            features, per_layer_mean(features, self.index.layer, self.index.num_layers)
        )
