"""Core benchmark: hypernetwork size, adapter-generation cost and training-step cost, per head.

On SmolLM2-135M-Instruct, q_proj + v_proj, rank 8 (the issue's setting), on this machine's CPU:
- parameters of each head's hypernetwork;
- time to generate one adapter (task encoder + hypernetwork forward, cache cleared) as a ratio
  to one forward pass of the target model on a 128-token input (goal <= 0.5);
- one hypernetwork training step as a ratio to one plain peft LoRA training step on the same
  batch (goal <= 1.1).
Both sides of each ratio run interleaved in this process, so machine noise hits them alike.

    python bench/core.py [--model smollm2-135m-instruct] [--repeats 7] [--out bench/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperray.batching import instruction_groups  # noqa: E402
from hyperray.build import build, build_tasks  # noqa: E402
from hyperray.config import Config, override  # noqa: E402
from hyperray.engine import TorchEngine  # noqa: E402
from hyperray.heads import HEADS  # noqa: E402
from hyperray.models import load_target_model  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def interleaved(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of a and b, measured alternately."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta += timed(a, 1)[-1:]
        tb += timed(b, 1)[-1:]
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    target = load_target_model(args.model)
    rows = []
    for head in sorted(HEADS):
        for lightweight in (False, True):
            config = override(
                Config(),
                {
                    "model.name": args.model,
                    "hypernet.head": head,
                    "lora.rank": 8,
                    "lora.lightweight": lightweight,
                },
            )
            rows.append(bench_head(config, target, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": args.model,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "command": "python bench/core.py",
        "rows": rows,
    }
    (out / "core.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "core.md").write_text(markdown(result))
    print(markdown(result))


def bench_head(config: Config, target, repeats: int) -> dict:
    model = build(config, target)
    params = sum(p.numel() for p in model.hypernet.parameters())
    tasks, _ = build_tasks(config)
    task = tasks[0]

    ids = torch.randint(0, target.tokenizer.vocab_size, (1, 128))

    def forward_128():
        with torch.no_grad():
            model.target(input_ids=ids)

    def generate_adapter():
        model.encoder._cache.clear()
        model.generate_adapter(task.definition, task.positive_examples[:2])

    t_adapter, t_forward = interleaved(generate_adapter, forward_128, repeats)

    groups = next(instruction_groups(tasks, 2, 4, seed=0))
    batch = model.collator(groups)
    engine = TorchEngine(model, lr=1e-4, total_steps=10_000)

    def hyper_step():
        engine.backward(model(batch).loss)
        engine.step()

    peft_model = get_peft_model(
        copy.deepcopy(target.model),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    peft_opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    labels = batch.labels

    def peft_step():
        out = peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels
        )
        out.loss.backward()
        peft_opt.step()
        peft_opt.zero_grad(set_to_none=True)

    t_hyper, t_peft = interleaved(hyper_step, peft_step, repeats)
    model.hooks.remove()
    return {
        "head": config.hypernet.head,
        "lightweight": config.lora.lightweight,
        "hypernet_params": params,
        "adapter_ms": 1000 * t_adapter,
        "forward_128_ms": 1000 * t_forward,
        "adapter_over_forward": t_adapter / t_forward,
        "hyper_step_ms": 1000 * t_hyper,
        "peft_step_ms": 1000 * t_peft,
        "step_over_peft": t_hyper / t_peft,
        "batch_tokens": int(batch.attention_mask.sum()),
    }


def markdown(result: dict) -> str:
    lines = [
        f"Model {result['model']}, q_proj+v_proj, rank 8, CPU ({result['torch_threads']} threads), "
        f"median of {result['repeats']}. Command: `{result['command']}`.",
        "",
        "| head | lightweight | hypernet params | adapter / forward(128) (goal <= 0.5) | step / peft step (goal <= 1.1) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['head']} | {'yes' if r['lightweight'] else 'no'} | {r['hypernet_params']:,} | "
            f"{r['adapter_over_forward']:.2f} ({r['adapter_ms']:.0f} / {r['forward_128_ms']:.0f} ms) | "
            f"{r['step_over_peft']:.2f} ({r['hyper_step_ms']:.0f} / {r['peft_step_ms']:.0f} ms) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
