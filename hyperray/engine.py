"""The training-engine seam: how a loss becomes an optimiser step.

The training loop only calls ``backward``, ``step`` and reads ``lr``; plain PyTorch lives here,
DeepSpeed behind the same three members elsewhere, so there is one loop.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor, nn


class Engine(Protocol):
    def backward(self, loss: Tensor) -> None: ...
    def step(self) -> None: ...
    @property
    def lr(self) -> float: ...


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class TorchEngine:
    """AdamW on the trainable parameters, warm-up + cosine schedule, gradient clipping."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        weight_decay: float = 0.0,
        grad_clip: float = 0.0,
    ):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps)
        )
        self.grad_clip = grad_clip

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
