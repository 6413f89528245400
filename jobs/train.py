"""Train a hypernetwork: ``python jobs/train.py [--config FILE.yaml] [--section.key=value ...]``.

A Ray job: ``ray job submit --working-dir . -- python jobs/train.py`` trains on the cluster's
Ray Train workers (DeepSpeed ZeRO, ``--train.num_workers``, ``--train.zero_stage``); run
directly, it starts a local Ray itself. The driver evaluates held-out ROUGE-L before training
and, on the exported checkpoint, after.

With no arguments: SmolLM2-135M-Instruct on the built-in task suite, held-out ROUGE-L printed
before and after. Writes to ``--output-dir``: config.json, metrics.jsonl, loss.png,
rouge_by_task.png, eval_before.json, eval_after.json, summary.json, checkpoint/ and
adapter_example/ (a PEFT adapter generated for the first held-out task), plus ray/ (Ray
Train's run and DeepSpeed checkpoints; ``--train.resume=true`` continues from them) and
workers/ (each rank's status).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperray.build import build, build_tasks  # noqa: E402
from hyperray.checkpoint import load_weights  # noqa: E402
from hyperray.cli import parse_args  # noqa: E402
from hyperray.config import override, save_config  # noqa: E402
from hyperray.distributed import train_distributed  # noqa: E402
from hyperray.evaluate import EvalResult, evaluate_held_out  # noqa: E402
from hyperray.plots import plot_loss, plot_task_scores  # noqa: E402
from hyperray.tracking import MlflowLogger, mlflow_loggers, start_run  # noqa: E402
from hyperray.trainer import MetricLogger  # noqa: E402


def main(
    argv: list[str] | None = None,
    make_loggers: Callable[[], list[MetricLogger]] | None = None,
) -> dict:
    """``make_loggers`` builds rank 0's extra metric loggers (e.g. MLflow) inside the worker."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config, _ = parse_args(argv, description=__doc__)
    config = override(config, {"output_dir": str(Path(config.output_dir).resolve())})
    train_tasks, eval_tasks = build_tasks(
        config
    )  # bad task files fail here, before any model loads
    eval_tasks = eval_tasks[: config.train.eval_tasks]
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json")
    if not config.train.resume:
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
        return evaluate_held_out(model, config, eval_tasks)

    before = held_out()
    print(f"held-out ROUGE-L before training: {before.average:.2f}", flush=True)
    run = start_run(config, run_name=out.name) if config.mlflow.enabled else None
    if run is not None and make_loggers is None:
        make_loggers = functools.partial(mlflow_loggers, *run)
    started = time.perf_counter()
    train_distributed(config, make_loggers)
    seconds = time.perf_counter() - started
    load_weights(model, out / "checkpoint")  # the workers' export, consolidated from every rank
    after = held_out()
    print(f"held-out ROUGE-L before training: {before.average:.2f}", flush=True)
    print(
        f"held-out ROUGE-L after training:  {after.average:.2f}  ({t.steps} steps, {seconds:.0f} s)",
        flush=True,
    )

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
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    plot_loss([row for row in history if "loss" in row], out / "loss.png")
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
    if run is not None:
        tracker = MlflowLogger(*run)
        tracker.log({"rougeL_before": before.average, "rougeL_after": after.average}, t.steps)
        for name in (
            "config.json",
            "loss.png",
            "rouge_by_task.png",
            "eval_after.json",
            "checkpoint",
            "adapter_example",
        ):
            tracker.log_artifact(out / name)
        tracker.finish()
        print(f"hyperray: MLflow run {run[1]} at {run[0]}", flush=True)
    print(f"hyperray: wrote {out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
