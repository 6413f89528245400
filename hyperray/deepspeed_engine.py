"""The DeepSpeed side of the training-engine seam: ZeRO data parallelism for the hypernetwork.

Owns the DeepSpeed config (derived in code from :class:`~hyperray.config.TrainConfig`, so batch
size, precision and ZeRO stage have one source of truth), :class:`DeepSpeedEngine` (``backward``,
``step``, ``lr`` like :class:`~hyperray.engine.TorchEngine`), DeepSpeed's per-rank checkpoints and
the export of the consolidated hypernetwork to the hyperray checkpoint format.

The whole :class:`~hyperray.model.HyperLoRA` -- frozen target included -- is the engine's module,
while only the hypernetwork's parameters are handed to the optimizer. Inside the engine, ZeRO-3
shards the frozen target's weights too, which is what lets a target larger than one worker's
memory be trained against; ZeRO-0/1/2 simply replicate it. Frozen weights are never written to
DeepSpeed checkpoints (``exclude_frozen_parameters``): they come from the target model itself.

The learning-rate schedule is TorchEngine's (:func:`~hyperray.engine.warmup_cosine` through a
``LambdaLR`` passed to ``deepspeed.initialize``), so both engines train on the same curve.
deepspeed is imported inside functions: the driver never needs it, workers import it late.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hyperray.config import Config, TrainConfig
from hyperray.engine import warmup_cosine
from hyperray.model import HyperLoRA

CLIENT_STATE = "hyperray_step"


def deepspeed_config(train: TrainConfig, world_size: int, use_gpu: bool) -> dict[str, Any]:
    """DeepSpeed's JSON config for ``train`` on ``world_size`` ranks.

    A :class:`~hyperray.batching.TaskBatch` is already one task-grouped mini-batch, so each rank
    takes exactly one per step (micro batch 1, no gradient accumulation).
    """
    if train.precision == "bf16" and not use_gpu:
        raise ValueError("train.precision=bf16 needs GPU workers (train.use_gpu=true); use fp32")
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if train.zero_stage == 3:
        # Gathered weights stay whole only for the module that needs them: small working set.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: no JIT-built fused CPU Adam, and the same update as TorchEngine.
            "params": {"lr": train.lr, "weight_decay": train.weight_decay, "torch_adam": True},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine:
    """``deepspeed.initialize`` around a HyperLoRA: the optimizer sees the hypernetwork only."""

    def __init__(self, model: HyperLoRA, train: TrainConfig, world_size: int, use_gpu: bool):
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        config = deepspeed_config(train, world_size, use_gpu)

        def schedule(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: warmup_cosine(s, train.warmup_steps, train.steps)
            )

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=params, config=config, lr_scheduler=schedule
        )
        self.model = model
        self.zero_stage = train.zero_stage

    @property
    def module(self) -> torch.nn.Module:
        """What the training loop calls: DeepSpeed's wrapper, so ZeRO's hooks run."""
        return self.engine

    @property
    def rank(self) -> int:
        return self.engine.global_rank

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()  # clips, steps the optimizer and the LambdaLR, zeroes gradients

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, directory: str | Path, step: int) -> None:
        """This rank's DeepSpeed state under ``directory/step{step}``; every rank must call it."""
        self.engine.save_checkpoint(
            str(directory),
            tag=f"step{step}",
            client_state={CLIENT_STATE: step},
            exclude_frozen_parameters=True,
        )

    def load(self, directory: str | Path) -> int:
        """Restore the latest DeepSpeed state in ``directory``; returns the step it was saved at."""
        directory = Path(directory)
        tag = latest_tag(directory)
        _, client = self.engine.load_checkpoint(str(directory), tag=tag, load_module_strict=False)
        if client is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        return int(client[CLIENT_STATE])

    def hypernet_state(self) -> dict[str, Tensor]:
        """The whole hypernetwork on the CPU, gathered from its ZeRO-3 shards where sharded.

        Collective under ZeRO-3: every rank must call it.
        """
        params = list(self.model.hypernet.parameters())
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return _cpu_state(self.model)
        return _cpu_state(self.model)

    def export(self, config: Config, directory: str | Path, **extra) -> str:
        """Write the hyperray checkpoint (rank 0 only) and return the weights' digest (all ranks)."""
        from hyperray.checkpoint import save_checkpoint

        state = self.hypernet_state()
        if self.rank == 0:
            save_checkpoint(self.model, config, directory, weights=state, **extra)
        return weights_digest(state)


def latest_tag(directory: Path) -> str:
    """The tag of the newest ``step{N}`` folder DeepSpeed wrote under ``directory``."""
    tags = [p.name for p in directory.glob("step*") if p.name[4:].isdigit()]
    if not tags:
        raise FileNotFoundError(f"no DeepSpeed checkpoint (step<N>/) under {directory}")
    return max(tags, key=lambda t: int(t[4:]))


def weights_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 over a state dict's names and bytes: equal only for bitwise-equal weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].float().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_rank_status(directory: str | Path, rank: int, **fields) -> None:
    """``directory/rank{N}.json``: what a rank last did (its pid, step, weight digest)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank{rank}.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(previous | fields))
    tmp.replace(path)


def _cpu_state(model: HyperLoRA) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.hypernet.state_dict().items()}
