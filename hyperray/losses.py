"""Training losses: completion-only cross-entropy and HART's consistency regulariser.

    L = CE(answer tokens | prompt, adapter(task text)) + alpha * mean ||g(demos_1) - g(demos_2)||^2

g is what the two adapters of one task are compared on: the generated parameters ("adapter") or
the head's per-layer states ("states"). Identical demonstrations give exactly zero.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hyperray.batching import IGNORE


def completion_loss(logits: Tensor, labels: Tensor, shift: bool) -> Tensor:
    """Mean cross-entropy over answer tokens; causal models predict token t+1 from position t."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


def consistency_loss(first: Tensor, second: Tensor) -> Tensor:
    """Mean squared difference between two (G, ...) generations of the same G tasks."""
    return (first - second).pow(2).mean()
