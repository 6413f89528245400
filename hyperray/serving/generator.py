"""The generator deployment: loaded checkpoints, their adapters, and batched generation.

One replica holds up to ``max_checkpoints_per_replica`` checkpoints (Serve model multiplexing,
keyed by checkpoint name, LRU) and, per checkpoint, an LRU of generated adapter weights and one
running batch (:mod:`hyperray.serving.continuous`): a completion joins that batch at its next
step, whatever adapter it uses, and leaves it when it stops. All torch work runs on one thread
per replica: the adapter hooks hold one active adapter at a time, and the event loop stays free
to queue requests while a step runs.
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
from hyperray.serving.continuous import Scheduler, decoder_for
from hyperray.serving.generation import AdapterCache, Row, chat_prompt_ids
from hyperray.serving.store import TaskSpec


@dataclass
class Loaded:
    model: HyperLoRA
    adapters: AdapterCache
    scheduler: Scheduler


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
            model, adapters = await self._run(_load, self._paths[name], adapter_cache_size)
            decoder = decoder_for(model, adapters)
            scheduler = Scheduler(decoder, self._run, max_batch_size, batch_wait_timeout_s)
            return Loaded(model, adapters, scheduler)

        self._load = serve.multiplexed(max_num_models_per_replica=max_checkpoints_per_replica)(load)

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
        """One request's answer, decoded in the checkpoint's running batch."""
        loaded = await self._load(serve.get_multiplexed_model_id())
        if messages is not None:
            ids = chat_prompt_ids(loaded.model, messages)
        else:
            ids = loaded.model.collator.prompt_ids(prompt or "")
        answer = await loaded.scheduler.submit(
            Row(adapter_id, task, tuple(ids), max_tokens, ignore_eos)
        )
        return asdict(answer)

    async def _run(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _load(path: str, adapter_cache_size: int) -> Loaded:
    from hyperray.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path)
    model.eval()
    return model, AdapterCache(model, adapter_cache_size)


def _zip_peft(adapter) -> bytes:
    """Same adapter, same bytes: entries carry a fixed timestamp."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(adapter.save_peft(folder).iterdir()):
            entry = zipfile.ZipInfo(Path(file).name, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry, Path(file).read_bytes(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
