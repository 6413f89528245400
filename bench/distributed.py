"""Distributed-training benchmark: the Ray Train + DeepSpeed job against a plain PyTorch loop.

Both train the same hypernetwork on the same kind of task-grouped batches for the same number
of steps, in this one script, one after the other:
- baseline: one process, :class:`~hyperray.engine.TorchEngine`, all of this machine's threads;
- distributed: ``train_distributed`` with ``--workers`` Ray Train workers (one thread each)
  under DeepSpeed ZeRO-``--zero``.
Throughput is tokens the target model reads per second, after the first logging window
(warm-up). The distributed figure is rank 0's rate times the number of ranks (the shards are
equal by construction). The data-wait fraction is rank 0's time blocked on Ray Data over wall time.

    python bench/distributed.py [--model smollm2-135m-instruct] [--steps 40] [--workers 2] [--zero 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperray.build import build, build_groups, build_tasks  # noqa: E402
from hyperray.config import Config, override  # noqa: E402
from hyperray.distributed import train_distributed  # noqa: E402
from hyperray.engine import TorchEngine  # noqa: E402
from hyperray.trainer import train  # noqa: E402


def steady(rows: list[dict], key: str) -> float:
    """Median of ``key`` over the logging windows after the first."""
    return statistics.median(r[key] for r in rows[1:] if key in r)


def baseline(config: Config) -> list[dict]:
    t = config.train
    model = build(config)
    tasks, _ = build_tasks(config)
    batches = (model.collator(g) for g in build_groups(config, tasks))
    engine = TorchEngine(model, t.lr, t.steps, t.warmup_steps, t.weight_decay, t.grad_clip)
    return train(model, batches, engine, t.steps, [], t.log_every)


def distributed(config: Config) -> list[dict]:
    train_distributed(config)
    lines = (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "tokens_per_s" in row]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        config = override(
            Config(),
            {
                "model.name": args.model,
                "train.steps": args.steps,
                "train.log_every": 10,
                "train.checkpoint_every": 10 * args.steps,
                "train.num_workers": args.workers,
                "train.cpus_per_worker": max(1, threads // args.workers),  # same cores as baseline
                "train.zero_stage": args.zero,
                "output_dir": tmp,
            },
        )
        base_rows = baseline(config)
        dist_rows = distributed(config)
    base = steady(base_rows, "tokens_per_s")
    dist = args.workers * steady(dist_rows, "tokens_per_s")
    result = {
        "model": args.model,
        "steps": args.steps,
        "workers": args.workers,
        "zero_stage": args.zero,
        "baseline_threads": threads,
        "baseline_tokens_per_s": base,
        "distributed_tokens_per_s": dist,
        "ratio": dist / base,
        "data_wait_fraction": steady(dist_rows, "data_wait_fraction"),
        "command": f"python bench/distributed.py --model {args.model} --steps {args.steps} "
        f"--workers {args.workers} --zero {args.zero}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (
        f"{args.model}, {args.steps} steps, CPU. Command: `{result['command']}`.\n\n"
        "| run | tokens/s | ratio to baseline (goal >= 0.85) | data wait (goal < 5%) |\n"
        "|---|---:|---:|---:|\n"
        f"| plain PyTorch loop, 1 process, {threads} threads | {base:.0f} | 1.00 | - |\n"
        f"| Ray Train + DeepSpeed ZeRO-{args.zero}, {args.workers} workers | {dist:.0f} | "
        f"{dist / base:.2f} | {100 * result['data_wait_fraction']:.1f}% |\n"
    )
    (out / "distributed.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
