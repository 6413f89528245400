"""What it costs to obtain an adapter for a new task: wall time and FLOPs, measured the same way
for both ways of adapting.

FLOPs are counted, not estimated: :class:`torch.utils.flop_counter.FlopCounterMode` adds up
every matrix multiply and attention call the work runs (2 FLOPs per multiply-add; elementwise
ops, norms and the optimiser update are not counted, the same for both sides). For a dense model
this is the usual ``2 · params · tokens`` per forward and about three times that per training
step (forward + backward through the frozen weights for the activations' gradients + the LoRA
weights' gradients).

- hyperray: one task-encoder forward on the Def+kPos text plus one hypernetwork forward
  (:meth:`HyperLoRA.generate_adapter`, encoder cache cleared).
- per-task LoRA: ``steps × one training step`` on the task's training instances, up to the first
  scored step at which it matches hyperray's ROUGE-L on that task (or reaches its own best);
  training time only, scoring excluded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from hyperray.data import Example
from hyperray.model import HyperLoRA

aten = torch.ops.aten


def _cpu_attention(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _cpu_attention_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


# The CPU attention kernels have no formula in torch's table; count them as the GPU kernels are.
_CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def count_flops(work: Callable[[], object]) -> int:
    """FLOPs of running ``work()`` once."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        work()
    return int(counter.get_total_flops())


@dataclass
class AdapterCost:
    seconds: float
    """Median wall time of generating the adapter."""
    flops: int


def hypernet_cost(
    model: HyperLoRA, definition: str, demos: Sequence[Example], repeats: int = 3
) -> AdapterCost:
    """Wall time (median of ``repeats``) and FLOPs of one ``generate_adapter`` call, uncached."""

    def generate() -> None:
        model.encoder._cache.clear()
        model.generate_adapter(definition, demos)

    flops = count_flops(generate)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate()
        times.append(time.perf_counter() - start)
    return AdapterCost(statistics.median(times), flops)


@dataclass
class LoraCost:
    steps: int
    """Training steps until the per-task LoRA first scored >= the target (or its best)."""
    seconds: float
    flops: int
    reached: bool
    """Whether it reached the target score within its budget."""
    score: float
    """Its ROUGE-L at that step."""


def steps_to_reach(
    curve: Sequence[tuple[int, float]], target: float
) -> tuple[int, float, bool, int]:
    """(step, score, reached, index) of the first point >= ``target``, else of the best point."""
    for index, (step, score) in enumerate(curve):
        if score >= target:
            return step, score, True, index
    best = max(range(len(curve)), key=lambda i: (curve[i][1], -i))
    return curve[best][0], curve[best][1], False, best


def lora_cost(
    curve: Sequence[tuple[int, float]],
    train_seconds: Sequence[float],
    step_flops: int,
    target: float,
) -> LoraCost:
    step, score, reached, index = steps_to_reach(curve, target)
    return LoraCost(step, train_seconds[index], step * step_flops, reached, score)


def cost_row(hyper: AdapterCost, lora: LoraCost, target: float) -> dict:
    """One task's costs and their ratios (per-task LoRA over hyperray)."""
    return {
        "hyperray_rougeL": target,
        "hyperray_seconds": hyper.seconds,
        "hyperray_flops": hyper.flops,
        "lora_steps": lora.steps,
        "lora_seconds": lora.seconds,
        "lora_flops": lora.flops,
        "lora_reached": lora.reached,
        "lora_rougeL_at_steps": lora.score,
        "seconds_ratio": lora.seconds / hyper.seconds,
        "flops_ratio": lora.flops / hyper.flops,
    }


def cost_summary(costs: dict[str, dict]) -> dict[str, float]:
    """Totals over tasks (the ratio of summed costs) and the per-task medians."""
    if not costs:
        return {}
    rows = list(costs.values())
    total = {k: sum(r[k] for r in rows) for k in ("hyperray_seconds", "hyperray_flops")}
    total |= {k: sum(r[k] for r in rows) for k in ("lora_seconds", "lora_flops")}
    ordered = sorted(r["seconds_ratio"] for r in rows), sorted(r["flops_ratio"] for r in rows)
    return {
        **{f"total_{k}": v for k, v in total.items()},
        "seconds_ratio": total["lora_seconds"] / total["hyperray_seconds"],
        "flops_ratio": total["lora_flops"] / total["hyperray_flops"],
        "median_seconds_ratio": _median(ordered[0]),
        "median_flops_ratio": _median(ordered[1]),
        "tasks_reached": sum(r["lora_reached"] for r in rows),
        "tasks": len(rows),
    }


def _median(values: Sequence[float]) -> float:
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
