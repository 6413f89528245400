"""hyperray: hypernetworks that turn a task's instructions into LoRA weights for a frozen LM.

from hyperray import build, load_config
model = build(load_config("jobs/configs/tiny.yaml"))
adapter = model.generate_adapter(definition, positive_examples)
adapter.save_peft("out/adapter")
"""

from hyperray.build import build, build_tasks
from hyperray.checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from hyperray.config import Config, load_config, override
from hyperray.evaluate import evaluate, rouge_l
from hyperray.export import export_peft
from hyperray.lora import Adapter
from hyperray.model import HyperLoRA

__all__ = [
    "Adapter",
    "CheckpointMismatchError",
    "Config",
    "HyperLoRA",
    "build",
    "build_tasks",
    "evaluate",
    "export_peft",
    "load_checkpoint",
    "load_config",
    "override",
    "rouge_l",
    "save_checkpoint",
]
