"""Configuration: one typed dataclass per concern and one strict override path.

Every source of settings -- YAML files, command-line flags, a tuning search space -- is a flat
mapping of dotted keys (``"lora.rank": 4``) applied by :func:`~hyperray.overrides.override`.
Unknown keys raise and list the valid ones; values are coerced to the declared field type;
cross-field checks live in ``__post_init__`` and name the key to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyperray.overrides import (  # noqa: F401  (re-exported: the config API)
    ConfigKeyError,
    lookup,
    override,
    to_dict,
    valid_keys,
)


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Target model: a built-in name, a local directory or .gguf file, or a hub id."""
    dtype: str = "float32"
    """Precision of the frozen target model: float32 or bfloat16."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """peft semantics: suffixes, one regex (a single string), or ["all-linear"]."""
    chat_template: bool = True
    """Wrap the target's input in the tokenizer's chat template when it has one."""
    cache_dir: str | None = None
    """Where built-in models are converted and cached; default $HYPERRAY_CACHE or ~/.cache/hyperray."""

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype must be float32 or bfloat16, got {self.dtype!r}")
        if not self.target_modules:
            raise ValueError(
                "model.target_modules is empty: name at least one module, e.g. q_proj,v_proj"
            )


@dataclass
class LoraConfig:
    rank: int = 8
    """LoRA rank r: A is (r x d_in), B is (d_out x r)."""
    alpha: float = 16.0
    """LoRA scale numerator: the update is (alpha / rank) * B @ A, as in peft."""
    lightweight: bool = False
    """Generate only small cores: A = A_core @ P, B = Q @ B_core, with P, Q frozen random bases."""
    core_size: int = 32
    """Inner size c of the lightweight cores (A_core is r x c, B_core is c x r)."""
    basis_seed: int = 0
    """Seed the frozen lightweight bases are re-created from; stored in checkpoints."""

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.lightweight and self.core_size < self.rank:
            raise ValueError(
                f"lora.core_size ({self.core_size}) must be >= lora.rank ({self.rank}) "
                "for lightweight LoRA; raise lora.core_size"
            )


@dataclass
class EncoderConfig:
    kind: str = "sentence"
    """Task encoder: "sentence" (a frozen sentence encoder) or "target" (the frozen target model)."""
    name: str = "all-minilm-l6-v2"
    """Sentence encoder: the built-in all-minilm-l6-v2 or a local sentence-transformers directory."""
    max_length: int = 512
    """Task-text tokens the encoder reads."""

    def __post_init__(self):
        if self.kind not in ("sentence", "target"):
            raise ValueError(f"encoder.kind must be 'sentence' or 'target', got {self.kind!r}")


@dataclass
class HypernetConfig:
    head: str = "shared"
    """Generator head: shared, per_module, autoregressive or iterative."""
    hidden_size: int = 256
    """Width of the head's hidden features."""
    embedding_size: int = 64
    """Size of the learned layer-depth and module-type embeddings."""
    depth: int = 2
    """Residual MLP blocks in a head's trunk."""
    refinement_steps: int = 3
    """Passes of the iterative head (ignored by the others)."""
    dropout: float = 0.0
    """Dropout inside the head's trunk."""

    def __post_init__(self):
        if self.refinement_steps < 1:
            raise ValueError(f"hypernet.refinement_steps must be >= 1, got {self.refinement_steps}")


@dataclass
class DataConfig:
    path: str | None = None
    """Directory of SNI task files to train on; None uses the built-in task suite."""
    eval_path: str | None = None
    """Directory of held-out SNI task files; None holds out tasks of the training source."""
    eval_fraction: float = 0.1
    """Share of tasks held out when eval_path is None and the source is not the built-in suite."""
    num_demos: int = 2
    """Positive examples in the task text (Def+2Pos)."""
    tasks_per_batch: int = 2
    """Distinct tasks in each mini-batch."""
    rows_per_task: int = 4
    """Instances of each task in each mini-batch."""
    include_definition: bool = False
    """Also give the target model the task definition before the input."""
    max_prompt_tokens: int = 256
    """Target-model prompt tokens kept (truncated from the left)."""
    max_answer_tokens: int = 64
    """Answer tokens kept."""
    builtin_instances: int = 48
    """Instances per task of the built-in suite."""
    text_path: str | None = None
    """Pretraining stage: a folder of .txt files; None uses the training tasks' inputs as text."""
    pretrain_objective: str = "mixed"
    """Pretraining stage: "abcd" (hypernet reads A and D), "abc" (reads A) or "mixed"."""
    seed: int = 0

    def __post_init__(self):
        if self.num_demos < 1:
            raise ValueError(f"data.num_demos must be >= 1, got {self.num_demos}")
        if self.tasks_per_batch < 1 or self.rows_per_task < 1:
            raise ValueError("data.tasks_per_batch and data.rows_per_task must be >= 1")


@dataclass
class TrainConfig:
    stage: str = "finetune"
    """"finetune" (multi-task instructions) or "pretrain" (A|B|C|D, A|B|C on plain text)."""
    init_from: str | None = None
    """A hyperray checkpoint to start from, e.g. the pretraining stage's."""
    steps: int = 400
    """Optimiser steps."""
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    consistency_weight: float = 0.0
    """alpha: weight of HART's consistency loss between two demonstration sets of a task; 0 = off."""
    consistency_on: str = "adapter"
    """What the consistency loss compares: "adapter" (generated A, B) or "states" (head states)."""
    log_every: int = 10
    eval_every: int = 0
    """Steps between held-out evaluations during training; 0 = only before and after."""
    eval_tasks: int = 8
    """Held-out tasks evaluated (the first N by name)."""
    eval_instances: int = 8
    """Instances per held-out task evaluated."""
    max_new_tokens: int = 32
    seed: int = 0
    num_workers: int = 1
    """Ray Train workers (data-parallel ranks), each one DeepSpeed process."""
    cpus_per_worker: int = 2
    """CPUs each Ray Train worker reserves; also its torch thread count."""
    use_gpu: bool = False
    """One GPU per worker (nccl, bf16 allowed); False trains on CPUs over gloo."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimizer), 2 (+gradients), 3 (+weights)."""
    offload_optimizer: bool = False
    """Keep optimizer state (and its step) on the CPU: ZeRO stage >= 1 only."""
    precision: str = "fp32"
    """Training precision: "fp32", or "bf16" (GPU workers). fp16 is not supported."""
    checkpoint_every: int = 100
    """Steps between DeepSpeed checkpoints reported to Ray Train (fault tolerance, --train.resume)."""
    max_failures: int = 2
    """Worker-group failures Ray Train recovers from (each resumes from the last checkpoint)."""
    resume: bool = False
    """Continue the run named run_name from its latest checkpoint instead of starting afresh."""
    storage_path: str | None = None
    """Where Ray Train persists checkpoints; default <output_dir>/ray (made absolute)."""
    run_name: str | None = None
    """Ray Train run name under storage_path; default the output directory's name."""

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError(f"train.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker < 1:
            raise ValueError(f"train.cpus_per_worker must be >= 1, got {self.cpus_per_worker}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError(
                "train.offload_optimizer needs train.zero_stage >= 1; raise train.zero_stage"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(
                f"train.precision must be 'fp32' or 'bf16' (fp16 is not supported), got {self.precision!r}"
            )
        if self.checkpoint_every < 1:
            raise ValueError(f"train.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.max_failures < -1:
            raise ValueError(
                f"train.max_failures must be >= 0 (or -1 for unlimited), got {self.max_failures}"
            )
        if self.stage not in ("finetune", "pretrain"):
            raise ValueError(f"train.stage must be 'finetune' or 'pretrain', got {self.stage!r}")
        if self.consistency_weight < 0:
            raise ValueError(
                f"train.consistency_weight must be >= 0, got {self.consistency_weight}"
            )
        if self.consistency_on not in ("adapter", "states"):
            raise ValueError(
                f"train.consistency_on must be 'adapter' or 'states', got {self.consistency_on!r}"
            )


def default_search_space() -> dict[str, Any]:
    """α, rank, head, lightweight LoRA and learning rate; conditional keys name their condition."""
    return {
        "train.consistency_weight": {"loguniform": [0.01, 1.0], "or_zero": True},
        "lora.rank": {"choice": [4, 8, 16]},
        "hypernet.head": {"choice": ["shared", "per_module", "autoregressive", "iterative"]},
        "lora.lightweight": {"choice": [False, True]},
        "train.lr": {"loguniform": [3e-4, 3e-3]},
        "hypernet.refinement_steps": {"int": [2, 4], "if": {"hypernet.head": "iterative"}},
        "lora.core_size": {"choice": [8, 16, 32], "if": {"lora.lightweight": True}},
    }


@dataclass
class TuneConfig:
    num_samples: int = 4
    """Trials in the search."""
    max_concurrent: int = 1
    """Trials running at once (each holds 1 CPU plus its training workers)."""
    grace_period: int = 20
    """ASHA: steps every trial trains before it can be stopped early."""
    reduction_factor: int = 2
    """ASHA: keep the best 1/reduction_factor of trials at each rung."""
    seed: int = 0
    """Seed of Optuna's TPE sampler."""
    registered_model: str = "hyperray"
    """MLflow registered-model name the best hypernetwork is registered under."""
    space: dict[str, Any] = field(default_factory=default_search_space)
    """Dotted config key -> {"choice": [...]} | {"uniform"|"loguniform"|"int": [low, high]};
    "or_zero": true adds an explicit 0 to a log-uniform range; "if": {key: value} makes it
    conditional on another searched key."""

    def __post_init__(self):
        for key in ("num_samples", "max_concurrent", "grace_period"):
            if getattr(self, key) < 1:
                raise ValueError(f"tune.{key} must be >= 1, got {getattr(self, key)}")
        if self.reduction_factor < 2:
            raise ValueError(f"tune.reduction_factor must be >= 2, got {self.reduction_factor}")


@dataclass
class MlflowConfig:
    enabled: bool = True
    """Log params, metrics and artifacts to MLflow (MLFLOW_TRACKING_URI, else <output_dir>/mlflow.db)."""
    experiment: str = "hyperray"
    """MLflow experiment name."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    hypernet: HypernetConfig = field(default_factory=HypernetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    output_dir: str = "runs/default"


OPAQUE_KEYS = frozenset({"tune.space"})
"""Dict-valued fields: :func:`flatten` keeps them whole."""


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"rank": 4}}`` -> ``{"lora.rank": 4}``."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in OPAQUE_KEYS:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def from_dict(nested: dict[str, Any]) -> Config:
    return override(Config(), flatten(nested))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then a YAML (or JSON) file of overrides, then explicit overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        nested = yaml.safe_load(path.read_text()) or {}
        if not isinstance(nested, dict):
            raise ValueError(f"config file {path} must hold a mapping of settings")
        try:
            config = override(config, flatten(nested))
        except (KeyError, ValueError) as e:
            raise type(e)(f"{path}: {e.args[0]}") from None
    return override(config, overrides or {})


PATH_KEYS = (
    "data.path",
    "data.eval_path",
    "data.text_path",
    "train.init_from",
    "train.storage_path",
    "model.cache_dir",
    "output_dir",
)
"""Settings that name local files: :func:`absolute_paths` anchors them to the caller's folder."""


def absolute_paths(config: Config, base: str | Path | None = None) -> Config:
    """``config`` with relative local paths made absolute against ``base`` (default: cwd).

    Ray runs trials and workers in folders of its own, where ``../shared/data/sni/train`` means
    something else; the driver anchors every path before handing the config on. URIs
    (``runs:/...``, ``models:/...``, ``s3://...``) and hub ids are left as they are; ``model.name``
    changes only when it names an existing local file or folder.
    """
    base = Path(base or Path.cwd())
    updates = {}
    for key in PATH_KEYS:
        value = lookup(config, key)
        if value and ":/" not in value and not Path(value).is_absolute():
            updates[key] = str((base / value).resolve())
    name = config.model.name
    if not Path(name).is_absolute() and (base / name).exists():
        updates["model.name"] = str((base / name).resolve())
    return override(config, updates)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")
