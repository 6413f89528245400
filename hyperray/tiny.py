"""Tiny models built from configs, and the offline byte-level tokenizer they share.

They stand in for a real target model in tests and in the CI config: a 2-layer Llama with hidden
size 32 builds in milliseconds, needs no download, and is the same for the same seed in every
process (a hypernetwork trained on it can be served by a process that rebuilt it).

The tokenizer is GPT-2's byte-level scheme with no merges: every UTF-8 byte is one token, spelled
in GPT-2's printable byte alphabet, so any text round-trips and a GGUF "gpt2" tokenizer can hold it.
"""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

# ChatML as SmolLM2 writes it, without SmolLM2's default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokens() -> list[str]:
    """The vocabulary in id order: the special tokens, then the 256 bytes in GPT-2's spelling."""
    spelling = bytes_to_unicode()
    return SPECIAL_TOKENS + [spelling[byte] for byte in range(256)]


def byte_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer that needs no training and no download.

    With `chat_template`, it renders ChatML and ends a turn with `<|im_end|>` (its eos), as SmolLM2
    does; without, eos is `</s>`, as T5 expects.
    """
    vocab = {token: index for index, token in enumerate(byte_tokens())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>" if chat_template else "</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "</s>"],
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_llama(
    seed: int = 0, num_layers: int = 2, hidden_size: int = 32
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised Llama and its byte tokenizer.

    Two key/value heads for four query heads (GQA), so `q_proj` and `v_proj` differ in size and a
    mix-up between them shows as a shape error. Embeddings are tied, as in SmolLM2.
    """
    tokenizer = byte_tokenizer(chat_template=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        # Five times HF's default: at 0.02 a 32-wide random model's logits are near uniform,
        # and nothing a LoRA does to it can move the loss far enough for a test to see.
        initializer_range=0.1,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def build_tiny_t5(seed: int = 0) -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerFast]:
    """A randomly initialised T5 (2 encoder and 2 decoder layers) and its byte tokenizer."""
    tokenizer = byte_tokenizer(chat_template=False)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        initializer_factor=5.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
    return model.eval(), tokenizer
