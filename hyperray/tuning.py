"""Hyperparameter search: Ray Tune + Optuna over the distributed training job, every trial in MLflow.

The search space is ``tune.space``: dotted config keys, applied to each trial's config through
the same :func:`~hyperray.config.override` path as the command line. :func:`parse_space` checks
it before any trial starts; :class:`SearchSpace` is Optuna's define-by-run function (TPE through
Ray Tune's ``OptunaSearch``), so a conditional key is suggested only in the trials whose
condition holds -- exactly how Optuna expresses conditional spaces.

Each trial is one :func:`~hyperray.distributed.train_distributed` run (Ray Train + DeepSpeed)
named after the trial id, under ``<output_dir>/trials/<trial id>``. Held-out ROUGE-L reported
during training (``train.eval_every``) feeds ASHA; the trial's final score is computed on its
exported checkpoint. Restarting a stopped search with the same output directory restores the
Tuner: finished trials stay finished, and an interrupted trial's training resumes from its last
checkpoint.

MLflow: one parent run for the search, one child run per trial (its params, metrics over time,
final score), and the best hypernetwork logged to the parent and registered as a model version.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperray.config import (
    Config,
    ConfigKeyError,
    absolute_paths,
    from_dict,
    override,
    to_dict,
    valid_keys,
)

METRIC = "rougeL"
KINDS = ("choice", "uniform", "loguniform", "int")


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    kind: str
    values: tuple[Any, ...]
    """The choices, or (low, high)."""
    or_zero: bool = False
    condition: tuple[tuple[str, Any], ...] = ()

    def active(self, chosen: dict[str, Any]) -> bool:
        return all(k in chosen and chosen[k] == v for k, v in self.condition)


def parse_space(space: dict[str, Any], base: Config) -> list[Param]:
    """Validate ``tune.space`` against ``base``; every error names the offending key."""
    if not space:
        raise ValueError("tune.space is empty; give at least one key to search")
    known = set(valid_keys(base))
    params = []
    for key, spec in space.items():
        where = f"tune.space[{key!r}]"
        if key not in known or key.startswith("tune."):
            raise ConfigKeyError(
                f"{where}: unknown config key {key!r}; valid keys: {', '.join(sorted(known))}"
            )
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping like {{choice: [...]}}, got {spec!r}")
        kinds = [k for k in KINDS if k in spec]
        extra = set(spec) - set(KINDS) - {"or_zero", "if"}
        if len(kinds) != 1 or extra:
            raise ValueError(
                f"{where} needs exactly one of {', '.join(KINDS)} (plus optional or_zero, if); "
                f"got {sorted(spec)}"
            )
        kind, values = kinds[0], spec[kinds[0]]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: {kind} needs a non-empty list, got {values!r}")
        if kind != "choice":
            if len(values) != 2:
                raise ValueError(f"{where}: {kind} needs [low, high], got {values!r}")
            low, high = values
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{where}: {kind} bounds must be numbers, got {values!r}")
            if low > high:
                raise ValueError(f"{where}: low {low} > high {high}; swap them")
            if kind == "loguniform" and low <= 0:
                raise ValueError(
                    f"{where}: loguniform needs low > 0, got {low}; add or_zero: true for 0"
                )
        if spec.get("or_zero") and kind != "loguniform":
            raise ValueError(f"{where}: or_zero applies to loguniform ranges only")
        condition = spec.get("if", {})
        if not isinstance(condition, dict):
            raise ValueError(f"{where}: if must map a searched key to a value, got {condition!r}")
        for other in condition:
            if other not in space or other == key:
                raise ValueError(f"{where}: its condition names {other!r}, which is not searched")
        for value in values:  # each value must be a valid setting of its key
            override(base, {key: value})
        params.append(
            Param(key, kind, tuple(values), bool(spec.get("or_zero")), tuple(condition.items()))
        )
    order = [p.key for p in params]
    for p in params:  # conditions refer to keys decided earlier, so one pass suggests them all
        for other, _ in p.condition:
            if order.index(other) > order.index(p.key):
                raise ValueError(
                    f"tune.space[{p.key!r}]: list it after {other!r}, the key its condition names"
                )
    return params


class SearchSpace:
    """Optuna define-by-run: suggests each active key; returns the constants (a chosen zero)."""

    def __init__(self, params: list[Param]):
        self.params = params

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for p in self.params:
            if not p.active(chosen):
                continue
            if p.or_zero and trial.suggest_categorical(f"{p.key}:zero", [True, False]):
                chosen[p.key] = constants[p.key] = 0.0
                continue
            if p.kind == "choice":
                chosen[p.key] = trial.suggest_categorical(p.key, list(p.values))
            elif p.kind == "int":
                chosen[p.key] = trial.suggest_int(p.key, int(p.values[0]), int(p.values[1]))
            else:
                low, high = (float(v) for v in p.values)
                chosen[p.key] = trial.suggest_float(p.key, low, high, log=p.kind == "loguniform")
        return constants


def trial_settings(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's config overrides from what Tune hands it (drops the ``key:zero`` switches)."""
    return {k: v for k, v in params.items() if ":" not in k}


def tune(config: Config) -> dict[str, Any]:
    """Run (or resume) the search described by ``config.tune``; returns the summary."""
    import ray
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from hyperray.build import build_tasks
    from hyperray.tracking import start_run

    t = config.tune
    params = parse_space(t.space, config)  # bad search spaces fail before any trial starts
    if not config.train.eval_every:
        raise ValueError("tuning needs train.eval_every > 0: ASHA acts on held-out ROUGE-L")
    build_tasks(config)  # and so do malformed task files
    config = absolute_paths(config)  # trials run in Ray's folders, not here
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _read_json(out / "search.json")
    if "parent_run" not in state and config.mlflow.enabled:
        state["parent_run"] = start_run(config, run_name=out.name, tags={"hyperray.kind": "search"})
        _write_json(out / "search.json", state)
    parent = tuple(state["parent_run"]) if "parent_run" in state else None

    train = config.train
    per_trial = 1 + train.num_workers * train.cpus_per_worker + 1  # driver, workers, Ray Data
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=t.max_concurrent * per_trial)
    try:
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(run_trial, base=to_dict(config), parent=parent),
            {"cpu": 1},
        )
        path = out / "ray" / "search"
        if ray_tune.Tuner.can_restore(str(path)):
            print(f"hyperray: resuming the search in {path}", flush=True)
            tuner = ray_tune.Tuner.restore(
                str(path), trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            searcher = OptunaSearch(
                space=SearchSpace(params), metric=METRIC, mode="max", seed=t.seed
            )
            scheduler = ASHAScheduler(
                time_attr="step",
                max_t=train.steps,
                grace_period=min(t.grace_period, train.steps),
                reduction_factor=t.reduction_factor,
            )
            tuner = ray_tune.Tuner(
                trainable,
                tune_config=ray_tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    metric=METRIC,
                    mode="max",
                    num_samples=t.num_samples,
                    max_concurrent_trials=t.max_concurrent,
                ),
                run_config=ray_tune.RunConfig(name="search", storage_path=str(out / "ray")),
            )
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    ended = results.num_terminated + results.num_errors
    if len(results) < t.num_samples or ended < len(results):  # Ctrl+C: Tune saved and stopped
        print(
            f"hyperray: search stopped with {ended} of {t.num_samples} trials done; "
            "run the same command again to resume it",
            flush=True,
        )
        return {"stopped": True, "trials_done": ended}
    return report(config, params, parent)


def run_trial(params: dict[str, Any], base: dict[str, Any], parent: tuple[str, str] | None):
    """One trial: the distributed training job on the sampled config, then its final score."""
    import functools

    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from hyperray.distributed import train_distributed
    from hyperray.tracking import MlflowLogger, child_run, mlflow_loggers

    trial_id = ray.tune.get_context().get_trial_id()
    root = Path(base["output_dir"]) / "trials" / trial_id
    config = override(
        from_dict(base),
        trial_settings(params)
        | {"output_dir": str(root), "train.resume": True, "train.run_name": trial_id},
    )
    root.mkdir(parents=True, exist_ok=True)
    with (root / "attempts.log").open("a") as log:  # how often this trial was (re)started
        log.write(f"{time.time():.0f}\n")
    run = child_run(config, parent, trial_id) if parent else None

    class ReportRouge(TuneReportCallback):
        """Forward rank 0's held-out ROUGE-L reports to Tune (ASHA's signal); skip the rest."""

        def after_report(self, run_context, metrics, checkpoint):
            if METRIC in metrics[0]:
                super().after_report(run_context, metrics, None)

    started = time.perf_counter()
    loggers = functools.partial(mlflow_loggers, *run) if run else None
    train_distributed(config, loggers, callbacks=[ReportRouge()])
    seconds = time.perf_counter() - started
    final = _final_rouge(config, root / "checkpoint")
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in rows if "loss" in r][-1]
    result = {
        METRIC: final,
        "step": config.train.steps,
        "loss": loss,
        "train_seconds": seconds,
    }
    _write_json(root / "result.json", result | {"params": trial_settings(params)})
    if run:
        tracker = MlflowLogger(*run)
        tracker.log({"final_rougeL": final, "train_seconds": seconds}, config.train.steps)
        tracker.finish()
    ray.tune.report(result)


def _final_rouge(config: Config, checkpoint: Path) -> float:
    from hyperray.checkpoint import load_checkpoint
    from hyperray.evaluate import evaluate_held_out

    model, _ = load_checkpoint(checkpoint)
    return evaluate_held_out(model, config).average


def report(config: Config, params: list[Param], parent: tuple[str, str] | None) -> dict:
    """The table of trials, the best trial's export and registration, Optuna's plots."""
    from ray.tune import ExperimentAnalysis

    from hyperray.tuning_report import plot_search, write_tables

    out = Path(config.output_dir)
    analysis = ExperimentAnalysis(str(out / "ray" / "search"))
    trials = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        trials.append(
            {
                "trial": trial.trial_id,
                "status": "finished"
                if (out / "trials" / trial.trial_id / "result.json").is_file()
                else ("stopped early" if trial.status == "TERMINATED" else trial.status.lower()),
                "params": trial_settings(trial.config),
                METRIC: last.get(METRIC, math.nan),
                "step": last.get("step"),
                "loss": last.get("loss", math.nan),
                "train_seconds": last.get("train_seconds", math.nan),
            }
        )
    best = pick_best(trials, out / "ray" / "search")
    best_dir = out / "best"
    shutil.rmtree(best_dir, ignore_errors=True)
    shutil.copytree(out / "trials" / best["trial"] / "checkpoint", best_dir / "checkpoint")
    _write_json(best_dir / "trial.json", best)
    keys = [p.key for p in params]
    write_tables(trials, keys, out)
    plots = plot_search(trials, params, out)
    summary = {
        "best": best,
        "trials": len(trials),
        "metric": METRIC,
        "search_seconds": search_seconds(analysis.trials),
    }
    if parent:
        from hyperray.tracking import MlflowLogger, register_checkpoint

        tracker = MlflowLogger(*parent)
        tracker.log({f"best_{METRIC}": best[METRIC], "trials": len(trials)}, 0)
        for path in [out / "trials.md", out / "trials.csv", *plots]:
            tracker.log_artifact(path)
        tracker.log_artifact(best_dir / "checkpoint", "best_checkpoint")
        summary["registered"] = register_checkpoint(
            *parent, "best_checkpoint", config.tune.registered_model, best
        )
        tracker.finish()
    _write_json(out / "summary.json", summary)
    return summary


def pick_best(trials: list[dict], where: Path) -> dict:
    """The finished trial with the highest final score.

    A trial ASHA stopped was scored early in its training and exported nothing, so it cannot
    win, however high its last score: early scores and final ones are not comparable.
    """
    finished = [tr for tr in trials if tr["status"] == "finished" and not math.isnan(tr[METRIC])]
    if not finished:
        raise RuntimeError(
            f"no trial finished training (each was stopped early or failed); see {where}. "
            "Raise tune.num_samples, or tune.grace_period so that fewer trials stop early."
        )
    return max(finished, key=lambda tr: tr[METRIC])


def search_seconds(trials: list) -> float:
    """Wall time from the first trial's start to the last trial's last result."""
    spans = [
        (r["timestamp"] - r["time_total_s"], r["timestamp"])
        for r in (t.last_result for t in trials)
        if r and "timestamp" in r and "time_total_s" in r
    ]
    return max(end for _, end in spans) - min(start for start, _ in spans) if spans else math.nan


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")
