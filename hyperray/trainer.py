"""The training loop: task-grouped batches in, optimiser steps out, progress and metrics logged.

One loop for every engine (plain PyTorch here, DeepSpeed behind the same seam) and every
stage (instruction fine-tuning, text pretraining): they differ in the batches they feed it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from torch import nn

from hyperray.batching import TaskBatch
from hyperray.engine import Engine
from hyperray.model import HyperLoRA


class MetricLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...


class JsonlLogger:
    """Appends one JSON line of metrics per log call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def log(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def train(
    model: HyperLoRA | nn.Module,
    batches: Iterator[TaskBatch],
    engine: Engine,
    steps: int,
    loggers: list[MetricLogger],
    log_every: int = 10,
    eval_every: int = 0,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    start_step: int = 0,
    checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
    verbose: bool = True,
) -> list[dict[str, float]]:
    """Run ``steps - start_step`` optimiser steps; returns the logged metric rows.

    ``model`` is the HyperLoRA, or an engine's wrapper of it whose call runs the same forward.
    ``checkpoint(step)`` runs every ``checkpoint_every`` steps and after the last one. The wait
    for the first batch (a data pipeline starting up) is logged once as ``first_batch_s``;
    ``data_wait_fraction`` counts the waits after it.
    """
    model.train()
    history: list[dict[str, float]] = []
    window = _fresh_window()
    first_batch_s: float | None = None
    for step in range(start_step, steps):
        fetch = time.perf_counter()
        batch = next(batches)
        if first_batch_s is None:  # pipeline start-up: reported once, not counted as data wait
            first_batch_s = time.perf_counter() - fetch
            started = last = time.perf_counter()
        else:
            window["wait"] += time.perf_counter() - fetch
        out = model(batch)
        engine.backward(out.loss)
        engine.step()
        window["loss"] += out.loss.item()
        window["ce"] += out.ce.item()
        window["consistency"] += out.consistency.item()
        window["tokens"] += batch.num_tokens
        window["n"] += 1
        done = step + 1
        if done % log_every == 0 or done == steps:
            now = time.perf_counter()
            n = window["n"]
            row = {
                "loss": window["loss"] / n,
                "ce": window["ce"] / n,
                "consistency": window["consistency"] / n,
                "lr": engine.lr,
                "tokens_per_s": window["tokens"] / (now - last),
                "data_wait_fraction": window["wait"] / (now - last),
            }
            if not history:
                row["first_batch_s"] = first_batch_s
            eta = (now - started) / (done - start_step) * (steps - done)
            if verbose:
                print(
                    f"step {done}/{steps}  loss {row['loss']:.4f}  ce {row['ce']:.4f}  "
                    f"cons {row['consistency']:.3g}  lr {row['lr']:.2e}  "
                    f"tok/s {row['tokens_per_s']:.0f}  eta {eta:.0f}s",
                    flush=True,
                )
            for logger in loggers:
                logger.log(row, done)
            history.append({"step": done, **row})
            window = _fresh_window()
            last = now
        if checkpoint is not None and (
            (checkpoint_every and done % checkpoint_every == 0) or done == steps
        ):
            checkpoint(done)
        if evaluate is not None and eval_every and done % eval_every == 0 and done < steps:
            metrics = evaluate(done)
            for logger in loggers:
                logger.log(metrics, done)
            model.train()
    return history


def _fresh_window() -> dict[str, float]:
    return {"loss": 0.0, "ce": 0.0, "consistency": 0.0, "tokens": 0.0, "wait": 0.0, "n": 0.0}
