"""HyperLoRA: a frozen target model, a frozen task encoder and the trainable hypernetwork.

``generate_adapter`` turns a task's definition and positive examples into an :class:`Adapter`
in one forward pass; ``forward`` computes the training loss of a task-grouped batch, each row
run with its own task's adapter; ``generate`` decodes greedily with a given adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hyperray.batching import IGNORE, Collator, TaskBatch
from hyperray.data import Example, format_task_text
from hyperray.encoders import TaskEncoder
from hyperray.hypernet import Generated, HyperNetwork
from hyperray.lora import Adapter, LoraHooks
from hyperray.losses import completion_loss, consistency_loss

# Causal LMs whose logits are exactly lm_head(last hidden state): no scaling or soft-capping.
_PLAIN_LM_HEAD = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "olmo2"}


@dataclass
class LossOutput:
    loss: Tensor
    ce: Tensor
    consistency: Tensor


def _example(example: Example | dict, index: int) -> Example:
    if isinstance(example, Example):
        return example
    if not isinstance(example, dict) or not all(
        isinstance(example.get(k), str) for k in ("input", "output")
    ):
        raise ValueError(
            f"positive_examples[{index}] must be an Example or a dict with string 'input' and "
            f"'output', got {example!r}"
        )
    return Example(example["input"], example["output"])


def cut_at(ids: list[int], end: int) -> list[int]:
    """``ids`` up to, not including, the first ``end``."""
    return ids[: ids.index(end)] if end in ids else ids


class HyperLoRA(nn.Module):
    def __init__(
        self,
        target: nn.Module,
        tokenizer,
        encoder: TaskEncoder,
        hypernet: HyperNetwork,
        collator: Collator,
        target_modules: list[str] | str,
        rank: int,
        alpha: float,
        base_model: str,
        consistency_weight: float = 0.0,
        consistency_on: str = "adapter",
    ):
        super().__init__()
        self.target = target.requires_grad_(False).eval()
        self.hypernet = hypernet
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.collator = collator
        self.is_encoder_decoder = bool(getattr(target.config, "is_encoder_decoder", False))
        self.hooks = LoraHooks(target, [s.name for s in hypernet.layout.slots])
        self.target_modules = target_modules
        self.rank, self.alpha, self.base_model = rank, alpha, base_model
        self.consistency_weight = consistency_weight
        self.consistency_on = consistency_on

    def train(self, mode: bool = True) -> HyperLoRA:
        super().train(mode)
        self.target.eval()  # frozen: never dropout, whatever the hypernetwork's mode
        return self

    def embed_tasks(self, texts: Sequence[str]) -> Tensor:
        with torch.no_grad(), self.hooks.apply(None):
            return self.encoder.encode(list(texts)).to(self._device)

    def generate_weights(self, texts: Sequence[str]) -> Generated:
        return self.hypernet(self.embed_tasks(texts))

    def adapter(self, generated: Generated) -> Adapter:
        return Adapter(
            generated.weights,
            self.rank,
            self.alpha,
            self.target_modules,
            self.base_model,
            self.is_encoder_decoder,
        )

    @torch.no_grad()
    def generate_adapter(
        self,
        definition: str,
        positive_examples: Sequence[Example | dict],
        num_demos: int | None = None,
    ) -> Adapter:
        """One hypernetwork forward pass: the adapter for a task, as in SNI's Def+kPos."""
        if not isinstance(definition, str) or not definition.strip():
            raise ValueError("definition is empty: give the task's instruction text")
        examples = [_example(e, i) for i, e in enumerate(positive_examples)]
        text = format_task_text(definition, examples[:num_demos] if num_demos else examples)
        return self.adapter(self.generate_weights([text])).detach()

    def forward(self, batch: TaskBatch) -> LossOutput:
        batch = batch.to(self._device)
        first = self.generate_weights(batch.task_texts)
        adapter = self.adapter(first)
        if adapter.batch_size > 1:
            adapter = adapter.index_select(batch.row_task)
        with self.hooks.apply(adapter):
            ce = self._answer_loss(batch)
        consistency = ce.new_zeros(())
        if self.consistency_weight > 0 and batch.alt_task_texts is not None:
            second = self.generate_weights(batch.alt_task_texts)
            if self.consistency_on == "states":
                consistency = consistency_loss(first.states, second.states)
            else:
                consistency = consistency_loss(first.codes, second.codes)
        return LossOutput(ce + self.consistency_weight * consistency, ce, consistency)

    def answer_loss(self, batch: TaskBatch, adapter: Adapter | None = None) -> Tensor:
        """Answer-token cross-entropy of the target under ``adapter``; None leaves the target as
        it is, e.g. wrapped in a peft LoRA (the baselines train through this)."""
        with self.hooks.apply(adapter):
            return self._answer_loss(batch.to(self._device))

    @torch.no_grad()
    def generate(
        self, inputs: Sequence[str], adapter: Adapter | None, max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy answers to ``inputs`` (already formatted instance texts) under ``adapter``."""
        prompts = [self.collator.prompt_ids(text) for text in inputs]
        answers = self.generate_ids(prompts, adapter, max_new_tokens)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]

    @torch.no_grad()
    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        adapter: Adapter | None,
        max_new_tokens: int = 32,
        stop_at_end: bool = True,
    ) -> list[list[int]]:
        """Greedy new tokens after each tokenised prompt, cut before the end token.

        ``adapter`` has one row for all prompts or one row per prompt, so a batch may mix tasks.
        A row shorter than ``max_new_tokens`` stopped at the end token. With ``stop_at_end``
        false, every row decodes ``max_new_tokens`` tokens, past its end token, uncut.
        """
        pad = self.collator.pad
        length = max(len(p) for p in prompts)
        if self.is_encoder_decoder:
            rows = [
                (list(p) + [pad] * (length - len(p)), [1] * len(p) + [0] * (length - len(p)))
                for p in prompts
            ]
        else:
            # Left padding puts every row's last prompt token at the end, where decoding starts.
            rows = [
                ([pad] * (length - len(p)) + list(p), [0] * (length - len(p)) + [1] * len(p))
                for p in prompts
            ]
        ids = torch.tensor([r[0] for r in rows], device=self._device)
        mask = torch.tensor([r[1] for r in rows], device=self._device)
        with self.hooks.apply(adapter):
            out = self.target.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                eos_token_id=self.collator.end if stop_at_end else [],
            )
        # Causal outputs repeat the prompt; seq2seq outputs start with the decoder start token.
        out = out[:, 1:] if self.is_encoder_decoder else out[:, length:]
        if not stop_at_end:
            return out.tolist()
        return [cut_at(row, self.collator.end) for row in out.tolist()]

    def _answer_loss(self, batch: TaskBatch) -> Tensor:
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if self.is_encoder_decoder:
            logits = self.target(**inputs, **self._decoder_inputs(batch)).logits
            return completion_loss(logits, batch.labels, shift=False)
        if self.target.config.model_type not in _PLAIN_LM_HEAD:
            return completion_loss(self.target(**inputs).logits, batch.labels, shift=True)
        # Only answer positions need the vocabulary projection: skipping the prompt's saves
        # the largest matmul of the step for models whose head is a plain linear layer.
        hidden = self.target.base_model(**inputs).last_hidden_state  # (N, T, d)
        scored = batch.labels[:, 1:] != IGNORE  # (N, T-1)
        logits = self.target.get_output_embeddings()(hidden[:, :-1][scored])  # (M, V)
        return completion_loss(logits[None], batch.labels[:, 1:][scored][None], shift=False)

    def _decoder_inputs(self, batch: TaskBatch) -> dict[str, Tensor]:
        if not self.is_encoder_decoder:
            return {}
        labels = batch.labels
        return {
            "decoder_input_ids": self.target.prepare_decoder_input_ids_from_labels(labels=labels),
            "decoder_attention_mask": (labels != IGNORE).long(),
        }

    @property
    def _device(self) -> torch.device:
        return next(self.hypernet.parameters()).device
