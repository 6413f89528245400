"""Export a generated adapter as a standard PEFT LoRA folder.

``adapter_config.json`` + ``adapter_model.safetensors`` with peft's key names, so
``peft.PeftModel.from_pretrained(base_model, folder)`` loads exactly the weights hyperray applies.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from hyperray.lora import Adapter


def peft_state_dict(adapter: Adapter, row: int = 0) -> dict:
    state = {}
    for name, (a, b) in adapter.weights.items():
        state[f"base_model.model.{name}.lora_A.weight"] = a[row].detach().float().contiguous().cpu()
        state[f"base_model.model.{name}.lora_B.weight"] = b[row].detach().float().contiguous().cpu()
    return state


def peft_config(adapter: Adapter) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if adapter.is_encoder_decoder else "CAUSAL_LM",
        "base_model_name_or_path": adapter.base_model,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": 0.0,
        "target_modules": adapter.target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }


def export_peft(adapter: Adapter, directory: str | Path, row: int = 0) -> Path:
    """Write row ``row`` of ``adapter`` as a PEFT adapter folder; returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(peft_state_dict(adapter, row), directory / "adapter_model.safetensors")
    (directory / "adapter_config.json").write_text(
        json.dumps(peft_config(adapter), indent=2) + "\n"
    )
    return directory
