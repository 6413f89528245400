"""Request bodies, the server's typed arguments, and 4xx errors that name the field to fix.

Bodies are parsed by hand (any content type, so ``curl -d`` works) and validated with strict
pydantic models: a string where a number belongs is an error, not a coercion. Every error is an
:class:`ApiError` rendered in OpenAI's shape, ``{"error": {"message", "type", "param"}}``.
Limits that the server configures (prompt and task length, ``max_tokens``) are checked against
its :class:`ServeArgs` and name the argument to raise.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from hyperray.serving.store import TaskSpec

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param}}


class ServeArgs(BaseModel):
    """The ``args`` of ``jobs/serve.yaml`` (and the flags of ``jobs/serve.py``)."""

    model_config = ConfigDict(extra="forbid")

    checkpoints: list[str] = Field(min_length=1)
    """Checkpoint folders or MLflow URIs, each optionally ``NAME=REF``; the first is the default."""
    mlflow_tracking_uri: str | None = None
    """Where ``runs:/`` and ``models:/`` URIs live; default ``$MLFLOW_TRACKING_URI``."""
    cache_dir: str | None = None
    """Where MLflow checkpoints are downloaded; default ``$HYPERRAY_CACHE/serve``."""
    max_checkpoints_per_replica: int = Field(2, ge=1)
    """Checkpoints a generator replica keeps loaded (LRU, Serve model multiplexing)."""
    max_adapters: int = Field(1024, ge=1)
    """Adapter ids the server remembers (LRU); a forgotten id answers 404."""
    adapter_cache_size: int = Field(64, ge=1)
    """Generated adapter weights a replica keeps per checkpoint (LRU); misses regenerate."""
    max_batch_size: int = Field(16, ge=1)
    """Requests, across adapters, decoding together in a checkpoint's running batch."""
    batch_wait_timeout_s: float = Field(0.02, ge=0)
    """How long an idle batch waits for more requests, so that a burst shares one prefill."""
    max_prompt_chars: int = Field(4000, ge=1)
    max_task_chars: int = Field(8000, ge=1)
    max_tokens_limit: int = Field(256, ge=1)
    """The largest ``max_tokens`` a request may ask for."""
    api_key_env: str | None = "HYPERRAY_API_KEY"
    """Environment variable holding the bearer token; unset or empty means no authentication."""
    generator_cpus: float = Field(1.0, gt=0)
    """CPUs each generator replica reserves; torch uses that many threads."""
    autoscaling: dict[str, Any] | None = None
    """Serve ``autoscaling_config`` of the generator (min_replicas, max_replicas, ...)."""
    num_replicas: int = Field(1, ge=1)
    """Generator replicas when ``autoscaling`` is unset."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown server argument(s) {', '.join(unknown)}; valid: "
                    f"{', '.join(cls.model_fields)}"
                )
        return data


class Strict(BaseModel):
    # Unknown OpenAI fields (user, top_p, ...) are accepted and have no effect.
    model_config = ConfigDict(extra="ignore")


class ExampleIn(Strict):
    input: StrictStr
    output: StrictStr


class TaskIn(Strict):
    definition: StrictStr
    examples: list[ExampleIn] = Field(min_length=1)

    @field_validator("definition")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty: give the task's instruction text")
        return value

    def spec(self) -> TaskSpec:
        return TaskSpec(self.definition, tuple((e.input, e.output) for e in self.examples))


class AdapterIn(TaskIn):
    checkpoint: StrictStr | None = None
    """A served checkpoint's name; default the first one."""


class Decoding(Strict):
    model: StrictStr
    max_tokens: StrictInt = 16
    task: TaskIn | None = None
    """With ``model`` naming a checkpoint: the task whose adapter answers (generated on use)."""
    temperature: StrictFloat | StrictInt | None = None
    stream: StrictBool = False
    n: StrictInt = 1
    return_token_ids: StrictBool = False
    ignore_eos: StrictBool = False
    """Decode all ``max_tokens`` tokens, past the end token (vLLM's extension, for benchmarks)."""

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("hyperray decodes greedily: send 0 or leave it out")
        return value

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool) -> bool:
        if value:
            raise ValueError("streaming is not supported: send false or leave it out")
        return value

    @field_validator("n")
    @classmethod
    def _one(cls, value: int) -> int:
        if value != 1:
            raise ValueError("greedy decoding has one answer: send 1 or leave it out")
        return value


class CompletionIn(Decoding):
    prompt: StrictStr


class MessageIn(Strict):
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatIn(Decoding):
    messages: list[MessageIn] = Field(min_length=1)


def parse_body(raw: bytes, model: type[M]) -> M:
    """``raw`` JSON validated as ``model``; 400 for bad JSON, 422 naming the first bad field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = _field_name(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        more = len(error.errors()) - 1
        suffix = f" ({more} more error{'s' if more > 1 else ''})" if more else ""
        raise ApiError(422, f"field '{field}': {message}{suffix}", field) from None


def check_limits(
    args: ServeArgs,
    max_tokens: int | None = None,
    prompt: str | None = None,
    task: TaskSpec | None = None,
    task_field: str = "task",
) -> None:
    if max_tokens is not None and not 1 <= max_tokens <= args.max_tokens_limit:
        raise ApiError(
            422,
            f"field 'max_tokens': {max_tokens} is out of range: must be between 1 and "
            f"{args.max_tokens_limit} (server arg max_tokens_limit)",
            "max_tokens",
        )
    if prompt is not None and len(prompt) > args.max_prompt_chars:
        raise ApiError(
            413,
            f"field 'prompt': {len(prompt)} characters is over the limit of "
            f"{args.max_prompt_chars} (server arg max_prompt_chars)",
            "prompt",
        )
    if task is not None and len(task.text) > args.max_task_chars:
        raise ApiError(
            413,
            f"field '{task_field}': the task text (definition and examples) has "
            f"{len(task.text)} characters, over the limit of {args.max_task_chars} "
            f"(server arg max_task_chars)",
            task_field,
        )


def _field_name(loc: tuple) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"
