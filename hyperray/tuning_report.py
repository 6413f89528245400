"""The search's report: the trials table (markdown + CSV) and Optuna's plots, as PNGs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hyperray.tuning import METRIC, Param


def optuna_study(trials: list[dict], params: list[Param]):
    """The finished trials as an in-memory Optuna study (for Optuna's own plots)."""
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    study = optuna.create_study(direction="maximize")
    for tr in trials:
        if math.isnan(tr[METRIC]):
            continue
        chosen, distributions = {}, {}
        for p in params:
            if p.key not in tr["params"]:
                continue
            value = tr["params"][p.key]
            if p.or_zero:
                zero = f"{p.key}:zero"
                chosen[zero], distributions[zero] = (
                    value == 0,
                    CategoricalDistribution([True, False]),
                )
                if value == 0:
                    continue
            if p.kind == "choice":
                distributions[p.key] = CategoricalDistribution(list(p.values))
            elif p.kind == "int":
                distributions[p.key] = IntDistribution(int(p.values[0]), int(p.values[1]))
            else:
                low, high = (float(v) for v in p.values)
                distributions[p.key] = FloatDistribution(low, high, log=p.kind == "loguniform")
            chosen[p.key] = value
        study.add_trial(
            optuna.trial.create_trial(params=chosen, distributions=distributions, value=tr[METRIC])
        )
    return study


def plot_search(trials: list[dict], params: list[Param], out: Path) -> list[Path]:
    """Optuna's optimisation history and parameter importances, as PNGs."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    study = optuna_study(trials, params)
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        plots = [("optimization_history.png", optuna_plots.plot_optimization_history)]
        if len(study.trials) >= 2:
            plots.append(("param_importances.png", optuna_plots.plot_param_importances))
        for name, plot in plots:
            ax = plot(study)
            ax.figure.set_size_inches(8, 5)
            ax.figure.tight_layout()
            ax.figure.savefig(out / name, dpi=120)
            plt.close(ax.figure)
            paths.append(out / name)
    return paths


def write_tables(trials: list[dict], keys: list[str], out: Path) -> None:
    import csv

    columns = ["trial", "status", *keys, METRIC, "loss", "step", "train_seconds"]
    rows = [
        {**{k: tr["params"].get(k, "") for k in keys}, **{c: tr[c] for c in columns if c in tr}}
        for tr in trials
    ]
    with (out / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    ordered = sorted(rows, key=lambda r: -r[METRIC] if not math.isnan(r[METRIC]) else math.inf)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in ordered),
    ]
    (out / "trials.md").write_text("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)
