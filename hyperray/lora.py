"""Generated LoRA adapters and their application to a frozen model, one adapter per batch row.

For row i of a batch and every target module with frozen weight W:

    h_i = W x_i + (alpha / r) * B_i A_i x_i,     A_i: (r x d_in),  B_i: (d_out x r)

The frozen model is never modified: forward hooks on the target ``nn.Linear`` modules add the
low-rank term with a batched matmul, so rows of one batch may carry different adapters, and an
adapter with a single row broadcasts over the whole batch. Gradients reach A and B (and through
them the hypernetwork), never W.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn


@dataclass
class Adapter:
    """LoRA weights for every target module, with a leading batch dimension N."""

    weights: dict[str, tuple[Tensor, Tensor]]
    """module name -> (A (N, r, d_in), B (N, d_out, r))"""
    rank: int
    alpha: float
    target_modules: list[str] | str = field(default_factory=list)
    """The peft ``target_modules`` spec that selected these modules (written on export)."""
    base_model: str = ""
    is_encoder_decoder: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def batch_size(self) -> int:
        return next(iter(self.weights.values()))[0].shape[0]

    def index_select(self, rows: Tensor) -> Adapter:
        """The adapter of each row: row j gets this adapter's row ``rows[j]``."""
        weights = {
            n: (a.index_select(0, rows), b.index_select(0, rows))
            for n, (a, b) in self.weights.items()
        }
        return self._with(weights)

    def row(self, i: int) -> Adapter:
        return self._with({n: (a[i : i + 1], b[i : i + 1]) for n, (a, b) in self.weights.items()})

    def detach(self) -> Adapter:
        return self._with({n: (a.detach(), b.detach()) for n, (a, b) in self.weights.items()})

    def delta(self, name: str) -> Tensor:
        """The dense update (alpha / r) * B @ A of one module: (N, d_out, d_in)."""
        a, b = self.weights[name]
        return self.scale * b @ a

    def save_peft(self, directory: str | Path, row: int = 0) -> Path:
        """Write row ``row`` as a standard PEFT LoRA adapter folder."""
        from hyperray.export import export_peft

        return export_peft(self, directory, row=row)

    def _with(self, weights: dict[str, tuple[Tensor, Tensor]]) -> Adapter:
        return Adapter(
            weights,
            self.rank,
            self.alpha,
            self.target_modules,
            self.base_model,
            self.is_encoder_decoder,
        )


class LoraHooks:
    """Forward hooks that add the active adapter's low-rank term to each target module."""

    def __init__(self, model: nn.Module, module_names: list[str]):
        modules = dict(model.named_modules())
        self.active: Adapter | None = None
        self._handles = [
            modules[name].register_forward_hook(self._hook_for(name)) for name in module_names
        ]

    def _hook_for(self, name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
            if self.active is None:
                return output
            a, b = self.active.weights[name]
            x = args[0].to(a.dtype)
            single_position = x.dim() == 2  # (N, d_in), e.g. a seq2seq model's pooled input
            if single_position:
                x = x.unsqueeze(1)
            delta = (x @ a.mT) @ b.mT  # (N, T, d_in) -> (N, T, r) -> (N, T, d_out)
            if single_position:
                delta = delta.squeeze(1)
            return output + (self.active.scale * delta).to(output.dtype)

        return hook

    @contextmanager
    def apply(self, adapter: Adapter | None) -> Iterator[None]:
        """Run the model with ``adapter`` (one row per batch row, or one row for all)."""
        previous, self.active = self.active, adapter
        try:
            yield
        finally:
            self.active = previous

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def stack_adapters(adapters: list[Adapter]) -> Adapter:
    """Concatenate adapters of the same modules along the batch dimension."""
    first = adapters[0]
    weights = {
        name: (
            torch.cat([ad.weights[name][0] for ad in adapters]),
            torch.cat([ad.weights[name][1] for ad in adapters]),
        )
        for name in first.weights
    }
    return first._with(weights)
