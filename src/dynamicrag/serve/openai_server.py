"""A small OpenAI-compatible server around any :class:`~dynamicrag.llm.base.Backend`.

It serves ``POST /v1/chat/completions`` and ``GET /v1/models``, enough for the OpenAI client,
for :class:`~dynamicrag.llm.openai_backend.OpenAIBackend` (tested against it for real), and for
other tools that want the bundled model over HTTP. Concurrent requests wait in the one
:class:`~dynamicrag.serve.batcher.MicroBatcher` of the package (bounded queue: 503 with
``Retry-After`` when full; a per-request timeout: 504; a failing request fails alone), and a
batch's requests with the same sampling settings go into one ``Backend.generate`` call, so
HTTP clients get the backend's batching. An extension field, ``id_list_max``, asks for the
reranker's id grammar; ``guided_choice`` (vLLM's name) for one of a set of labels;
``no_repeat_ngram_size`` for the answer-only n-gram ban; OpenAI's ``frequency_penalty`` is
honoured as on OpenAI.

Example:
    >>> from dynamicrag.llm import load_backend
    >>> from dynamicrag.serve import BackgroundServer
    >>> with BackgroundServer(create_openai_app(load_backend("transformers"))) as server:
    ...     print(server.base_url)  # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from dynamicrag.isolation import error_text
from dynamicrag.llm.base import Backend, Chat, Completion, SamplingParams
from dynamicrag.serve.batcher import MicroBatcher
from dynamicrag.serve.errors import ApiError, install_error_handlers
from dynamicrag.serve.work import submit

try:
    import uvicorn
    from fastapi import FastAPI, Request
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the OpenAI-compatible server needs `pip install dynamicrag[serve]`") from e

logger = logging.getLogger(__name__)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that the backends can honour."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0)  # OpenAI's default
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # newer clients' name for max_tokens
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    id_list_max: int | None = Field(None, ge=1, description="dynamicrag extension: constrain to the id grammar")
    guided_choice: list[str] | None = Field(None, min_length=1, description="vLLM's: the answer is one of these")
    no_repeat_ngram_size: int | None = Field(None, ge=1, description="dynamicrag extension: no n-gram repeats in the answer")
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    continue_bias: float = Field(0.0, ge=-100, le=100, description="dynamicrag extension: logit bias on going on after an id")
    # Constraint fields of other servers: refused rather than silently ignored.
    structured_outputs: Any = None
    guided_regex: str | None = None
    grammar: str | None = None

    def sampling_params(self) -> SamplingParams:
        max_new = self.max_completion_tokens or self.max_tokens
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            n=self.n,
            seed=self.seed,
            stop=stop,
            id_list_max=self.id_list_max,
            choices=tuple(self.guided_choice) if self.guided_choice else None,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            frequency_penalty=self.frequency_penalty,
            continue_bias=self.continue_bias,
            **({"max_new_tokens": max_new} if max_new else {}),
        )


class Choice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dynamicrag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class GenerateBatch:
    """The batch function of the server's micro-batcher: one ``generate`` call per group of
    requests with the same sampling settings. Seeded sampling requests run alone: their samples
    must not depend on what else was in the batch.

    Args:
        backend: The served backend.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __call__(self, batch: list[tuple[Chat, SamplingParams]]) -> list[list[Completion]]:
        groups: dict[Any, list[int]] = {}
        for i, (_, params) in enumerate(batch):
            alone = params.seed is not None and params.temperature > 0
            groups.setdefault((params, i) if alone else params, []).append(i)
        out: list[list[Completion]] = [[] for _ in batch]
        for members in groups.values():
            params = batch[members[0]][1]
            for i, completions in zip(members, self.backend.generate([batch[i][0] for i in members], params)):
                out[i] = completions
        return out


def _failed(err: BaseException) -> ApiError:
    """A request whose generation raised, even alone: 400 for a request the backend refuses."""
    if isinstance(err, ValueError):
        return ApiError(400, str(err))
    return ApiError(500, f"generation failed: {error_text(err)}", "server_error")


def create_openai_app(
    backend: Backend,
    *,
    model_name: str | None = None,
    max_batch: int = 32,
    batch_wait_ms: float = 10.0,
    max_queue: int = 256,
    timeout_s: float = 600.0,
) -> FastAPI:
    """Build the FastAPI app that serves ``backend`` under the OpenAI chat completions API.

    Args:
        backend: Any backend (typically the transformers one on the bundled model).
        model_name: The name clients use in ``model``; default ``backend.model``. Requests
            naming another model get 404, as vLLM answers.
        max_batch: Most requests gathered into one batch.
        batch_wait_ms: Longest wait for a batch to fill.
        max_queue: Most requests waiting; more get 503 with ``Retry-After``.
        timeout_s: Seconds a request may take, queue wait included (then 504).

    Returns:
        The app; run it with uvicorn, :class:`~dynamicrag.serve.background.BackgroundServer`
        or :func:`run_openai_server`.
    """
    served = model_name or backend.model
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = MicroBatcher(GenerateBatch(backend), max_batch=max_batch, wait_s=batch_wait_ms / 1000,
                               max_queue=max_queue, name="dynamicrag-openai")
        await batcher.start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="dynamicrag OpenAI-compatible server", lifespan=lifespan)
    install_error_handlers(app)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served, created=created)])

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if body.model and body.model != served:
            raise ApiError(404, f"The model `{body.model}` does not exist; this server serves `{served}`",
                           "NotFoundError")
        if body.stream:
            raise ApiError(400, "stream=true is not supported by this server")
        for field in ("structured_outputs", "guided_regex", "grammar"):
            if getattr(body, field) is not None:
                raise ApiError(400, f"`{field}` is not supported here; use `id_list_max` for the id grammar")
        try:
            params = body.sampling_params()
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        chat = [m.model_dump() for m in body.messages]
        completions: list[Completion] = await submit(
            getattr(request.app.state, "batcher", None), (chat, params), timeout_s, _failed
        )
        prompt_tokens = completions[0].prompt_tokens if completions else 0
        completion_tokens = sum(c.completion_tokens for c in completions)
        return ChatCompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=served,
            choices=[
                Choice(index=i, message=ChatMessage(role="assistant", content=c.text), finish_reason=c.finish_reason)
                for i, c in enumerate(completions)
            ],
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens),
        )

    return app


def run_openai_server(backend: Backend, host: str = "127.0.0.1", port: int = 8000, *,
                      model_name: str | None = None) -> None:
    """Serve ``backend`` in the foreground until interrupted (Ctrl-C).

    Args:
        backend: The backend to serve.
        host: Interface to bind (``"0.0.0.0"`` to serve other machines).
        port: TCP port.
        model_name: The name clients use; default ``backend.model``.
    """
    uvicorn.run(create_openai_app(backend, model_name=model_name), host=host, port=port, log_level="info")
