"""A small OpenAI-compatible server around any :class:`~dynamicrag.llm.base.Backend`.

It serves ``POST /v1/chat/completions`` and ``GET /v1/models``, enough for the OpenAI client,
for :class:`~dynamicrag.llm.openai_backend.OpenAIBackend` (tested against it for real), and for
other tools that want the bundled model over HTTP. Concurrent requests with the same sampling
settings are gathered into one ``Backend.generate`` call, so HTTP clients get the backend's
batching. An extension field, ``id_list_max``, asks for the reranker's id grammar;
``guided_choice`` (vLLM's name) for one of a set of labels; ``no_repeat_ngram_size`` for the
answer-only n-gram ban; OpenAI's ``frequency_penalty`` is honoured as on OpenAI.

Example:
    >>> from dynamicrag.llm import load_backend
    >>> with BackgroundServer(create_openai_app(load_backend("transformers"))) as server:
    ...     print(server.base_url)  # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any, Literal

from pydantic import BaseModel, Field

from dynamicrag.llm.base import Backend, Chat, Completion, SamplingParams

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
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


class _Batcher:
    """One worker thread that runs queued requests through the backend in batches.

    Requests that arrive within ``wait_s`` of each other and share their sampling settings go
    into one ``generate`` call. Seeded sampling requests run alone: their samples must not
    depend on what else was in the batch.
    """

    def __init__(self, backend: Backend, max_batch: int = 32, wait_s: float = 0.01) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dynamicrag-batcher", daemon=True)
        self._thread.start()

    def submit(self, chat: Chat, params: SamplingParams) -> Future:
        future: Future = Future()
        self._queue.put((chat, params, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            deadline = time.monotonic() + self.wait_s
            closing = False
            while len(group) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    closing = True
                    break
                group.append(nxt)
            buckets: dict[Any, list] = {}
            for chat, params, future in group:
                alone = params.seed is not None and params.temperature > 0
                buckets.setdefault((params, id(future)) if alone else params, []).append((chat, future))
            for key, items in buckets.items():
                params = key[0] if isinstance(key, tuple) else key
                self._generate(params, items)
            if closing:
                return

    def _generate(self, params: SamplingParams, items: list[tuple[Chat, Future]]) -> None:
        try:
            outputs = self.backend.generate([chat for chat, _ in items], params)
        except Exception as e:  # handed to the waiting requests, which answer with an error
            for _, future in items:
                future.set_exception(e)
            return
        for (_, future), completions in zip(items, outputs):
            future.set_result(completions)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


def create_openai_app(backend: Backend, *, model_name: str | None = None, max_batch: int = 32) -> FastAPI:
    """Build the FastAPI app that serves ``backend`` under the OpenAI chat completions API.

    Args:
        backend: Any backend (typically the transformers one on the bundled model).
        model_name: The name clients use in ``model``; default ``backend.model``. Requests
            naming another model get 404, as vLLM answers.
        max_batch: Most requests gathered into one ``generate`` call.

    Returns:
        The app; run it with uvicorn, :class:`BackgroundServer` or :func:`run_openai_server`.
    """
    served = model_name or backend.model
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = _Batcher(backend, max_batch=max_batch)
        try:
            yield
        finally:
            app.state.batcher.close()

    app = FastAPI(title="dynamicrag OpenAI-compatible server", lifespan=lifespan)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served, created=created)])

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if body.model and body.model != served:
            return _error(404, f"The model `{body.model}` does not exist; this server serves `{served}`",
                          "NotFoundError")
        if body.stream:
            return _error(400, "stream=true is not supported by this server")
        for field in ("structured_outputs", "guided_regex", "grammar"):
            if getattr(body, field) is not None:
                return _error(400, f"`{field}` is not supported here; use `id_list_max` for the id grammar")
        try:
            params = body.sampling_params()
        except ValueError as e:
            return _error(400, str(e))
        chat = [m.model_dump() for m in body.messages]
        try:
            completions: list[Completion] = await asyncio.wrap_future(request.app.state.batcher.submit(chat, params))
        except ValueError as e:
            return _error(400, str(e))
        except Exception as e:
            logger.exception("generation failed")
            return _error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
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


class BackgroundServer:
    """Run an ASGI app with uvicorn in a background thread (for tests, benchmarks, notebooks).

    Args:
        app: The app, e.g. from :func:`create_openai_app`.
        host: Interface to bind; loopback by default.
        port: 0 picks a free port (read back after binding, so there is no race).
        startup_timeout: Seconds to wait for the server to accept connections.

    Example:
        >>> with BackgroundServer(app) as server:
        ...     OpenAIBackend(server.base_url, "model")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI API root, ``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> BackgroundServer:
        """Start serving and return once the port accepts connections.

        Raises:
            RuntimeError: The server did not start (e.g. the port is taken) within the timeout.
        """
        self._thread = threading.Thread(target=self._server.run, name="dynamicrag-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.host}:{self.port} did not start within {self.startup_timeout}s")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        logger.info("serving on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread (runs the app's shutdown)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
