"""HART's autoregressive head: a recurrent decoder walks the layers bottom-up.

    s_0 = tanh(W t),   s_l = GRU([t ; e_layer(l)], s_{l-1}),   f_slot = MLP([s_layer(slot) ; e_kind(slot)])

Each layer's state is conditioned on the previous layer's, so the weights generated for a layer
know what was generated below it. The states s_l are what the consistency loss compares.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyperray.heads.blocks import HeadOutput, ResidualMLP, SlotIndex
from hyperray.layout import Layout


class AutoregressiveHead(nn.Module):
    def __init__(
        self, layout: Layout, hidden_size: int, embedding_size: int, depth: int, dropout: float
    ):
        super().__init__()
        self.index = SlotIndex(layout)
        self.layer_embedding = nn.Embedding(layout.num_layers, embedding_size)
        self.kind_embedding = nn.Embedding(len(layout.kinds), embedding_size)
        self.start = nn.Linear(hidden_size, hidden_size)
        self.step_input = nn.Linear(hidden_size + embedding_size, hidden_size)
        self.cell = nn.GRUCell(hidden_size, hidden_size)
        self.inp = nn.Linear(hidden_size + embedding_size, hidden_size)
        self.mlp = ResidualMLP(hidden_size, depth, dropout)

    def forward(self, task: Tensor) -> HeadOutput:
        g, s = task.shape[0], len(self.index.layer)
        steps = self.step_input(
            torch.cat(
                [
                    task[:, None].expand(g, self.index.num_layers, -1),
                    self.layer_embedding.weight[None].expand(g, -1, -1),
                ],
                dim=-1,
            )
        )  # (G, L, H)
        state = torch.tanh(self.start(task))
        states = []
        for layer in range(self.index.num_layers):
            state = self.cell(steps[:, layer], state)
            states.append(state)
        states = torch.stack(states, dim=1)  # (G, L, H)
        x = torch.cat(
            [
                states[:, self.index.layer],
                self.kind_embedding(self.index.kind)[None].expand(g, s, -1),
            ],
            dim=-1,
        )
        return HeadOutput(self.mlp(self.inp(x)), states)
