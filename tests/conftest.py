import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from hyperray.config import Config, override  # noqa: E402


def tiny_config(**overrides) -> Config:
    """A tiny Llama, the target model as task encoder, small heads: builds in well under a second."""
    base = {
        "model.name": "tiny-llama",
        "encoder.kind": "target",
        "hypernet.hidden_size": 32,
        "hypernet.embedding_size": 8,
        "hypernet.depth": 1,
        "lora.rank": 4,
        "lora.alpha": 8,
        "lora.core_size": 8,
        "data.builtin_instances": 12,
        "data.max_prompt_tokens": 96,
        "data.max_answer_tokens": 16,
        "train.lr": 3e-3,
        "train.warmup_steps": 0,
    }
    return override(Config(), base | overrides)


@pytest.fixture
def config() -> Config:
    return tiny_config()
