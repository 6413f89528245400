"""The HTTP app: a FastAPI ingress in Ray Serve in front of the generator deployment.

    POST /v1/adapters                 definition + examples -> adapter id (generated once)
    GET  /v1/adapters/{id}            what the adapter is
    GET  /v1/adapters/{id}/peft       the adapter as a zipped PEFT folder
    POST /v1/completions              OpenAI-compatible; ``model`` is an adapter id, or a
    POST /v1/chat/completions         checkpoint name with the task inline in ``task``
    GET  /v1/models                   checkpoints and adapters, with their base model
    GET  /health, GET /metrics, GET / (the web page)

The ingress owns the adapter registry (id -> checkpoint and task text) and every check of a
request; the generator owns weights and compute, addressed by checkpoint name through Serve's
multiplexed model id. With ``$HYPERRAY_API_KEY`` set (``api_key_env``), every route but
``/health`` and the page itself needs ``Authorization: Bearer <key>``; the page asks for the key.
"""

# No `from __future__ import annotations`: Serve validates `args` against build_app's annotation.

import asyncio
import logging
import os
import secrets
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from hyperray.models import cache_root
from hyperray.serving.checkpoints import ServedCheckpoint, resolve_checkpoints
from hyperray.serving.generator import Generator
from hyperray.serving.metrics import ServerMetrics
from hyperray.serving.schemas import (
    AdapterIn,
    ApiError,
    ChatIn,
    CompletionIn,
    ServeArgs,
    TaskIn,
    check_limits,
    parse_body,
)
from hyperray.serving.store import ID_PREFIX, AdapterRecord, AdapterRegistry, TaskSpec, adapter_id

PAGE = Path(__file__).parent / "web" / "index.html"
logger = logging.getLogger("ray.serve")

app = FastAPI(title="hyperray", docs_url=None, redoc_url=None, openapi_url=None)


@serve.ingress(app)
class Server:
    def __init__(
        self, generator: DeploymentHandle, checkpoints: list[ServedCheckpoint], args: ServeArgs
    ):
        self.generator = generator
        self.checkpoints = {c.name: c for c in checkpoints}
        self.default_checkpoint = checkpoints[0].name
        self.args = args
        self.registry = AdapterRegistry(args.max_adapters)
        self.metrics = ServerMetrics()
        self._pending: dict[str, asyncio.Future] = {}
        self._api_key = os.environ.get(args.api_key_env) if args.api_key_env else None

    @app.get("/")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "checkpoints": list(self.checkpoints)}

    @app.get("/metrics")
    async def prometheus(self, request: Request) -> Response:
        return await self._handle("metrics", request, self._metrics)

    @app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        return await self._handle("models", request, self._models)

    @app.post("/v1/adapters")
    async def create_adapter(self, request: Request) -> Response:
        return await self._handle("adapters", request, self._create_adapter)

    @app.get("/v1/adapters/{adapter_id}")
    async def describe_adapter(self, adapter_id: str, request: Request) -> Response:
        return await self._handle("adapter", request, self._describe_adapter, adapter_id)

    @app.get("/v1/adapters/{adapter_id}/peft")
    async def download_adapter(self, adapter_id: str, request: Request) -> Response:
        return await self._handle("peft", request, self._download_adapter, adapter_id)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._handle("completions", request, self._complete, CompletionIn)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._handle("chat", request, self._complete, ChatIn)

    async def _handle(self, route: str, request: Request, action, *args) -> Response:
        """Authorise, run, and turn every failure into a JSON error: one bad request never
        takes the replica down."""
        try:
            self._authorize(request)
            response = await action(request, *args)
        except ApiError as error:
            headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
            response = JSONResponse(error.body(), status_code=error.status, headers=headers)
        except Exception as error:
            logger.exception("hyperray %s failed", route)
            response = JSONResponse(ApiError(500, f"{route} failed: {error}").body(), 500)
        self.metrics.observe_request(route, response.status_code)
        return response

    def _authorize(self, request: Request) -> None:
        if not self._api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), self._api_key.encode()
        ):
            raise ApiError(
                401,
                f"missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                f"(the server reads the key from ${self.args.api_key_env})",
            )

    async def _metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render())

    async def _models(self, request: Request) -> Response:
        data = [
            {
                "id": c.name,
                "object": "model",
                "owned_by": "hyperray",
                "kind": "checkpoint",
                "root": c.base,
                "parent": None,
                "ref": c.ref,
                "rank": c.rank,
            }
            for c in self.checkpoints.values()
        ]
        data += [
            {
                "id": r.id,
                "object": "model",
                "owned_by": "hyperray",
                "kind": "adapter",
                "root": r.base,
                "parent": r.checkpoint,
                "created": r.created,
            }
            for r in self.registry.records()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _create_adapter(self, request: Request) -> Response:
        body = parse_body(await request.body(), AdapterIn)
        checkpoint = self._checkpoint(body.checkpoint or self.default_checkpoint, "checkpoint")
        task = body.spec()
        check_limits(self.args, task=task, task_field="definition")
        known = self.registry.get(adapter_id(checkpoint.fingerprint, task)) is not None
        record = await self._register(checkpoint, task, generate=True)
        if known:
            self.metrics.adapters_reused += 1
        return JSONResponse(record.describe() | {"cached": known})

    async def _describe_adapter(self, request: Request, id: str) -> Response:
        return JSONResponse(self._record(id, "adapter_id").describe())

    async def _download_adapter(self, request: Request, id: str) -> Response:
        record = self._record(id, "adapter_id")
        archive = await self._generator(record.checkpoint).peft_zip.remote(record.id, record.task)
        return Response(
            archive,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{record.id}.zip"'},
        )

    async def _complete(self, request: Request, schema: type) -> Response:
        body = parse_body(await request.body(), schema)
        chat = schema is ChatIn
        if chat:
            prompt_chars = "".join(m.content for m in body.messages)
            prompt_field = "messages"
        else:
            prompt_chars, prompt_field = body.prompt, "prompt"
        check_limits(self.args, max_tokens=body.max_tokens)
        if len(prompt_chars) > self.args.max_prompt_chars:
            raise ApiError(
                413,
                f"field '{prompt_field}': {len(prompt_chars)} characters is over the limit of "
                f"{self.args.max_prompt_chars} (server arg max_prompt_chars)",
                prompt_field,
            )
        record = await self._resolve_model(body.model, body.task)
        answer = await self._generator(record.checkpoint).complete.remote(
            record.id,
            record.task,
            body.max_tokens,
            prompt=None if chat else body.prompt,
            messages=[m.model_dump() for m in body.messages] if chat else None,
            ignore_eos=body.ignore_eos,
        )
        self.metrics.observe_answer(answer["batch_size"], answer["adapter_generated"])
        choice = {"index": 0, "finish_reason": answer["finish_reason"], "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": answer["text"]}
        else:
            choice["text"] = answer["text"]
        if body.return_token_ids:
            choice["token_ids"] = answer["token_ids"]
        completion = len(answer["token_ids"])
        return JSONResponse(
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": body.model,
                "adapter_id": record.id,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": answer["prompt_tokens"],
                    "completion_tokens": completion,
                    "total_tokens": answer["prompt_tokens"] + completion,
                },
            }
        )

    async def _resolve_model(self, model: str, task: TaskIn | None) -> AdapterRecord:
        record = self.registry.get(model)
        if record is not None:
            if task is not None:
                raise ApiError(
                    422,
                    f"field 'task': model {model!r} is an adapter, whose task is fixed; "
                    "leave 'task' out, or name a checkpoint in 'model' to use an inline task",
                    "task",
                )
            return record
        if model in self.checkpoints:
            if task is None:
                raise ApiError(
                    422,
                    f"field 'task': model {model!r} is a checkpoint, so the request needs the "
                    "task inline ('task': {'definition': ..., 'examples': [...]}); or create "
                    "an adapter with POST /v1/adapters and send its id as 'model'",
                    "task",
                )
            spec = task.spec()
            check_limits(self.args, task=spec, task_field="task")
            return await self._register(self.checkpoints[model], spec, generate=False)
        if model.startswith(ID_PREFIX):
            self._record(model, "model")
        raise ApiError(
            404,
            f"field 'model': {model!r} is neither an adapter id nor a checkpoint; "
            f"checkpoints: {', '.join(self.checkpoints)}",
            "model",
        )

    async def _register(
        self, checkpoint: ServedCheckpoint, task: TaskSpec, generate: bool
    ) -> AdapterRecord:
        """The adapter's record, creating it once however many requests ask at the same time."""
        id = adapter_id(checkpoint.fingerprint, task)
        record = self.registry.get(id)
        if record is not None:
            return record
        pending = self._pending.get(id)
        if pending is None:
            pending = asyncio.ensure_future(self._create(checkpoint, id, task, generate))
            self._pending[id] = pending
            pending.add_done_callback(lambda _: self._pending.pop(id, None))
        return await asyncio.shield(pending)

    async def _create(
        self, checkpoint: ServedCheckpoint, id: str, task: TaskSpec, generate: bool
    ) -> AdapterRecord:
        if generate:
            generated = await self._generator(checkpoint.name).create_adapter.remote(id, task)
            self.metrics.adapters_generated += int(generated)
        record = AdapterRecord(
            id=id,
            checkpoint=checkpoint.name,
            task=task,
            rank=checkpoint.rank,
            modules=checkpoint.modules,
            base=checkpoint.base,
            created=int(time.time()),
        )
        self.registry.add(record)
        return record

    def _record(self, id: str, field: str) -> AdapterRecord:
        record = self.registry.get(id)
        if record is None:
            raise ApiError(
                404,
                f"field '{field}': unknown adapter id {id!r}: create it with POST /v1/adapters "
                f"(this server remembers the last {self.args.max_adapters}, server arg "
                "max_adapters)",
                field,
            )
        return record

    def _checkpoint(self, name: str, field: str) -> ServedCheckpoint:
        if name not in self.checkpoints:
            raise ApiError(
                404,
                f"field '{field}': unknown checkpoint {name!r}; served checkpoints: "
                f"{', '.join(self.checkpoints)}",
                field,
            )
        return self.checkpoints[name]

    def _generator(self, checkpoint: str) -> DeploymentHandle:
        return self.generator.options(multiplexed_model_id=checkpoint)


def build_app(args: ServeArgs) -> Application:
    """The Serve application for ``args`` (the ``import_path`` target of jobs/serve.yaml)."""
    if isinstance(args, dict):
        args = ServeArgs.model_validate(args)
    cache = args.cache_dir or cache_root() / "serve"
    served = resolve_checkpoints(args.checkpoints, cache, args.mlflow_tracking_uri)
    scaling = (
        {"autoscaling_config": args.autoscaling}
        if args.autoscaling
        else {"num_replicas": args.num_replicas}
    )
    generator = serve.deployment(Generator).options(
        name="Generator",
        ray_actor_options={"num_cpus": args.generator_cpus},
        # Enough requests in flight per replica to fill a batch across adapters.
        max_ongoing_requests=max(4 * args.max_batch_size, 64),
        **scaling,
    )
    server = serve.deployment(Server).options(
        name="Server", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024
    )
    return server.bind(
        generator.bind(
            {c.name: c.path for c in served},
            args.max_checkpoints_per_replica,
            args.adapter_cache_size,
            args.max_batch_size,
            args.batch_wait_timeout_s,
            max(1, int(args.generator_cpus)),
        ),
        served,
        args,
    )
