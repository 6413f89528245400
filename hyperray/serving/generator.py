"""The generator deployment: loaded checkpoints, their adapters, and batched generation.

One replica holds up to ``max_checkpoints_per_replica`` checkpoints (Serve model multiplexing,
keyed by checkpoint name, LRU) and, per checkpoint, an LRU of generated adapter weights.
Completion requests are queued by ``serve.batch``, which keeps a batch to one multiplexed id, so
requests for one checkpoint with different adapters share one generation pass. All torch work
runs on one thread per replica: the adapter hooks hold one active adapter at a time, and the
event loop stays free to queue the next batch while a pass runs.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from ray import serve

from hyperray.model import HyperLoRA
from hyperray.serving.generation import AdapterCache, Row, answer_rows, chat_prompt_ids
from hyperray.serving.store import TaskSpec


@dataclass
class Loaded:
    model: HyperLoRA
    adapters: AdapterCache


class Generator:
    def __init__(
        self,
        checkpoints: dict[str, str],
        max_checkpoints_per_replica: int,
        adapter_cache_size: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        torch_threads: int,
    ):
        torch.set_num_threads(torch_threads)
        self._paths = checkpoints
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hyperray-torch")

        async def load(name: str) -> Loaded:
            return await self._run(_load, self._paths[name], adapter_cache_size)

        self._load = serve.multiplexed(max_num_models_per_replica=max_checkpoints_per_replica)(load)
        self._answer_batch.set_max_batch_size(max_batch_size)
        self._answer_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def create_adapter(self, adapter_id: str, task: TaskSpec) -> bool:
        """Generate (or find) the adapter; True when it was generated now."""
        loaded = await self._load(serve.get_multiplexed_model_id())
        _, generated = await self._run(loaded.adapters.get, adapter_id, task)
        return generated

    async def peft_zip(self, adapter_id: str, task: TaskSpec) -> bytes:
        """The adapter as a zipped PEFT folder (adapter_config.json + adapter_model.safetensors)."""
        loaded = await self._load(serve.get_multiplexed_model_id())
        adapter, _ = await self._run(loaded.adapters.get, adapter_id, task)
        return await self._run(_zip_peft, adapter)

    async def complete(
        self,
        adapter_id: str,
        task: TaskSpec,
        max_tokens: int,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        ignore_eos: bool = False,
    ) -> dict:
        """One request's answer, decoded in a pass with whatever other requests are queued."""
        name = serve.get_multiplexed_model_id()
        loaded = await self._load(name)
        if messages is not None:
            ids = chat_prompt_ids(loaded.model, messages)
        else:
            ids = loaded.model.collator.prompt_ids(prompt or "")
        answer = await self._answer_batch(
            name, Row(adapter_id, task, tuple(ids), max_tokens, ignore_eos)
        )
        return asdict(answer)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _answer_batch(self, names: list[str], rows: list[Row]) -> list:
        answers: dict[int, object] = {}
        # serve.batch splits batches by multiplexed id; grouping again keeps this correct anyway.
        for name in dict.fromkeys(names):
            indices = [i for i, n in enumerate(names) if n == name]
            loaded = await self._load(name)
            group = await self._run(
                answer_rows, loaded.model, loaded.adapters, [rows[i] for i in indices]
            )
            answers.update(zip(indices, group, strict=True))
        return [answers[i] for i in range(len(rows))]

    async def _run(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _load(path: str, adapter_cache_size: int) -> Loaded:
    from hyperray.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path)
    model.eval()
    return Loaded(model, AdapterCache(model, adapter_cache_size))


def _zip_peft(adapter) -> bytes:
    """Same adapter, same bytes: entries carry a fixed timestamp."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(adapter.save_peft(folder).iterdir()):
            entry = zipfile.ZipInfo(Path(file).name, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry, Path(file).read_bytes(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
