"""Evaluate a hypernetwork against the baselines on held-out tasks.

    python jobs/evaluate.py --checkpoint runs/sni/checkpoint --data ../shared/data/sni/dev \\
        --baselines all --output-dir runs/sni/eval

``--checkpoint`` is a checkpoint folder or an MLflow artifact URI (``runs:/<run id>/checkpoint``,
``models:/<name>/<version>``, ...; set ``MLFLOW_TRACKING_URI`` for its store). Each held-out
task is split once, by ``--instances-split-seed``, into demonstrations (its first k positive
examples), per-task-LoRA training instances and test instances; every method answers the same
test instances with the same greedy decoding. Writes to ``--output-dir``: results.json (scores,
costs, split, every answer), results.md (the tables), rouge_by_method.png, adaptation_cost.png,
multitask_lora/ (the multi-task LoRA, reused by a later run with the same budget), and an MLflow
run (``<output-dir>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` is set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperray.build import build_tasks  # noqa: E402
from hyperray.checkpoint import load_checkpoint  # noqa: E402
from hyperray.comparison import METHODS, Settings, compare, resolve_methods  # noqa: E402
from hyperray.comparison_report import markdown, to_record  # noqa: E402
from hyperray.config import Config, override  # noqa: E402
from hyperray.data import load_tasks  # noqa: E402
from hyperray.heldout import split_tasks_for_eval  # noqa: E402
from hyperray.lora_baselines import (  # noqa: E402
    Budget,
    load_multitask_lora,
    save_multitask_lora,
    train_multitask_lora,
)
from hyperray.plots import plot_adaptation_cost, plot_task_scores  # noqa: E402
from hyperray.tracking import MlflowLogger, start_run  # noqa: E402
from hyperray.trainer import JsonlLogger  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or MLflow artifact URI")
    p.add_argument(
        "--data", help="held-out SNI task folder; default: the checkpoint's held-out tasks"
    )
    p.add_argument(
        "--baselines", default="all", help=f"all, or a comma list of: {', '.join(METHODS)}"
    )
    p.add_argument("--output-dir", default="runs/eval")
    p.add_argument("--tasks", type=int, help="evaluate only the first N held-out tasks (by name)")
    p.add_argument("--instances-split-seed", type=int, default=0)
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="share of each task's instances per-task LoRA trains on; the rest are scored")  # fmt: skip
    p.add_argument("--max-test-instances", type=int, help="cap on scored instances per task")
    p.add_argument(
        "--max-new-tokens", type=int, help="default: the checkpoint's train.max_new_tokens"
    )
    p.add_argument("--batch-size", type=int, default=8, help="generation batch size")
    p.add_argument(
        "--context-tokens", type=int, default=1024, help="prompt tokens in-context keeps"
    )
    p.add_argument("--multitask-steps", type=int,
                   help="multi-task LoRA steps; default the checkpoint's train.steps (same budget)")  # fmt: skip
    p.add_argument("--multitask-lr", type=float, help="default: the checkpoint's train.lr")
    p.add_argument("--multitask-lora-dir", help="where the multi-task LoRA is kept and reused; "
                   "default <output-dir>/multitask_lora")  # fmt: skip
    p.add_argument("--per-task-steps", type=int, default=40)
    p.add_argument("--per-task-eval-every", type=int, default=5)
    p.add_argument("--per-task-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-mlflow", action="store_true")
    return p.parse_args(argv)


def resolve_checkpoint(location: str) -> Path:
    """A local checkpoint folder; an MLflow URI is downloaded first."""
    if "://" not in location and ":/" not in location:
        return Path(location)
    from hyperray.tracking import download_artifacts

    return download_artifacts(location)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse(argv)
    methods = resolve_methods(args.baselines)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    model, config = load_checkpoint(resolve_checkpoint(args.checkpoint))
    train_tasks, held_out = [], []
    if args.data is None or "multitask-lora" in methods:
        train_tasks, held_out = build_tasks(config)
    if args.data is not None:
        held_out = load_tasks(args.data, min_positive_examples=config.data.num_demos)
    held_out = sorted(held_out, key=lambda t: t.name)[: args.tasks]
    splits = split_tasks_for_eval(
        held_out,
        config.data.num_demos,
        args.train_fraction,
        args.instances_split_seed,
        args.max_test_instances,
    )
    settings = Settings(
        num_demos=config.data.num_demos,
        max_new_tokens=args.max_new_tokens or config.train.max_new_tokens,
        batch_size=args.batch_size,
        context_tokens=args.context_tokens,
        per_task_steps=args.per_task_steps,
        per_task_eval_every=args.per_task_eval_every,
        per_task_lr=args.per_task_lr,
        seed=args.instances_split_seed,
    )
    print(
        f"evaluate: {len(splits)} held-out tasks, "
        f"{sum(len(s.test) for s in splits)} test instances, methods {', '.join(methods)}",
        flush=True,
    )
    run = None
    if not args.no_mlflow:
        eval_config = override(config, {"output_dir": str(out)})
        run = start_run(eval_config, run_name=f"evaluate-{out.name}", tags=_tags(args, methods))
    tracker = MlflowLogger(*run) if run else None

    multitask = None
    multitask_record = None
    if "multitask-lora" in methods:
        multitask, multitask_record = _multitask_lora(model, config, train_tasks, args, out)
    comparison = compare(model, splits, methods, settings, multitask.state if multitask else None)

    context = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "base_model": model.base_model,
        "command": "python jobs/evaluate.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": vars(settings),
        "train_fraction": args.train_fraction,
        "hypernetwork_train_steps": config.train.steps,
        "multitask_lora": multitask_record,
        "seconds": time.perf_counter() - started,
    }
    record = to_record(comparison, splits, context)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "results.md").write_text(markdown(record))
    plot_task_scores(record["per_task"], out / "rouge_by_method.png")
    if comparison.costs:
        plot_adaptation_cost(comparison.costs, out / "adaptation_cost.png")
    print(markdown(record), flush=True)
    if tracker is not None:
        _log_to_mlflow(tracker, record, out)
        print(f"evaluate: MLflow run {run[1]} at {run[0]}", flush=True)
    print(f"evaluate: wrote {out} ({time.perf_counter() - started:.0f} s)", flush=True)
    return record


def _multitask_lora(model, config: Config, train_tasks, args, out: Path) -> tuple:
    """The multi-task LoRA with the hypernetwork's budget: reused when already trained, else trained."""
    t, d = config.train, config.data
    budget = Budget(
        steps=args.multitask_steps or t.steps,
        tasks_per_batch=d.tasks_per_batch * t.num_workers,
        rows_per_task=d.rows_per_task,
    )
    record = {
        "base_model": model.base_model,
        "rank": model.rank,
        "alpha": model.alpha,
        "target_modules": model.target_modules,
        "train_data": d.path or "builtin",
        "budget_steps": budget.steps,
        "budget_rows": budget.rows,
        "tasks_per_batch": budget.tasks_per_batch,
        "rows_per_task": budget.rows_per_task,
        "lr": args.multitask_lr or t.lr,
        "warmup_steps": t.warmup_steps,
        "seed": d.seed,
    }
    directory = Path(args.multitask_lora_dir or out / "multitask_lora")
    lora = load_multitask_lora(directory, record)
    if lora is not None:
        print(f"== multitask-lora: reusing {directory} ({lora.rows} rows, {lora.steps} steps)")
    else:
        print(
            f"== multitask-lora: training {budget.steps} steps x {budget.rows // budget.steps} rows"
        )
        lora = train_multitask_lora(
            model,
            train_tasks,
            budget,
            d.num_demos,
            d.include_definition,
            lr=record["lr"],
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            grad_clip=t.grad_clip,
            seed=d.seed,
            log_every=t.log_every,
            loggers=[JsonlLogger(directory.parent / f"{directory.name}.metrics.jsonl")],
        )
        save_multitask_lora(lora, directory, record)
    return lora, {**record, "steps": lora.steps, "rows": lora.rows, "train_seconds": lora.seconds}


def _tags(args: argparse.Namespace, methods: list[str]) -> dict[str, str]:
    tags = {f"eval.{k}": str(v) for k, v in vars(args).items() if v is not None}
    return tags | {"eval.methods": ",".join(methods), "hyperray.job": "evaluate"}


def _log_to_mlflow(tracker: MlflowLogger, record: dict, out: Path) -> None:
    metrics = {f"rougeL.{m}": v for m, v in record["averages"].items()}
    for method, scores in record["per_task"].items():
        metrics |= {f"rougeL.{method}.{task}": v for task, v in scores.items()}
    summary = record["adaptation_cost_summary"]
    metrics |= {f"adaptation.{k}": float(v) for k, v in summary.items()}
    tracker.log(metrics, 0)
    for name in ("results.json", "results.md", "rouge_by_method.png", "adaptation_cost.png"):
        if (out / name).is_file():
            tracker.log_artifact(out / name)
    tracker.finish()


if __name__ == "__main__":
    main()
