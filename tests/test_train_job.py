"""jobs/train.py end to end on the tiny config: artifacts, stages, bad input."""

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))

import train as train_job  # noqa: E402

TINY = str(ROOT / "jobs" / "configs" / "tiny.yaml")


@pytest.mark.slow
def test_tiny_training_run_writes_its_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    summary = train_job.main(["--config", TINY, "--output-dir", str(out), "--train.steps=30"])
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "rouge_by_task.png",
        "eval_before.json",
        "eval_after.json",
        "summary.json",
        "checkpoint",
        "adapter_example",
    } <= names
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["ce"] < rows[0]["ce"]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert set(load_file(out / "adapter_example" / "adapter_model.safetensors"))
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 30
    # MLflow's default store: an embedded SQLite file in the run directory.
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("hyperray").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [10, 20, 30]
    assert run.data.metrics["rougeL_after"] == pytest.approx(summary["rougeL_after"])
    assert run.data.params["train.steps"] == "30"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "loss.png", "checkpoint", "adapter_example"} <= logged


@pytest.mark.slow
def test_pretrain_stage_then_finetune_from_its_checkpoint(tmp_path, capsys):
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text(" ".join(f"word{i}" for i in range(400)))
    common = [
        "--config",
        TINY,
        "--train.steps=10",
        "--train.eval_tasks=1",
        "--train.eval_instances=1",
    ]
    train_job.main(
        common
        + [
            "--train.stage=pretrain",
            f"--data.text_path={text}",
            "--output-dir",
            str(tmp_path / "pre"),
        ]
    )
    assert (tmp_path / "pre" / "checkpoint" / "hypernet.safetensors").is_file()
    train_job.main(
        common
        + [
            f"--train.init_from={tmp_path / 'pre' / 'checkpoint'}",
            "--output-dir",
            str(tmp_path / "ft"),
        ]
    )
    assert (tmp_path / "ft" / "checkpoint" / "hypernet.safetensors").is_file()


def test_unknown_key_fails_before_loading_anything(tmp_path):
    with pytest.raises(KeyError, match="lora.rnk"):
        train_job.main(["--config", TINY, "--lora.rnk=4", "--output-dir", str(tmp_path)])


def test_malformed_task_file_fails_naming_the_file(tmp_path):
    data = tmp_path / "tasks"
    data.mkdir()
    (data / "task001_broken.json").write_text('{"Definition": ["x"], "Positive Examples": [}')
    with pytest.raises(ValueError, match="task001_broken.json"):
        train_job.main(
            ["--config", TINY, f"--data.path={data}", "--output-dir", str(tmp_path / "o")]
        )
