"""The iterative head: one refinement module applied K times, each pass adding a residual.

    z_0 = 0,   z_k = z_{k-1} + R([c ; e_step(k)] + z_{k-1}),   c = W [t ; e_layer ; e_kind]

The adapter output is affine in the features, so adding a residual to z adds the projected
residual to the generated weights: each pass refines the weights produced so far.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyperray.heads.blocks import HeadOutput, ResidualMLP, SlotIndex, per_layer_mean
from hyperray.layout import Layout


class IterativeHead(nn.Module):
    def __init__(
        self,
        layout: Layout,
        hidden_size: int,
        embedding_size: int,
        depth: int,
        dropout: float,
        refinement_steps: int,
    ):
        super().__init__()
        self.index = SlotIndex(layout)
        self.layer_embedding = nn.Embedding(layout.num_layers, embedding_size)
        self.kind_embedding = nn.Embedding(len(layout.kinds), embedding_size)
        self.step_embedding = nn.Embedding(refinement_steps, hidden_size)
        self.inp = nn.Linear(hidden_size + 2 * embedding_size, hidden_size)
        self.refine = ResidualMLP(hidden_size, depth, dropout)
        self.refinement_steps = refinement_steps

    def forward(self, task: Tensor) -> HeadOutput:
        g, s = task.shape[0], len(self.index.layer)
        position = torch.cat(
            [self.layer_embedding(self.index.layer), self.kind_embedding(self.index.kind)], dim=-1
        )
        context = self.inp(
            torch.cat([task[:, None].expand(g, s, -1), position[None].expand(g, -1, -1)], dim=-1)
        )  # (G, S, H)
        z = torch.zeros_like(context)
        for k in range(self.refinement_steps):
            x = context + self.step_embedding.weight[k] + z
            z = z + self.refine(x) - x  # ResidualMLP returns x + R(x); keep only R(x)
        return HeadOutput(z, per_layer_mean(z, self.index.layer, self.index.num_layers))
