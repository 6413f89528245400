"""The README's main command for real: ``ray start --head`` + ``ray job submit -- python jobs/train.py``.

The job logs to a real ``mlflow server`` the test starts on a loopback port; the run must hold
the resolved config, per-step metrics, periodic held-out ROUGE-L and the artifacts.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ray_job_submit_trains_and_logs_to_a_real_mlflow_server(tmp_path, ray_head, mlflow_server):
    address, env = ray_head
    server_uri, artifacts = mlflow_server
    out = tmp_path / "run"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": server_uri, "HF_HUB_OFFLINE": "1"}}
    job = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address]
        + ["--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env)]
        + ["--", "python", "jobs/train.py", "--config", "jobs/configs/tiny.yaml"]
        + ["--train.steps=10", "--train.log_every=5", "--train.eval_every=5"]
        + ["--train.checkpoint_every=5", "--train.num_workers=2", "--train.cpus_per_worker=1"]
        + ["--train.eval_tasks=1", "--train.eval_instances=2", "--output-dir", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "step 10/10" in job.stdout  # the job's progress reaches the submitter
    assert not (out / "mlflow.db").exists()

    client = MlflowClient(server_uri)
    experiment = client.get_experiment_by_name("hyperray")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_workers"] == "2"
    assert run.data.params["model.name"] == "tiny-llama"
    for metric in ("loss", "consistency", "lr", "tokens_per_s", "data_wait_fraction"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in history] == [5, 10], metric
    assert [m.step for m in client.get_metric_history(run.info.run_id, "rougeL")] == [5]
    assert "rougeL_after" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "loss.png", "checkpoint", "adapter_example"} <= logged
    checkpoint = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert {"checkpoint/hypernet.safetensors", "checkpoint/hyperray.json"} <= checkpoint
    assert any(artifacts.rglob("adapter_model.safetensors"))
