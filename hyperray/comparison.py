"""hyperray against the baselines the papers use, on the same held-out split, instances and decoding.

Every method answers the same test instances of every held-out task (:mod:`hyperray.heldout`)
greedily with the same ``max_new_tokens``, and is scored by :func:`hyperray.evaluate.evaluate`:

- ``zero-shot``: the base model given the instance input alone;
- ``in-context``: the base model given the Def+kPos task text, then the input;
- ``multitask-lora``: the base model with one peft LoRA trained on the training tasks with the
  hypernetwork's budget;
- ``per-task-lora``: the base model with a peft LoRA trained on the task's own training
  instances (its final score; the curve and the adaptation cost are kept alongside);
- ``hyperray``: the adapter generated from Def+kPos, the target given the input;
- ``hyperray-def``: the same adapter, the target also given the definition;
- ``control-unrelated``: hyperray given another held-out task's Def+kPos (a seeded derangement);
- ``control-random``: hyperray given random words as the task text.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor

from hyperray.adaptation_cost import cost_row, count_flops, hypernet_cost, lora_cost
from hyperray.data import Task, format_in_context, format_task_text
from hyperray.evaluate import EvalResult, evaluate
from hyperray.heldout import TaskSplit
from hyperray.lora_baselines import attached_lora, train_task_lora
from hyperray.model import HyperLoRA

METHODS = (
    "zero-shot",
    "in-context",
    "multitask-lora",
    "per-task-lora",
    "hyperray",
    "hyperray-def",
    "control-unrelated",
    "control-random",
)
NEEDS = {"per-task-lora": ("zero-shot", "hyperray")}
"""Methods another one reads: per-task LoRA starts from zero-shot and is timed against hyperray."""


@dataclass
class Settings:
    num_demos: int = 2
    max_new_tokens: int = 32
    batch_size: int = 8
    context_tokens: int = 1024
    """Prompt tokens the in-context baseline keeps (the task text makes its prompts long)."""
    per_task_steps: int = 40
    per_task_eval_every: int = 5
    per_task_lr: float = 1e-3
    cost_repeats: int = 3
    seed: int = 0


@dataclass
class Comparison:
    results: dict[str, EvalResult] = field(default_factory=dict)
    """method -> per-task ROUGE-L and every prediction."""
    costs: dict[str, dict] = field(default_factory=dict)
    """task -> hyperray's and the per-task LoRA's adaptation cost, and their ratios."""
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """task -> the per-task LoRA's (step, ROUGE-L) curve."""
    seconds: dict[str, float] = field(default_factory=dict)
    """method -> wall time of the whole method (adapting and answering)."""

    def averages(self) -> dict[str, float]:
        return {m: r.average for m, r in self.results.items()}


def resolve_methods(names: str | Sequence[str]) -> list[str]:
    """``"all"`` or a comma list, checked, in :data:`METHODS` order, with what they need."""
    wanted = list(METHODS) if names == "all" else _names(names)
    unknown = [n for n in wanted if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from all, {', '.join(METHODS)}")
    wanted += [need for name in wanted for need in NEEDS.get(name, ())]
    return [m for m in METHODS if m in wanted]


def compare(
    model: HyperLoRA,
    splits: Sequence[TaskSplit],
    methods: Sequence[str],
    settings: Settings,
    multitask_state: dict[str, Tensor] | None = None,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Run ``methods`` (see :func:`resolve_methods`) on every split's test instances."""
    if "multitask-lora" in methods and multitask_state is None:
        raise ValueError("multitask-lora needs the trained LoRA: pass multitask_state")
    tasks = [split.test_task() for split in splits]
    out = Comparison()
    s = settings
    # What per-task LoRA reads runs before it; results keep the table's order.
    for method in sorted(methods, key=lambda m: m in NEEDS):
        started = time.perf_counter()
        log(f"== {method}")
        if method == "per-task-lora":
            out.results[method] = _per_task_lora(model, splits, out, s, log)
        else:
            run = _runner(model, method, tasks, s)
            with _setting(model, method, s, multitask_state):
                out.results[method] = _each_task(method, tasks, run, log)
        out.seconds[method] = time.perf_counter() - started
        log(
            f"== {method}: average ROUGE-L {out.results[method].average:.2f} "
            f"({out.seconds[method]:.0f} s)"
        )
    out.results = {m: out.results[m] for m in methods}
    return out


def _runner(
    model: HyperLoRA, method: str, tasks: Sequence[Task], s: Settings
) -> Callable[[Task], EvalResult]:
    """How ``method`` answers one task's test instances."""
    n = max(len(t.instances) for t in tasks)
    if method in ("zero-shot", "multitask-lora"):  # multitask: the LoRA is attached (_setting)
        return lambda t: evaluate(model, [t], **_common(s, n), adapter_for=_no_adapter)
    if method == "in-context":
        return lambda t: evaluate(
            model, [t], **_common(s, n), adapter_for=_no_adapter, prompt_for=_in_context
        )
    if method == "hyperray":
        return lambda t: evaluate(model, [t], **_common(s, n))
    if method == "hyperray-def":
        return lambda t: evaluate(model, [t], **_common(s, n), include_definition=True)
    if method == "control-unrelated":
        return _control(model, unrelated_texts(tasks, s.num_demos, s.seed), s, n)
    if method == "control-random":
        return _control(model, random_texts(tasks, s.num_demos, s.seed), s, n)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _per_task_lora(
    model: HyperLoRA,
    splits: Sequence[TaskSplit],
    out: Comparison,
    s: Settings,
    log: Callable[[str], None],
) -> EvalResult:
    n = max(len(split.test) for split in splits)
    result = EvalResult({})
    for split in splits:
        task = split.test_task()

        def score(task: Task = task) -> tuple[float, list[dict]]:
            r = evaluate(model, [task], **_common(s, n), adapter_for=_no_adapter)
            return r.per_task[task.name], r.examples[task.name]

        run = train_task_lora(
            model,
            split,
            s.per_task_steps,
            s.per_task_eval_every,
            score,
            initial_score=out.results["zero-shot"].per_task[task.name],
            lr=s.per_task_lr,
            seed=s.seed,
            count_flops=count_flops,
        )
        result.per_task[task.name] = run.curve[-1][1]
        result.examples[task.name] = run.examples
        out.curves[task.name] = run.curve
        target = out.results["hyperray"].per_task[task.name]
        hyper = hypernet_cost(model, task.definition, split.demos, s.cost_repeats)
        lora = lora_cost(run.curve, run.train_seconds, run.step_flops, target)
        out.costs[task.name] = cost_row(hyper, lora, target)
        log(
            f"  per-task-lora {task.name}: {run.curve[-1][1]:.2f} after {s.per_task_steps} steps; "
            f"{'reached' if lora.reached else 'best'} {lora.score:.2f} (hyperray {target:.2f}) "
            f"at step {lora.steps}, {lora.seconds:.1f} s vs hyperray {hyper.seconds * 1000:.0f} ms"
        )
    return result


def _each_task(
    method: str, tasks: Sequence[Task], run: Callable[[Task], EvalResult], log
) -> EvalResult:
    result = EvalResult({})
    for task in tasks:
        one = run(task)
        result.per_task[task.name] = one.per_task[task.name]
        result.examples[task.name] = one.examples[task.name]
        log(f"  {method} {task.name}: {one.per_task[task.name]:.2f}")
    return result


@contextmanager
def _setting(
    model: HyperLoRA, method: str, s: Settings, multitask_state: dict[str, Tensor] | None
) -> Iterator[None]:
    """What a method changes about the target while it answers, undone afterwards."""
    if method == "multitask-lora":
        with attached_lora(model, s.seed, multitask_state):
            yield
    elif method == "in-context":
        kept, model.collator.max_prompt_tokens = model.collator.max_prompt_tokens, s.context_tokens
        try:
            yield
        finally:
            model.collator.max_prompt_tokens = kept
    else:
        yield


def _common(s: Settings, n: int) -> dict:
    return {
        "num_demos": s.num_demos,
        "num_instances": n,
        "max_new_tokens": s.max_new_tokens,
        "batch_size": s.batch_size,
    }


def _no_adapter(task: Task) -> None:
    return None


def _in_context(task: Task, instance) -> str:
    return format_in_context(task.definition, task.positive_examples, instance.input)


def _control(
    model: HyperLoRA, texts: dict[str, tuple[str, list]], s: Settings, n: int
) -> Callable[[Task], EvalResult]:
    def run(task: Task) -> EvalResult:
        definition, demos = texts[task.name]
        return evaluate(
            model,
            [task],
            **_common(s, n),
            adapter_for=lambda _: model.generate_adapter(definition, demos),
        )

    return run


def unrelated_assignment(names: Sequence[str], seed: int = 0) -> dict[str, str]:
    """A seeded derangement: every task is paired with a different task (needs two or more)."""
    if len(names) < 2:
        raise ValueError("the unrelated-task control needs at least two held-out tasks")
    order = list(names)
    random.Random(f"hyperray-control-{seed}").shuffle(order)
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


def unrelated_texts(
    tasks: Sequence[Task], num_demos: int, seed: int
) -> dict[str, tuple[str, list]]:
    by_name = {t.name: t for t in tasks}
    pairs = unrelated_assignment(list(by_name), seed)
    return {
        name: (by_name[other].definition, list(by_name[other].positive_examples[:num_demos]))
        for name, other in pairs.items()
    }


def random_texts(tasks: Sequence[Task], num_demos: int, seed: int) -> dict[str, tuple[str, list]]:
    """Random words drawn from every held-out task text, as many as the task's own text has."""
    texts = {t.name: format_task_text(t.definition, t.positive_examples[:num_demos]) for t in tasks}
    vocabulary = sorted({w for text in texts.values() for w in text.split()})
    rng = random.Random(f"hyperray-random-text-{seed}")
    return {
        name: (" ".join(rng.choices(vocabulary, k=len(text.split()))), [])
        for name, text in texts.items()
    }


def _names(names: str | Sequence[str]) -> list[str]:
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    return list(names)
