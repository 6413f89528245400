"""Search α, LoRA rank, generator head, lightweight LoRA and learning rate with Ray Tune + Optuna.

    python jobs/tune.py                                   # small search: SmolLM2 + built-in tasks
    python jobs/tune.py --config jobs/configs/tune-sni.yaml --tune.num_samples=24 --tune.max_concurrent=2

Without ``--config`` the search is ``jobs/configs/tune-small.yaml``. Each trial is the Ray Train
+ DeepSpeed training job on the sampled config (``tune.space``, dotted keys); ASHA stops weak
trials early on held-out ROUGE-L. Writes to ``--output-dir``: trials.md and trials.csv (every
trial's settings, ROUGE-L, loss and time), optimization_history.png, param_importances.png,
best/checkpoint (the best hypernetwork, safetensors + JSON) and summary.json; trials/<id>/ holds
each trial's run. MLflow: a parent run with a child run per trial, and the best hypernetwork
registered as a model version (``tune.registered_model``). Run the same command again to resume
a stopped search: finished trials are kept, unfinished ones continue from their checkpoints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hyperray.cli import parse_args  # noqa: E402
from hyperray.tuning import METRIC, tune  # noqa: E402

DEFAULT_CONFIG = ROOT / "jobs" / "configs" / "tune-small.yaml"


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    config, _ = parse_args(argv, description=__doc__)
    summary = tune(config)
    if summary.get("stopped"):
        return summary
    best = summary["best"]
    out = Path(config.output_dir).resolve()
    print(f"hyperray: {summary['trials']} trials; table in {out / 'trials.md'}", flush=True)
    print(f"hyperray: best {METRIC} {best[METRIC]:.2f} with {best['params']}", flush=True)
    if "registered" in summary:
        print(f"hyperray: best hypernetwork registered as {summary['registered']['uri']}")
    return summary


if __name__ == "__main__":
    main()
