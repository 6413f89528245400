"""Train a hypernetwork: ``python jobs/train.py [--config FILE.yaml] [--section.key=value ...]``.

With no arguments: SmolLM2-135M-Instruct on the built-in task suite, held-out ROUGE-L printed
before and after. Writes to ``--output-dir``: config.json, metrics.jsonl, loss.png,
rouge_by_task.png, eval_before.json, eval_after.json, checkpoint/ and adapter_example/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperray.batching import Group, instruction_groups  # noqa: E402
from hyperray.build import build, build_tasks  # noqa: E402
from hyperray.checkpoint import load_weights, save_checkpoint  # noqa: E402
from hyperray.cli import parse_args  # noqa: E402
from hyperray.config import Config, save_config  # noqa: E402
from hyperray.data import build_pretrain_tasks, load_text_passages, passages_from_tasks  # noqa: E402
from hyperray.engine import TorchEngine  # noqa: E402
from hyperray.evaluate import evaluate  # noqa: E402
from hyperray.plots import plot_loss, plot_task_scores  # noqa: E402
from hyperray.trainer import train  # noqa: E402


class JsonlLogger:
    def __init__(self, path: Path):
        self.path = path

    def log(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def group_stream(config: Config, tasks):
    data = config.data
    if config.train.stage == "pretrain":
        source = (
            load_text_passages(data.text_path) if data.text_path else passages_from_tasks(tasks)
        )
        examples = build_pretrain_tasks(source, data.pretrain_objective, data.seed)
        if not examples:
            raise ValueError(
                "no pretraining passage is long enough; point data.text_path at longer text"
            )
        size = data.tasks_per_batch * data.rows_per_task
        step = 0
        while True:
            chunk = [examples[(step * size + i) % len(examples)] for i in range(size)]
            yield [Group(e.context, ((e.prompt, e.completion),), None, "pretrain") for e in chunk]
            step += 1
    yield from instruction_groups(
        tasks,
        data.tasks_per_batch,
        data.rows_per_task,
        data.num_demos,
        data.include_definition,
        with_alt=config.train.consistency_weight > 0,
        seed=data.seed,
    )


def main(argv: list[str] | None = None) -> dict:
    config, _ = parse_args(argv, description=__doc__)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json")
    (out / "metrics.jsonl").unlink(missing_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    train_tasks, eval_tasks = build_tasks(config)
    eval_tasks = eval_tasks[: config.train.eval_tasks]
    print(
        f"hyperray: {len(train_tasks)} training tasks, {len(eval_tasks)} held-out tasks", flush=True
    )
    model = build(config)
    if config.train.init_from:
        load_weights(model, config.train.init_from)
    trainable = sum(p.numel() for p in model.hypernet.parameters())
    print(f"hyperray: target {model.base_model}, {model.hypernet.layout.describe()}", flush=True)
    print(f"hyperray: head {config.hypernet.head}, {trainable:,} trainable parameters", flush=True)

    t = config.train

    def held_out(step: int) -> dict[str, float]:
        result = evaluate(
            model,
            eval_tasks,
            config.data.num_demos,
            t.eval_instances,
            t.max_new_tokens,
            config.data.include_definition,
        )
        print(f"step {step}: held-out ROUGE-L {result.average:.2f}", flush=True)
        return {"rougeL": result.average}

    before = evaluate(
        model,
        eval_tasks,
        config.data.num_demos,
        t.eval_instances,
        t.max_new_tokens,
        config.data.include_definition,
    )
    print(f"held-out ROUGE-L before training: {before.average:.2f}", flush=True)

    collate = model.collator
    batches = (collate(groups) for groups in group_stream(config, train_tasks))
    engine = TorchEngine(model, t.lr, t.steps, t.warmup_steps, t.weight_decay, t.grad_clip)
    started = time.perf_counter()
    history = train(
        model,
        batches,
        engine,
        t.steps,
        [JsonlLogger(out / "metrics.jsonl")],
        t.log_every,
        t.eval_every,
        held_out,
    )
    seconds = time.perf_counter() - started

    after = evaluate(
        model,
        eval_tasks,
        config.data.num_demos,
        t.eval_instances,
        t.max_new_tokens,
        config.data.include_definition,
    )
    print(f"held-out ROUGE-L before training: {before.average:.2f}", flush=True)
    print(
        f"held-out ROUGE-L after training:  {after.average:.2f}  ({t.steps} steps, {seconds:.0f} s)",
        flush=True,
    )

    save_checkpoint(model, config, out / "checkpoint", steps=t.steps)
    task = eval_tasks[0]
    model.generate_adapter(
        task.definition, task.positive_examples[: config.data.num_demos]
    ).save_peft(out / "adapter_example")
    for name, result in (("eval_before", before), ("eval_after", after)):
        (out / f"{name}.json").write_text(
            json.dumps(
                {
                    "average": result.average,
                    "per_task": result.per_task,
                    "examples": result.examples,
                },
                indent=2,
            )
        )
    plot_loss(history, out / "loss.png")
    plot_task_scores(
        {"before": before.per_task, "after": after.per_task}, out / "rouge_by_task.png"
    )
    summary = {
        "rougeL_before": before.average,
        "rougeL_after": after.average,
        "train_seconds": seconds,
        "steps": t.steps,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"hyperray: wrote {out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
