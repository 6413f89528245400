"""Distributed training: a Ray Train ``TorchTrainer`` whose workers run DeepSpeed over Ray Data.

The only module that imports ``ray.train``. The driver reads the tasks (a malformed task file
fails here, before any worker starts), builds the task-grouped dataset and starts
``num_workers`` workers; each worker rebuilds everything from its config argument, wraps the
model in a :class:`~hyperray.deepspeed_engine.DeepSpeedEngine`, resumes from Ray Train's latest
checkpoint when there is one, and runs the one training loop of :mod:`hyperray.trainer`.

Checkpoints are DeepSpeed's per-rank state: every rank saves into its own temporary folder and
reports it, and Ray Train merges the ranks' files into one persisted checkpoint. After a worker
dies the group restarts (``FailureConfig``) and the step counter continues from that checkpoint;
re-running with the same ``RunConfig(name, storage_path)`` resumes a stopped run the same way.
At the end rank 0 exports the consolidated hypernetwork to ``<output_dir>/checkpoint``.

Each rank also keeps ``<output_dir>/workers/rank<N>.json`` (pid, last checkpointed step, the
steps it started from, the tasks of its first batches, the digest of its final weights): what a
test or a person checks to see the ranks agree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyperray.config import Config, absolute_paths, from_dict, to_dict
from hyperray.trainer import JsonlLogger, MetricLogger

RECORDED_BATCHES = 64
"""Batches whose task names each rank records in its status file."""


def run_location(config: Config) -> tuple[Path, str]:
    """Ray Train's (storage_path, run name): defaults under and after the output directory."""
    out = Path(config.output_dir).resolve()
    storage = Path(config.train.storage_path or out / "ray").resolve()
    return storage, config.train.run_name or out.name


def train_distributed(
    config: Config,
    make_loggers: Callable[[], list[MetricLogger]] | None = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """Fit the hypernetwork on ``train.num_workers`` Ray Train workers; returns Ray's Result.

    ``make_loggers`` is called on rank 0 only (e.g. an MLflow logger); it travels to the worker
    by value, so it must be picklable and hold everything it needs. ``callbacks`` are Ray Train
    callbacks (the tuning job's report to Tune).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hyperray.build import build_tasks
    from hyperray.ray_data import build_dataset

    config = absolute_paths(config)  # workers run elsewhere
    t = config.train
    train_tasks, _ = build_tasks(config)  # a malformed task file fails before Ray starts
    started_ray = _ensure_ray(t.num_workers * t.cpus_per_worker)
    try:
        storage, name = run_location(config)
        if not t.resume:
            shutil.rmtree(storage / name, ignore_errors=True)
            shutil.rmtree(Path(config.output_dir) / "workers", ignore_errors=True)
        dataset = build_dataset(config, train_tasks, t.steps * t.num_workers)
        env = {"DS_ACCELERATOR": "cuda" if t.use_gpu else "cpu", "TOKENIZERS_PARALLELISM": "false"}
        for key in ("HF_HUB_OFFLINE", "HYPERRAY_CACHE"):
            if key in os.environ:
                env[key] = os.environ[key]
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": to_dict(config), "make_loggers": make_loggers},
            scaling_config=ScalingConfig(
                num_workers=t.num_workers,
                use_gpu=t.use_gpu,
                resources_per_worker={"CPU": t.cpus_per_worker},
            ),
            run_config=RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                worker_runtime_env={"env_vars": env},
                callbacks=callbacks or [],
            ),
            datasets={"train": dataset},
        )
        return trainer.fit()
    finally:
        if started_ray:
            ray.shutdown()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: everything it needs comes from ``loop_config``."""
    import ray.train
    import torch

    from hyperray.build import build
    from hyperray.checkpoint import load_weights
    from hyperray.deepspeed_engine import DeepSpeedEngine, write_rank_status
    from hyperray.ray_data import groups_per_batch, task_batches
    from hyperray.trainer import train

    config = from_dict(loop_config["config"])
    t = config.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    out = Path(config.output_dir)
    status = out / "workers"
    torch.set_num_threads(t.cpus_per_worker)

    model = build(config)
    if t.init_from:
        load_weights(model, t.init_from)
    engine = DeepSpeedEngine(model, t, world, t.use_gpu)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = engine.load(directory)
    starts = _read_status(status, rank).get("starts", []) + [start]
    write_rank_status(status, rank, pid=os.getpid(), starts=starts)

    shard = ray.train.get_dataset_shard("train")
    batches = _recorded(task_batches(shard, model.collator, groups_per_batch(config)), status, rank)
    loggers: list[MetricLogger] = [_RayReport()]
    if rank == 0:
        loggers.append(JsonlLogger(out / "metrics.jsonl"))
        loggers += loop_config["make_loggers"]() if loop_config.get("make_loggers") else []

    def save(step: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            engine.save(tmp, step)
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        write_rank_status(status, rank, step=step)

    train(
        engine.module,
        batches,
        engine,
        t.steps,
        loggers,
        t.log_every,
        t.eval_every,
        _held_out_rouge(model, config) if t.eval_every else None,
        start_step=start,
        checkpoint=save,
        checkpoint_every=t.checkpoint_every,
        verbose=rank == 0,
    )
    digest = engine.export(config, out / "checkpoint", steps=t.steps)
    write_rank_status(status, rank, weights_sha256=digest)


def _held_out_rouge(model, config: Config) -> Callable[[int], dict[str, float]]:
    """Periodic held-out ROUGE-L, run by every rank alike so ZeRO-3's gathers stay in step."""
    from hyperray.build import build_tasks
    from hyperray.evaluate import evaluate_held_out

    _, held_out = build_tasks(config)

    def run(step: int) -> dict[str, float]:
        return {"rougeL": evaluate_held_out(model, config, held_out).average}

    return run


class _RayReport:
    """Reports each logged row to Ray Train; every rank logs the same steps, so reports align."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        import ray.train

        ray.train.report({"step": step, **metrics})


def _recorded(batches, status: Path, rank: int):
    """Pass batches through, noting the tasks of the first few in the rank's status file."""
    from hyperray.deepspeed_engine import write_rank_status

    seen: list[list[str]] = _read_status(status, rank).get("batch_tasks", [])
    for batch in batches:
        if len(seen) < RECORDED_BATCHES:
            seen.append(list(batch.tasks))
            write_rank_status(status, rank, batch_tasks=seen)
        yield batch


def _read_status(status: Path, rank: int) -> dict[str, Any]:
    import json

    path = status / f"rank{rank}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _ensure_ray(cpus: int) -> bool:
    """Connect to a running cluster, or start a local one; True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    # RAY_ADDRESS=local asks for a cluster of our own: "auto" would start one sized to the
    # machine, where the workers can take every CPU and the tokeniser then waits forever.
    if os.environ.get("RAY_ADDRESS") != "local":
        try:
            ray.init(address="auto")  # `ray job submit` sets RAY_ADDRESS; `ray start` leaves a file
            return False
        except ConnectionError:
            if os.environ.get("RAY_ADDRESS"):
                raise
    # Workers take their CPUs; the Ray Data tokeniser and the trainer's controller need room too.
    ray.init(address="local", num_cpus=cpus + 2)
    return True
