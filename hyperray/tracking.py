"""MLflow tracking: the only module that imports mlflow.

The driver creates the store, the experiment and the run before any worker starts (several
processes creating a fresh SQLite store at once race), then hands the run id to rank 0, which
logs metrics into that run through a client: no process-global "active run" crosses the Ray
boundary. With no ``MLFLOW_TRACKING_URI`` the store is an embedded SQLite file in the run
directory; set the variable to log to a real ``mlflow server``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hyperray.config import Config, flatten, to_dict


def tracking_uri(output_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs output_dir>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def start_run(
    config: Config, run_name: str | None = None, tags: dict[str, str] | None = None
) -> tuple[str, str]:
    """Create (or reuse) the experiment, open a run and log the whole resolved config as params.

    Returns ``(tracking_uri, run_id)`` for the processes that log into the run.
    """
    from mlflow.tracking import MlflowClient

    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(config.output_dir)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    if experiment is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            artifacts = (Path(config.output_dir).resolve() / "mlartifacts").as_uri()
        experiment_id = client.create_experiment(
            config.mlflow.experiment, artifact_location=artifacts
        )
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    params = {k: _param(v) for k, v in flatten(to_dict(config)).items()}
    _log_params(client, run.info.run_id, params)
    return uri, run.info.run_id


class MlflowLogger:
    """A :class:`~hyperray.trainer.MetricLogger` writing into an existing run."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def mlflow_loggers(uri: str, run_id: str) -> list[MlflowLogger]:
    """A picklable factory for rank 0's loggers: ``functools.partial(mlflow_loggers, uri, run_id)``."""
    return [MlflowLogger(uri, run_id)]


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[start : start + 100])


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
