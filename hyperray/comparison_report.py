"""A comparison as a JSON record and a markdown report: ROUGE-L per task and averaged for each
method, then the adaptation cost of hyperray against per-task LoRA."""

from __future__ import annotations

from typing import Any

from hyperray.adaptation_cost import cost_summary
from hyperray.comparison import Comparison
from hyperray.heldout import TaskSplit


def to_record(
    comparison: Comparison, splits: list[TaskSplit], context: dict[str, Any]
) -> dict[str, Any]:
    """Everything a reader needs to check the numbers: settings, split, scores, costs, answers."""
    return {
        "context": context,
        "split": {
            s.name: {
                "demos": [e.input for e in s.demos],
                "train_ids": [i.id for i in s.train],
                "test_ids": [i.id for i in s.test],
            }
            for s in splits
        },
        "averages": comparison.averages(),
        "per_task": {m: r.per_task for m, r in comparison.results.items()},
        "method_seconds": comparison.seconds,
        "adaptation_cost": comparison.costs,
        "adaptation_cost_summary": cost_summary(comparison.costs),
        "per_task_lora_curves": comparison.curves,
        "examples": {m: r.examples for m, r in comparison.results.items()},
    }


def markdown(record: dict[str, Any]) -> str:
    per_task = record["per_task"]
    tasks = sorted(next(iter(per_task.values())))
    short = _short_names(tasks)
    lines = [
        "| method | average | " + " | ".join(short[t] for t in tasks) + " |",
        "|---|---:|" + "---:|" * len(tasks),
    ]
    for method, scores in per_task.items():
        cells = " | ".join(f"{scores[t]:.1f}" for t in tasks)
        lines.append(f"| {method} | **{record['averages'][method]:.2f}** | {cells} |")
    if any(short[t] != t for t in tasks):
        lines += ["", "Tasks: " + ", ".join(f"{short[t]} = {t}" for t in tasks) + "."]
    costs = record["adaptation_cost"]
    if costs:
        lines += ["", *_cost_table(costs, record["adaptation_cost_summary"], short)]
    return "\n".join(lines) + "\n"


def _cost_table(costs: dict[str, dict], summary: dict[str, float], short: dict[str, str]) -> list:
    lines = [
        "| task | hyperray ROUGE-L | per-task LoRA steps to match | LoRA ROUGE-L there "
        "| LoRA time (s) | hyperray time (ms) | time ratio | FLOPs ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task, c in sorted(costs.items()):
        steps = (
            f"{c['lora_steps']}"
            if c["lora_reached"]
            else f"not reached (best at {c['lora_steps']})"
        )
        lines.append(
            f"| {short.get(task, task)} | {c['hyperray_rougeL']:.1f} | {steps} "
            f"| {c['lora_rougeL_at_steps']:.1f} | {c['lora_seconds']:.1f} "
            f"| {c['hyperray_seconds'] * 1000:.0f} | {c['seconds_ratio']:.0f}x "
            f"| {c['flops_ratio']:.0f}x |"
        )
    lines.append(
        f"| **all** | | | | {summary['total_lora_seconds']:.1f} "
        f"| {summary['total_hyperray_seconds'] * 1000:.0f} | **{summary['seconds_ratio']:.0f}x** "
        f"| **{summary['flops_ratio']:.0f}x** |"
    )
    return lines


def _short_names(tasks: list[str]) -> dict[str, str]:
    """``task039_qasc_...`` -> ``task039`` when those prefixes are unique."""
    short = {t: t.split("_", 1)[0] for t in tasks}
    return short if len(set(short.values())) == len(tasks) else {t: t for t in tasks}
