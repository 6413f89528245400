"""Ray Train + DeepSpeed on a real local Ray cluster: ZeRO-2/3, identical ranks, fault tolerance."""

import json
import os
import signal
import threading
import time

import pytest
from conftest import tiny_config

from hyperray.config import ConfigKeyError, override
from hyperray.deepspeed_engine import deepspeed_config
from hyperray.distributed import _ensure_ray


def _distributed(tmp_path, **overrides):
    return tiny_config(
        **{
            "train.num_workers": 2,
            "train.cpus_per_worker": 1,
            "train.steps": 8,
            "train.log_every": 2,
            "train.checkpoint_every": 4,
            "output_dir": str(tmp_path / "run"),
        }
        | overrides
    )


def _status(out, rank):
    path = out / "workers" / f"rank{rank}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_deepspeed_config_follows_the_training_config():
    train = tiny_config(
        **{"train.zero_stage": 3, "train.offload_optimizer": True, "train.grad_clip": 0.5}
    ).train
    ds = deepspeed_config(train, world_size=4, use_gpu=False)
    assert ds["train_micro_batch_size_per_gpu"] == 1 and ds["train_batch_size"] == 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["lr"] == train.lr
    assert not ds["bf16"]["enabled"]
    gpu = deepspeed_config(override(train, {"precision": "bf16"}), 1, use_gpu=True)
    assert (
        gpu["bf16"]["enabled"]
        and "offload_optimizer"
        not in deepspeed_config(override(train, {"offload_optimizer": False}), 1, False)[
            "zero_optimization"
        ]
    )
    with pytest.raises(ValueError, match="bf16"):
        deepspeed_config(override(train, {"precision": "bf16"}), 1, use_gpu=False)


def test_bad_distributed_settings_name_their_key():
    with pytest.raises(ValueError, match="train.zero_stage"):
        tiny_config(**{"train.zero_stage": 4})
    with pytest.raises(ValueError, match="train.precision"):
        tiny_config(**{"train.precision": "fp16"})
    with pytest.raises(ValueError, match="train.offload_optimizer"):
        tiny_config(**{"train.zero_stage": 0, "train.offload_optimizer": True})
    with pytest.raises(ConfigKeyError, match="train.num_workers"):
        tiny_config(**{"train.num_workerz": 2})


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_workers_train_with_zero_and_agree(ray_cluster, tmp_path, stage):
    from hyperray.checkpoint import load_checkpoint
    from hyperray.distributed import train_distributed

    config = _distributed(tmp_path, **{"train.zero_stage": stage})
    result = train_distributed(config)
    out = tmp_path / "run"
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(0 <= r["data_wait_fraction"] <= 1 for r in rows)
    ranks = [_status(out, r) for r in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    for rank in ranks:  # each mini-batch a worker received: tasks_per_batch distinct tasks
        assert len(rank["batch_tasks"]) >= 8
        assert all(len(b) == 2 and b[0] != b[1] for b in rank["batch_tasks"])
    assert result.checkpoint is not None
    model, loaded = load_checkpoint(out / "checkpoint")
    assert loaded.train.zero_stage == stage
    from hyperray.deepspeed_engine import weights_digest

    assert weights_digest(model.hypernet.state_dict()) == ranks[0]["weights_sha256"]


@pytest.mark.slow
def test_killed_worker_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    from hyperray.distributed import train_distributed

    config = _distributed(
        tmp_path, **{"train.steps": 30, "train.checkpoint_every": 5, "train.log_every": 5}
    )
    out = tmp_path / "run"
    killed: dict[str, int] = {}

    def kill_rank1_after_two_checkpoints():
        # After its second report, rank 1's first checkpoint is surely persisted.
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            status = _status(out, 1)
            if status.get("step", 0) >= 10:
                killed["pid"], killed["step"] = status["pid"], status["step"]
                os.kill(status["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank1_after_two_checkpoints, daemon=True)
    killer.start()
    train_distributed(config)
    killer.join(timeout=5)
    assert "pid" in killed, "rank 1 never reached its second checkpoint"
    rank1 = _status(out, 1)
    assert rank1["pid"] != killed["pid"]  # a replacement worker finished the run
    starts = rank1["starts"]
    assert starts[0] == 0 and len(starts) == 2
    assert starts[1] >= killed["step"] - 5 and starts[1] % 5 == 0  # a checkpoint's step, not 0
    steps = [r["step"] for r in _metrics(out)]
    assert steps[-1] == 30
    after = steps[steps.index(starts[1]) + 1 :] if starts[1] in steps else steps
    assert after[0] == starts[1] + 5  # the counter continues where the checkpoint left it
    assert steps.count(5) == 1  # nothing restarted from zero
    assert _status(out, 0)["weights_sha256"] == rank1["weights_sha256"]


@pytest.mark.parametrize("address", ["local", None])
def test_a_local_cluster_leaves_room_for_the_tokeniser(monkeypatch, address):
    import ray

    calls = []

    def init(address=None, **kwargs):
        calls.append((address, kwargs))
        if address == "auto":
            raise ConnectionError("no cluster")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _ensure_ray(2) is True
    # RAY_ADDRESS=local never goes through "auto" (which would size the cluster to the machine).
    assert calls[-1] == ("local", {"num_cpus": 4})
    assert [a for a, _ in calls] == (["local"] if address else ["auto", "local"])
