"""From per-slot head features to LoRA matrices: plain or lightweight parametrisation.

Plain LoRA generates A (r x d_in) and B (d_out x r) directly. Lightweight LoRA generates only
small cores and expands them with frozen random orthonormal bases re-created from a seed:

    A = A_core P,   B = Q B_core,   A_core: (r x c), B_core: (c x r), P: (c x d_in), Q: (d_out x c)

Either way the B half of the projection starts at zero, so an untrained hypernetwork generates
B = 0 and leaves the target model's outputs unchanged; A starts at peft's scale (~1/sqrt(d_in)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hyperray.layout import Layout


def orthonormal_basis(rows: int, cols: int, seed: int) -> Tensor:
    """A (rows x cols) matrix with orthonormal rows (rows <= cols), the same for a seed everywhere."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(cols, rows, generator=generator, dtype=torch.float64))
    return q.T.contiguous().float()


class AdapterOutput(nn.Module):
    def __init__(
        self,
        layout: Layout,
        hidden_size: int,
        rank: int,
        lightweight: bool = False,
        core_size: int = 32,
        basis_seed: int = 0,
    ):
        super().__init__()
        self.layout = layout
        self.rank = rank
        self.lightweight = lightweight
        self.norm = nn.LayerNorm(hidden_size)
        self.out_scale = 1.0 / math.sqrt(hidden_size)
        self.proj = nn.ModuleList()
        for k, kind in enumerate(layout.kinds):
            a_in, b_out = (core_size, core_size) if lightweight else (kind.d_in, kind.d_out)
            if lightweight and core_size > min(kind.d_in, kind.d_out):
                raise ValueError(
                    f"lora.core_size ({core_size}) exceeds {kind.pattern}'s size "
                    f"({kind.d_in}->{kind.d_out}); lower lora.core_size"
                )
            proj = nn.Linear(hidden_size, rank * a_in + b_out * rank)
            with torch.no_grad():
                proj.weight[: rank * a_in].normal_(0.0, 1.0 / math.sqrt(a_in))
                proj.weight[rank * a_in :].zero_()
                proj.bias.zero_()
            self.proj.append(proj)
            if lightweight:
                # Frozen and re-created from the seed, so checkpoints never store them.
                self.register_buffer(
                    f"P_{k}",
                    orthonormal_basis(core_size, kind.d_in, basis_seed + 2 * k),
                    persistent=False,
                )
                self.register_buffer(
                    f"Q_{k}",
                    orthonormal_basis(core_size, kind.d_out, basis_seed + 2 * k + 1).T.contiguous(),
                    persistent=False,
                )
        for k in range(len(layout.kinds)):
            slots = [i for i, s in enumerate(layout.slots) if s.kind == k]
            self.register_buffer(f"slots_{k}", torch.tensor(slots), persistent=False)

    def forward(self, features: Tensor) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor]:
        """(G, S, H) -> ({module name: (A (G, r, d_in), B (G, d_out, r))}, flat codes (G, S*))."""
        # 1/sqrt(H) keeps an optimiser step's change of A and B independent of the head's width.
        features = self.norm(features) * self.out_scale
        weights: dict[str, tuple[Tensor, Tensor]] = {}
        codes = []
        r = self.rank
        for k, (kind, proj) in enumerate(zip(self.layout.kinds, self.proj, strict=True)):
            slots = getattr(self, f"slots_{k}")
            code = proj(features[:, slots])  # (G, S_k, out_k)
            codes.append(code.flatten(1))
            g, s_k, _ = code.shape
            if self.lightweight:
                c = getattr(self, f"P_{k}").shape[0]
                a = code[..., : r * c].reshape(g, s_k, r, c) @ getattr(self, f"P_{k}")
                b = getattr(self, f"Q_{k}") @ code[..., r * c :].reshape(g, s_k, c, r)
            else:
                a = code[..., : r * kind.d_in].reshape(g, s_k, r, kind.d_in)
                b = code[..., r * kind.d_in :].reshape(g, s_k, kind.d_out, r)
            for j, slot in enumerate(slots.tolist()):
                weights[self.layout.slots[slot].name] = (a[:, j], b[:, j])
        return weights, torch.cat(codes, dim=1)
