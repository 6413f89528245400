"""Hypernetwork checkpoints: ``hypernet.safetensors`` plus ``hyperray.json``.

The JSON holds the whole resolved config and the target model's layout (every target module,
its depth and shape), so a checkpoint knows the model it was trained for: loading it against a
model with another layout fails before any weight is touched. Never pickles.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from hyperray.config import Config, from_dict, to_dict
from hyperray.layout import Layout
from hyperray.model import HyperLoRA

FORMAT = "hyperray-hypernetwork"
VERSION = 1
WEIGHTS = "hypernet.safetensors"
META = "hyperray.json"


class CheckpointMismatchError(ValueError):
    """A checkpoint trained for one target model, loaded against another."""


def save_checkpoint(
    model: HyperLoRA,
    config: Config,
    directory: str | Path,
    weights: dict[str, Tensor] | None = None,
    **extra,
) -> Path:
    """``weights`` replaces the model's own hypernetwork state (e.g. gathered ZeRO-3 shards)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = model.hypernet.state_dict() if weights is None else weights
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(state, directory / WEIGHTS)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": to_dict(config),
        "target": {
            "name": config.model.name,
            "source": model.base_model,
            "layout": model.hypernet.layout.to_dict(),
        },
        "task_dim": model.hypernet.task_dim,
        **extra,
    }
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_checkpoint_config(directory: str | Path) -> Config:
    return from_dict(_read_meta(Path(directory))["config"])


def load_weights(model: HyperLoRA, directory: str | Path) -> HyperLoRA:
    """Load a checkpoint's hypernetwork into ``model``, after checking it fits the target."""
    directory = Path(directory)
    meta = _read_meta(directory)
    expected = Layout.from_dict(meta["target"]["layout"])
    actual = model.hypernet.layout
    if expected != actual or meta["task_dim"] != model.hypernet.task_dim:
        raise CheckpointMismatchError(
            f"checkpoint {directory} was trained for target model {meta['target']['name']!r} "
            f"({expected.describe()}, task embedding {meta['task_dim']}), but the loaded model is "
            f"{model.base_model!r} ({actual.describe()}, task embedding {model.hypernet.task_dim}); "
            f"load it with model.name={meta['target']['name']} and the checkpoint's encoder settings"
        )
    model.hypernet.load_state_dict(load_file(directory / WEIGHTS))
    return model


def load_checkpoint(directory: str | Path, **overrides) -> tuple[HyperLoRA, Config]:
    """Rebuild the model a checkpoint was trained with and load its hypernetwork."""
    from hyperray.build import build
    from hyperray.config import override

    config = override(read_checkpoint_config(directory), overrides)
    return load_weights(build(config), directory), config


def _read_meta(directory: Path) -> dict:
    path = directory / META
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a hyperray checkpoint: {META} is missing (expected {META} and {WEIGHTS})"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a hyperray checkpoint (format {meta.get('format')!r})")
    return meta
