"""Tuning benchmark: the real search on SmolLM2-135M-Instruct and the SNI subset, results kept.

Runs ``jobs/tune.py`` on ``jobs/configs/tune-sni.yaml`` (train on ``../shared/data/sni/train``,
ASHA and the final score on held-out ROUGE-L over ``../shared/data/sni/dev``), sized to about an
hour on a 2-core CPU machine, then copies what is worth committing into ``--results``: the
trials table (md, csv), Optuna's plots, summary.json and tune.md (the table with the winning α,
rank and head). The search itself, checkpoints and MLflow store included, stays in
``--output-dir``; rerunning the command resumes it. Extra arguments go to jobs/tune.py.

    python bench/tune.py [--output-dir runs/tune-sni] [--results bench/results/tune-sni] [--tune.num_samples=8 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))

import tune as tune_job  # noqa: E402

KEPT = ("trials.md", "trials.csv", "optimization_history.png", "param_importances.png")
WINNER_KEYS = ("train.consistency_weight", "lora.rank", "hypernet.head", "lora.lightweight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/tune-sni")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "tune-sni")
    args, rest = parser.parse_known_args()
    config = ROOT / "jobs" / "configs" / "tune-sni.yaml"
    argv = ["--config", str(config), "--output-dir", args.output_dir, *rest]
    summary = tune_job.main(argv)
    if summary.get("stopped"):
        sys.exit("the search was stopped; run the same command again to finish it")

    out = Path(args.output_dir)
    args.results.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (out / name).is_file():
            shutil.copy2(out / name, args.results / name)
    summary["command"] = "python bench/tune.py " + " ".join(rest)
    summary["machine"] = f"{platform.machine()}, {_cores()} CPU cores, no GPU"
    (args.results / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (args.results / "tune.md").write_text(render(summary, (out / "trials.md").read_text()))
    print(f"bench: results in {args.results}", flush=True)


def render(summary: dict, table: str) -> str:
    best = summary["best"]
    won = ", ".join(f"{k} = {_fmt(best['params'].get(k))}" for k in WINNER_KEYS)
    others = {k: v for k, v in best["params"].items() if k not in WINNER_KEYS}
    return (
        f"Real search on SmolLM2-135M-Instruct, SNI subset (train -> dev), "
        f"{summary['trials']} trials, {summary['search_seconds'] / 60:.0f} min from the first "
        f"trial's start to the last result, on {summary['machine']}. "
        f"Command: `{summary['command'].strip()}`.\n\n"
        f"**Winner** (trial {best['trial']}, held-out ROUGE-L {best['rougeL']:.2f} at step "
        f"{best['step']}): {won}"
        + (f"; also {', '.join(f'{k} = {_fmt(v)}' for k, v in others.items())}" if others else "")
        + ".\n\n"
        + "The winner is the best *finished* trial, scored on its exported checkpoint. A trial "
        "ASHA stopped shows its last score, taken at an earlier step: it exported nothing, and "
        "an early score is not comparable with a final one (the plots, Optuna's own, take every "
        "trial's last score as they are).\n\n" + table
    )


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
