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


def child_run(config: Config, parent: tuple[str, str], key: str) -> tuple[str, str]:
    """The child run of ``parent`` tagged ``hyperray.trial=key``: found again on a restart."""
    from mlflow.tracking import MlflowClient

    uri, parent_id = parent
    client = MlflowClient(uri)
    experiment_id = client.get_run(parent_id).info.experiment_id
    found = client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`hyperray.trial` = '{key}'",
    )
    if found:
        return uri, found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=key, tags={"mlflow.parentRunId": parent_id, "hyperray.trial": key}
    )
    params = {k: _param(v) for k, v in flatten(to_dict(config)).items()}
    _log_params(client, run.info.run_id, params)
    return uri, run.info.run_id


def register_checkpoint(
    uri: str, run_id: str, artifact_path: str, name: str, description: dict[str, Any]
) -> dict[str, str]:
    """Register a checkpoint logged under ``artifact_path`` of a run as a new model version.

    ``models:/<name>/<version>`` then downloads the checkpoint folder itself
    (``mlflow.artifacts.download_artifacts``), which is what the serving app loads.
    """
    import json

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "already exists" not in str(e).lower():
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(
        name, source, run_id=run_id, description=json.dumps(description, default=str)
    )
    return {
        "name": name,
        "version": str(version.version),
        "uri": f"models:/{name}/{version.version}",
    }


def download_artifacts(
    uri: str, destination: str | Path | None = None, tracking_uri: str | None = None
) -> Path:
    """Fetch an MLflow artifact folder (``runs:/``, ``models:/``, ...) to a local path.

    ``models:/name/version`` and ``models:/name@alias`` resolve in the registry of
    ``tracking_uri`` (MLflow's own download would look in the default registry instead).
    """
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    if uri.startswith("models:/"):
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        name, alias = uri.removeprefix("models:/"), None
        if "@" in name:
            name, alias = name.split("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        else:
            name, _, version = name.partition("/")
            if not version:
                raise ValueError(f"{uri!r}: name a version (models:/NAME/1) or an alias (@ALIAS)")
        uri = client.get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri,
        dst_path=None if destination is None else str(destination),
        tracking_uri=tracking_uri,
    )
    return Path(local)


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
