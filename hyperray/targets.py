"""Choosing the Linear modules a LoRA adapter targets, with peft's `target_modules` semantics.

A config's `target_modules` means here what it means in a peft `LoraConfig`, so a spec carries
over to and from peft:

- a list: a module whose name equals an entry, or ends with "." + an entry (`"q_proj"`);
- a string: a regex that must match the whole module name (`r".*\\.layers\\.0\\..*_proj"`);
- `"all-linear"`: every `nn.Linear` except the output layer (`lm_head`).

Only `nn.Linear` modules are returned: those are what a LoRA delta `B @ A` is applied to.
"""

import re
from collections.abc import Sequence

from torch import nn

ALL_LINEAR = "all-linear"

# The attention query and value projections: the original LoRA paper's choice, and peft's default.
DEFAULT_TARGETS_BY_MODEL_TYPE = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "umt5": ["q", "v"],
}


def find_target_modules(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Names of the `nn.Linear` modules `target_modules` selects, in model order.

    Raises `ValueError` listing the Linear suffixes that exist when nothing matches.
    """
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        output_layer = _output_layer_name(model)
        found = [name for name in linear if name != output_layer]
    elif isinstance(target_modules, str):
        found = [name for name in linear if re.fullmatch(target_modules, name)]
    else:
        wanted = list(target_modules)
        found = [
            name
            for name in linear
            if name in wanted or any(name.endswith(f".{entry}") for entry in wanted)
        ]
    if not found:
        raise ValueError(
            f"target_modules={target_modules!r} matches no Linear module of "
            f"{type(model).__name__}. Its Linear modules end in: "
            f"{', '.join(linear_suffixes(model))}. "
            f"Pass a list of these suffixes, a regex matching whole module names, or 'all-linear'."
        )
    return found


def default_target_modules(model: nn.Module) -> list[str]:
    """The query and value projections, named as this model family names them."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in DEFAULT_TARGETS_BY_MODEL_TYPE:
        return list(DEFAULT_TARGETS_BY_MODEL_TYPE[model_type])
    # An unlisted family often still follows Llama's or T5's naming.
    suffixes = linear_suffixes(model)
    for pair in (["q_proj", "v_proj"], ["q", "v"]):
        if all(suffix in suffixes for suffix in pair):
            return pair
    raise ValueError(
        f"No default target modules for model type {model_type!r}; its Linear modules end in: "
        f"{', '.join(suffixes)}. Set target_modules explicitly (e.g. to the attention projections)."
    )


def linear_suffixes(model: nn.Module) -> list[str]:
    """The distinct last name components of the Linear modules, output layer excluded, in order."""
    output_layer = _output_layer_name(model)
    suffixes: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != output_layer:
            suffixes[name.rsplit(".", 1)[-1]] = None
    return list(suffixes)


def _output_layer_name(model: nn.Module) -> str | None:
    """The module name of the output embedding (`lm_head`), as peft's "all-linear" finds it."""
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is None:
        return None
    return next((name for name, module in model.named_modules() if module is output), None)
