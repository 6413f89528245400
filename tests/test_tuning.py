"""Ray Tune + Optuna search: the space, its checks, and a real interrupted-and-resumed search."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import tiny_config
from mlflow.tracking import MlflowClient

from hyperray.config import ConfigKeyError, default_search_space, load_config
from hyperray.data.builtin import builtin_tasks
from hyperray.data.tasks import write_task
from hyperray.tuning import SearchSpace, parse_space, pick_best, trial_settings, tune

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "jobs" / "configs" / "tune-tiny.yaml"


@pytest.mark.parametrize(
    "space, error, match",
    [
        ({"lora.rnk": {"choice": [4]}}, ConfigKeyError, "lora.rnk"),
        ({"lora.rank": {"choice": []}}, ValueError, r"tune.space\['lora.rank'\].*non-empty"),
        ({"train.lr": {"loguniform": [1e-2, 1e-3]}}, ValueError, r"'train.lr'.*low .* > high"),
        ({"train.lr": {"loguniform": [0, 1e-3]}}, ValueError, "or_zero"),
        ({"lora.rank": {"choice": ["big"]}}, ValueError, "lora.rank"),
        ({"lora.rank": {"between": [1, 2]}}, ValueError, "exactly one of"),
        (
            {"lora.core_size": {"choice": [8], "if": {"lora.lightweight": True}}},
            ValueError,
            "lora.lightweight.*not searched",
        ),
        ({}, ValueError, "tune.space is empty"),
    ],
)
def test_bad_search_spaces_fail_naming_the_key(space, error, match):
    with pytest.raises(error, match=match):
        parse_space(space, tiny_config())


def test_a_bad_space_fails_before_any_trial_starts(tmp_path):
    config = tiny_config(
        **{
            "tune.space": {"hypernet.head": {"choice": []}},
            "train.eval_every": 2,
            "output_dir": str(tmp_path / "search"),
        }
    )
    with pytest.raises(ValueError, match="hypernet.head"):
        tune(config)
    assert not (tmp_path / "search").exists()


def test_conditional_keys_appear_only_when_their_condition_holds():
    space = SearchSpace(parse_space(default_search_space(), tiny_config()))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(60):
        trial = study.ask()
        constants = space(trial)  # suggests first: trial.params fills in as it runs
        settings = trial_settings(trial.params | constants)
        study.tell(trial, 0.0)
        seen.append(settings)
        assert ("hypernet.refinement_steps" in settings) == (
            settings["hypernet.head"] == "iterative"
        )
        assert ("lora.core_size" in settings) == settings["lora.lightweight"]
        assert "train.consistency_weight" in settings
    assert any(s["hypernet.head"] == "iterative" for s in seen)
    assert any(s["lora.lightweight"] for s in seen)
    alphas = [s["train.consistency_weight"] for s in seen]
    assert 0.0 in alphas and any(0.01 <= a <= 1.0 for a in alphas)


def test_the_search_space_rides_the_config_override_path():
    config = load_config(TINY, {"tune.num_samples": "7"})
    assert config.tune.num_samples == 7
    assert config.tune.space["hypernet.refinement_steps"]["if"] == {"hypernet.head": "iterative"}
    with pytest.raises(ConfigKeyError, match="tune.num_sample"):
        load_config(TINY, {"tune.num_sample": "7"})


def _finished(out: Path) -> list[Path]:
    return sorted((out / "trials").glob("*/result.json"))


@pytest.mark.slow
def test_search_stopped_after_two_trials_resumes_and_registers_the_best(tmp_path):
    # Relative task and output folders, as a user types them: trials run in Ray's own folders.
    for task in builtin_tasks(num_instances=12):
        write_task(task, tmp_path / "tasks")
    out = tmp_path / "search"
    command = [sys.executable, str(ROOT / "jobs" / "tune.py"), "--config", str(TINY)]
    command += ["--output-dir", "search", "--data.path", "tasks", "--tune.grace_period=6"]
    env = os.environ | {"MLFLOW_TRACKING_URI": "", "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 900
    while len(_finished(out)) < 2:
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "two trials never finished"
        time.sleep(1)
    time.sleep(3)  # let Tune record the second trial as finished
    first.send_signal(signal.SIGINT)  # what Ctrl+C does: Tune saves its state and stops
    first.wait(timeout=300)
    done_before = {p.parent.name for p in _finished(out)}
    assert len(done_before) in (2, 3) and not (out / "summary.json").exists()

    second = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming the search" in second.stdout

    results = {p.parent.name: json.loads(p.read_text()) for p in _finished(out)}
    assert len(results) == 4
    for trial in done_before:  # finished trials were not run again
        assert len((out / "trials" / trial / "attempts.log").read_text().split()) == 1
    settings = [r["params"] for r in results.values()]
    assert len({json.dumps(s, sort_keys=True) for s in settings}) == 4
    for s in settings:
        assert ("hypernet.refinement_steps" in s) == (s["hypernet.head"] == "iterative")
        assert ("lora.core_size" in s) == s["lora.lightweight"]

    summary = json.loads((out / "summary.json").read_text())
    best = max(results.values(), key=lambda r: r["rougeL"])
    assert summary["best"]["rougeL"] == pytest.approx(best["rougeL"])
    from hyperray.checkpoint import load_checkpoint

    _, loaded = load_checkpoint(out / "best" / "checkpoint")
    assert loaded.lora.rank == summary["best"]["params"]["lora.rank"]
    assert loaded.hypernet.head == summary["best"]["params"]["hypernet.head"]
    table = (out / "trials.md").read_text()
    assert table.count("\n") == 2 + 4 and "hypernet.head" in table
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hyperray")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    for child in children:
        assert client.get_metric_history(child.info.run_id, "loss")
        assert "final_rougeL" in child.data.metrics
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.md", "param_importances.png", "best_checkpoint"} <= logged
    version = client.get_model_version("hyperray", summary["registered"]["version"])
    assert version.run_id == parent.info.run_id
    from hyperray.tracking import download_artifacts

    local = download_artifacts(summary["registered"]["uri"], tmp_path / "dl", client.tracking_uri)
    assert {"hypernet.safetensors", "hyperray.json"} <= set(os.listdir(local))


def test_the_best_trial_is_a_finished_one_even_when_a_stopped_one_scored_higher(tmp_path):
    def trial(name, status, score):
        return {"trial": name, "status": status, "rougeL": score, "params": {}}

    trials = [
        trial("early", "stopped early", 30.0),  # scored at the first rung, exported nothing
        trial("done", "finished", 20.0),
        trial("also", "finished", 12.0),
        trial("broken", "error", float("nan")),
    ]
    assert pick_best(trials, tmp_path)["trial"] == "done"
    with pytest.raises(RuntimeError, match="no trial finished.*tune.grace_period"):
        pick_best([trials[0], trials[3]], tmp_path)
