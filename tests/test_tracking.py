"""MLflow tracking against real stores: the embedded SQLite default and a real `mlflow server`."""

import pytest
from mlflow.tracking import MlflowClient

from hyperray.config import Config, override
from hyperray.tracking import MlflowLogger, start_run, tracking_uri


def test_default_store_is_sqlite_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def log_a_run(tmp_path, config):
    uri, run_id = start_run(config, run_name="test-run", tags={"stage": "finetune"})
    logger = MlflowLogger(uri, run_id)
    for step in (10, 20, 30):
        logger.log({"loss": 3.0 / step, "tokens_per_s": 100.0}, step)
    (tmp_path / "loss.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "hyperray.json").write_text("{}")
    logger.log_artifact(tmp_path / "loss.png")
    logger.log_artifact(tmp_path / "ckpt", "checkpoint")
    logger.finish()
    return uri, run_id


def check_run(uri, run_id):
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lora.rank"] == "4" and run.data.params["hypernet.head"] == "shared"
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [10, 20, 30]
    assert history[-1].value == pytest.approx(0.1)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"loss.png", "checkpoint"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == [
        "checkpoint/hyperray.json"
    ]


def test_a_run_in_the_embedded_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = override(Config(), {"output_dir": str(tmp_path), "lora.rank": 4})
    uri, run_id = log_a_run(tmp_path, config)
    assert (tmp_path / "mlflow.db").is_file()
    check_run(uri, run_id)
    _, second = start_run(config)
    assert second != run_id, "a second run lands in the same experiment"


@pytest.mark.slow
def test_a_run_on_a_real_mlflow_server(tmp_path, monkeypatch, mlflow_server):
    server_uri, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_uri)
    config = override(Config(), {"output_dir": str(tmp_path / "run"), "lora.rank": 4})
    uri, run_id = log_a_run(tmp_path, config)
    assert uri == server_uri
    check_run(uri, run_id)
    assert not (tmp_path / "run" / "mlflow.db").exists()
    assert any(artifacts.rglob("loss.png"))
