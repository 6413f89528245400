"""Held-out evaluation: greedy answers under each task's generated adapter, scored by ROUGE-L.

As in the SNI papers: the score of an answer is the best ROUGE-L F-measure against any of its
references (x100), a task's score is the mean over its instances, and the reported number is
the mean over tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rouge_score import rouge_scorer

from hyperray.config import Config
from hyperray.data import Instance, Task, format_instance
from hyperray.lora import Adapter
from hyperray.model import HyperLoRA

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    return 100.0 * max(_SCORER.score(ref, prediction)["rougeL"].fmeasure for ref in references)


@dataclass
class EvalResult:
    per_task: dict[str, float]
    examples: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def average(self) -> float:
        return sum(self.per_task.values()) / max(len(self.per_task), 1)


def evaluate(
    model: HyperLoRA,
    tasks: Sequence[Task],
    num_demos: int = 2,
    num_instances: int = 8,
    max_new_tokens: int = 32,
    include_definition: bool = False,
    batch_size: int = 8,
    adapter_for: Callable[[Task], Adapter | None] | None = None,
    prompt_for: Callable[[Task, Instance], str] | None = None,
) -> EvalResult:
    """ROUGE-L per held-out task.

    Baselines replace the generated adapter (``adapter_for``; None runs the target as it is) or
    the target model's input text (``prompt_for``, e.g. the task text in context).
    """
    was_training = model.training
    model.eval()
    result = EvalResult({})
    for task in tasks:
        if adapter_for is None:
            adapter = model.generate_adapter(task.definition, task.positive_examples[:num_demos])
        else:
            adapter = adapter_for(task)
        instances = task.instances[:num_instances]
        predictions = []
        for start in range(0, len(instances), batch_size):
            chunk = instances[start : start + batch_size]
            if prompt_for is not None:
                inputs = [prompt_for(task, i) for i in chunk]
            else:
                definition = task.definition if include_definition else None
                inputs = [format_instance(i.input, definition) for i in chunk]
            predictions += model.generate(inputs, adapter, max_new_tokens)
        scores = [rouge_l(p, i.outputs) for p, i in zip(predictions, instances, strict=True)]
        result.per_task[task.name] = sum(scores) / len(scores)
        result.examples[task.name] = [
            {"input": i.input, "prediction": p, "references": list(i.outputs), "rougeL": s}
            for i, p, s in zip(instances, predictions, scores, strict=True)
        ]
    model.train(was_training)
    return result


def evaluate_held_out(
    model: HyperLoRA, config: Config, held_out: Sequence[Task] | None = None
) -> EvalResult:
    """ROUGE-L on the config's held-out tasks (``train.eval_tasks`` of them) with its settings."""
    if held_out is None:
        from hyperray.build import build_tasks

        _, held_out = build_tasks(config)
    t, data = config.train, config.data
    return evaluate(
        model,
        held_out[: t.eval_tasks],
        data.num_demos,
        t.eval_instances,
        t.max_new_tokens,
        data.include_definition,
    )
