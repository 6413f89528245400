"""PNG plots of a run: the loss curve and per-task held-out ROUGE-L."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in history]
    ax.plot(steps, [row["ce"] for row in history], label="cross-entropy")
    if any(row["consistency"] for row in history):
        ax.plot(steps, [row["consistency"] for row in history], label="consistency")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("hyperray training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_task_scores(scores: dict[str, dict[str, float]], path: str | Path) -> Path:
    """``scores``: series name (e.g. "before", "after") -> {task: ROUGE-L}."""
    tasks = sorted(next(iter(scores.values())))
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(tasks) + 1.5))
    height = 0.8 / len(scores)
    for i, (series, per_task) in enumerate(scores.items()):
        ax.barh(
            [t + i * height for t in range(len(tasks))],
            [per_task[t] for t in tasks],
            height,
            label=series,
        )
    ax.set_yticks([t + 0.4 - height / 2 for t in range(len(tasks))], tasks, fontsize=7)
    ax.set_xlabel("ROUGE-L")
    ax.set_title("held-out tasks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_adaptation_cost(costs: dict[str, dict], path: str | Path) -> Path:
    """Per task: wall time and FLOPs to obtain an adapter, hyperray against per-task LoRA."""
    tasks = sorted(costs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(tasks) + 2), sharey=True)
    rows = range(len(tasks))
    for ax, key, label in ((axes[0], "seconds", "wall time (s)"), (axes[1], "flops", "FLOPs")):
        ax.barh([r + 0.2 for r in rows], [costs[t][f"hyperray_{key}"] for t in tasks], 0.4,
                label="hyperray (one forward pass)")  # fmt: skip
        ax.barh([r - 0.2 for r in rows], [costs[t][f"lora_{key}"] or float("nan") for t in tasks],
                0.4, label="per-task LoRA (until it matches hyperray, or its best)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(label + ", log scale")
    axes[0].set_yticks(list(rows), tasks, fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("cost of adapting to a held-out task")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
