"""Train a hypernetwork: ``python jobs/train.py [--config FILE.yaml] [--section.key=value ...]``.

With no arguments: SmolLM2-135M-Instruct on the built-in task suite, held-out ROUGE-L printed
before and after. Writes to ``--output-dir``: config.json, metrics.jsonl, loss.png,
rouge_by_task.png, eval_before.json, eval_after.json, summary.json, checkpoint/ and
adapter_example/ (a PEFT adapter generated for the first held-out task).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperray.build import build, build_groups, build_tasks  # noqa: E402
from hyperray.checkpoint import load_weights, save_checkpoint  # noqa: E402
from hyperray.cli import parse_args  # noqa: E402
from hyperray.config import save_config  # noqa: E402
from hyperray.engine import TorchEngine  # noqa: E402
from hyperray.evaluate import EvalResult, evaluate  # noqa: E402
from hyperray.plots import plot_loss, plot_task_scores  # noqa: E402
from hyperray.trainer import JsonlLogger, train  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config, _ = parse_args(argv, description=__doc__)
    train_tasks, eval_tasks = build_tasks(
        config
    )  # bad task files fail here, before any model loads
    eval_tasks = eval_tasks[: config.train.eval_tasks]
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json")
    (out / "metrics.jsonl").unlink(missing_ok=True)
    print(
        f"hyperray: {len(train_tasks)} training tasks, {len(eval_tasks)} held-out tasks", flush=True
    )

    model = build(config)
    if config.train.init_from:
        load_weights(model, config.train.init_from)
    trainable = sum(p.numel() for p in model.hypernet.parameters())
    print(f"hyperray: target {model.base_model}, {model.hypernet.layout.describe()}", flush=True)
    print(f"hyperray: head {config.hypernet.head}, {trainable:,} trainable parameters", flush=True)

    t, data = config.train, config.data

    def held_out() -> EvalResult:
        return evaluate(
            model,
            eval_tasks,
            data.num_demos,
            t.eval_instances,
            t.max_new_tokens,
            data.include_definition,
        )

    def periodic_eval(step: int) -> dict[str, float]:
        score = held_out().average
        print(f"step {step}: held-out ROUGE-L {score:.2f}", flush=True)
        return {"rougeL": score}

    before = held_out()
    print(f"held-out ROUGE-L before training: {before.average:.2f}", flush=True)
    batches = (model.collator(groups) for groups in build_groups(config, train_tasks))
    engine = TorchEngine(model, t.lr, t.steps, t.warmup_steps, t.weight_decay, t.grad_clip)
    started = time.perf_counter()
    logger = JsonlLogger(out / "metrics.jsonl")
    history = train(
        model, batches, engine, t.steps, [logger], t.log_every, t.eval_every, periodic_eval
    )
    seconds = time.perf_counter() - started
    after = held_out()
    print(f"held-out ROUGE-L before training: {before.average:.2f}", flush=True)
    print(
        f"held-out ROUGE-L after training:  {after.average:.2f}  ({t.steps} steps, {seconds:.0f} s)",
        flush=True,
    )

    save_checkpoint(model, config, out / "checkpoint", steps=t.steps)
    example = eval_tasks[0]
    adapter = model.generate_adapter(
        example.definition, example.positive_examples[: data.num_demos]
    )
    adapter.save_peft(out / "adapter_example")
    for name, result in (("eval_before", before), ("eval_after", after)):
        record = {
            "average": result.average,
            "per_task": result.per_task,
            "examples": result.examples,
        }
        (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
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
