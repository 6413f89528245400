"""Target module selection: peft's `target_modules` semantics, checked against peft itself."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from hyperray.targets import default_target_modules, find_target_modules  # noqa: E402
from hyperray.tiny import build_tiny_llama, build_tiny_t5  # noqa: E402

LLAMA_SUFFIXES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def llama():
    return build_tiny_llama()[0]


@pytest.fixture
def t5():
    return build_tiny_t5()[0]


def peft_wrapped(model, target_modules) -> list[str]:
    """The module names peft's LoraModel wraps for this spec, in model order."""
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=target_modules))
    prefix = "base_model.model."
    return [
        name.removeprefix(prefix)
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A")
    ]


def test_list_matches_exact_names_and_dot_suffixes(llama):
    found = find_target_modules(llama, ["q_proj", "model.layers.1.mlp.down_proj"])
    assert found == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ]
    # "proj" is not a whole name component of "q_proj"
    with pytest.raises(ValueError):
        find_target_modules(llama, ["proj"])


def test_regex_must_match_whole_name(llama):
    assert find_target_modules(llama, r".*layers\.0\.self_attn\.(q|v)_proj") == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    with pytest.raises(ValueError):
        find_target_modules(llama, r"q_proj")  # a partial match is not enough


def test_all_linear_excludes_lm_head(llama):
    found = find_target_modules(llama, "all-linear")
    assert "lm_head" not in found
    assert len(found) == 2 * len(LLAMA_SUFFIXES)
    assert find_target_modules(llama, "ALL-LINEAR") == found


def test_only_linear_modules_are_returned(llama):
    found = find_target_modules(llama, r"model\.layers\.0\..*")
    assert all(".self_attn." in n or ".mlp." in n for n in found)
    assert "model.layers.0.input_layernorm" not in found


def test_no_match_lists_existing_suffixes(llama):
    with pytest.raises(ValueError) as error:
        find_target_modules(llama, ["query"])
    message = str(error.value)
    assert "query" in message
    assert ", ".join(LLAMA_SUFFIXES) in message


@pytest.mark.parametrize(
    "spec",
    [
        ["q_proj", "v_proj"],
        ["o_proj", "model.layers.0.mlp.up_proj"],
        r".*\.layers\.1\..*_proj",
        r"model\.layers\.\d+\.self_attn\.[qk]_proj",
        "all-linear",
    ],
)
def test_parity_with_peft_llama(spec):
    model = build_tiny_llama()[0]
    ours = find_target_modules(model, spec)
    assert ours == peft_wrapped(model, spec)


@pytest.mark.parametrize("spec", [["q", "v"], "all-linear", r"encoder\..*\.(k|o)", ["wo"]])
def test_parity_with_peft_t5(spec):
    model = build_tiny_t5()[0]
    ours = find_target_modules(model, spec)
    assert ours == peft_wrapped(model, spec)


def test_default_targets(llama, t5):
    assert default_target_modules(llama) == ["q_proj", "v_proj"]
    assert default_target_modules(t5) == ["q", "v"]
    t5_found = find_target_modules(t5, default_target_modules(t5))
    # 2 encoder layers (self-attention) + 2 decoder layers (self- and cross-attention), q and v each
    assert len(t5_found) == (2 + 2 * 2) * 2
    assert all(name.endswith((".q", ".v")) for name in t5_found)
