"""``dynamicrag serve``: the reranker and the generator over HTTP, with micro-batching.

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /v1/rerank`` ``{query, passages: [{id?, title?, text}]}`` -> the ids the dynamic
  reranker chose, in its order, with ``k``, the raw output and whether it was well formed.
- ``POST /v1/answer`` ``{question, passages?, top_n?, task?}`` -> the answer and the passages
  it was given; without ``passages`` the server's index is searched for the top ``top_n``.
- ``GET /health`` -> model, queue depth, batch statistics.

Concurrent requests are gathered into one reranker and one generator call per batch
(:class:`~dynamicrag.serve.batcher.MicroBatcher`), run in a thread so the event loop keeps
answering. Errors are JSON, ``{"error": {"message", "type", "code"}}``: 401 bad or missing API
key, 413 too many passages or too large a body, 422 invalid input (the message names the
field), 502 the model call raised, 503 queue full (with ``Retry-After``) or shutting down,
504 no result within the timeout. An unusable reranker output is not an HTTP error: it is
answered with 200, ``error`` set and the raw text, so it can be counted (as ``infer`` does).

Example:
    >>> from dynamicrag.generate import Generator
    >>> from dynamicrag.llm import load_backend
    >>> from dynamicrag.rerank import DynamicReranker
    >>> llm = load_backend("transformers")
    >>> app = create_app(DynamicReranker(llm, constrained=True), Generator(llm))
    >>> with BackgroundServer(app) as server:  # doctest: +SKIP
    ...     httpx.post(f"http://127.0.0.1:{server.port}/v1/rerank", json={...})
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# run time, and the request models are local classes (they carry the configured limits).
import contextlib
import hmac
import ipaddress
import logging
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dynamicrag.pipeline import with_passages
from dynamicrag.schema import KNOWN_TASKS, Example, Passage, Selection
from dynamicrag.serve.batcher import (
    BatchItemError,
    MicroBatcher,
    QueueFullError,
    RequestTimeoutError,
    ServerClosingError,
)

try:
    import uvicorn
    from fastapi import Depends, FastAPI, HTTPException, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("`dynamicrag serve` needs `pip install dynamicrag[serve]`") from e

logger = logging.getLogger(__name__)

API_KEY_ENV = "DYNAMICRAG_API_KEY"
MAX_ID_CHARS = 256


@dataclass
class ServeSettings:
    """Limits and batching of the server (the same fields back the CLI flags).

    Args:
        model_name: Shown by ``/health``; default the generator backend's model.
        api_key: Required from clients when set.
        max_passages: Most passages per request.
        max_text_chars: Longest query, question, passage text or title, in characters.
        max_body_bytes: Largest request body; default: what the largest valid request can
            take (``max_passages`` passages of ``max_text_chars``, JSON-escaped).
        max_queue: Most requests waiting for the model.
        timeout_s: Per-request deadline, queue wait included.
        max_batch: Most requests per model call.
        batch_wait_ms: Longest wait for a batch to fill.
        top_n: Passages retrieved from the index when ``/v1/answer`` gets none; None: 10, or
            ``max_passages`` if smaller.
    """

    model_name: str | None = field(default=None, metadata={"help": "Model name shown by /health (default: the backend's)"})
    api_key: str | None = field(
        default=None,
        repr=False,  # never in logs
        metadata={"help": f"Require this key (header 'Authorization: Bearer KEY' or 'X-API-Key'); "
                          f"default: ${API_KEY_ENV} if set, else no key"},
    )
    max_passages: int = field(default=50, metadata={"help": "Most passages per request (more: 413)"})
    max_text_chars: int = field(
        default=4000, metadata={"help": "Longest query, question, passage text or title in characters (more: 422)"}
    )
    max_body_bytes: int | None = field(
        default=None, metadata={"help": "Largest request body in bytes (more: 413); default: fits the largest valid request"}
    )
    max_queue: int = field(default=64, metadata={"help": "Most requests waiting for the model; more get 503 + Retry-After"})
    timeout_s: float = field(default=120.0, metadata={"help": "Seconds a request may take, queue wait included (then 504)"})
    max_batch: int = field(default=8, metadata={"help": "Most requests gathered into one model call"})
    batch_wait_ms: float = field(default=10.0, metadata={"help": "Longest wait in ms for a batch to fill"})
    top_n: int | None = field(
        default=None, metadata={"help": "Passages retrieved from --index when /v1/answer gets none; default 10 (at most max_passages)"}
    )

    def __post_init__(self) -> None:
        if self.top_n is None:
            self.top_n = min(10, self.max_passages)  # `ask`'s default
        for name in ("max_passages", "max_text_chars", "max_queue", "max_batch", "top_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.batch_wait_ms < 0:
            raise ValueError(f"timeout_s must be > 0 and batch_wait_ms >= 0, got {self.timeout_s}, {self.batch_wait_ms}")
        if self.top_n > self.max_passages:
            raise ValueError(f"top_n ({self.top_n}) cannot exceed max_passages ({self.max_passages})")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; leave it unset to serve without a key")
        if self.max_body_bytes is None:
            # JSON escapes a character in at most 6 bytes (\uXXXX); 64 KiB for the rest.
            per_passage = (2 * self.max_text_chars + MAX_ID_CHARS) * 6 + 64
            self.max_body_bytes = 65536 + self.max_text_chars * 6 + self.max_passages * per_passage
        elif self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")


# ---------------------------------------------------------------- request and response models


class PassageOut(BaseModel):
    id: str
    title: str
    text: str


class RerankResponse(BaseModel):
    selected: list[str] = Field(description="Ids of the chosen passages, in the reranker's order")
    positions: list[int] = Field(description="1-based positions of the chosen passages in the request")
    k: int = Field(description="How many passages were chosen (0: the model said None)")
    raw: str = Field(description="The reranker's raw output")
    well_formed: bool = Field(description="The output followed the id grammar exactly")
    error: str | None = Field(description="Why no selection could be read (unusable output), or null")


class AnswerResponse(BaseModel):
    answer: str | None = Field(description="The generated answer; null when the reranker output was unusable")
    selected: list[PassageOut] = Field(description="The passages the generator was given, in order")
    k: int
    raw: str = Field(description="The reranker's raw output")
    well_formed: bool
    error: str | None
    retrieved: bool = Field(description="The candidates came from the server's index")


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    ok: bool
    model: str
    queue_depth: int
    max_queue: int
    in_flight: int
    index: bool = Field(description="An index is loaded: /v1/answer works without passages")
    batches: dict[str, Any]


def _request_models(s: ServeSettings) -> tuple[type[BaseModel], type[BaseModel]]:
    """Request models carrying this server's limits (pydantic constraints are per class)."""
    text_limit = s.max_text_chars

    class PassageIn(BaseModel):
        model_config = ConfigDict(extra="forbid")

        id: str | None = Field(
            None, min_length=1, max_length=MAX_ID_CHARS, description="Default: the 1-based position in the list"
        )
        title: str = Field("", max_length=text_limit)
        text: str = Field(min_length=1, max_length=text_limit)

    def unique_ids(passages: Sequence[PassageIn] | None) -> None:
        seen: set[str] = set()
        for i, p in enumerate(passages or (), start=1):
            pid = p.id if p.id is not None else str(i)
            if pid in seen:
                raise ValueError(f"passages: duplicate id {pid!r} (position {i}); ids must be unique")
            seen.add(pid)

    passages_doc = f"Candidates, best first; at most {s.max_passages} (more: 413)"

    class RerankRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"query": "who wrote hamlet", "passages": [
                {"id": "a", "title": "Hamlet", "text": "Hamlet is a tragedy written by William Shakespeare."},
                {"id": "b", "title": "Paris", "text": "Paris is the capital of France."}]}]},
        )

        query: str = Field(min_length=1, max_length=text_limit)
        passages: list[PassageIn] = Field(min_length=1, description=passages_doc)

        @model_validator(mode="after")
        def _unique(self) -> "RerankRequest":
            unique_ids(self.passages)
            return self

    class AnswerRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"question": "who wrote hamlet", "passages": [
                {"title": "Hamlet", "text": "Hamlet is a tragedy written by William Shakespeare."}]}]},
        )

        question: str = Field(min_length=1, max_length=text_limit)
        passages: Annotated[list[PassageIn], Field(min_length=1)] | None = Field(
            None, description=passages_doc + "; omit to search the server's index"
        )
        top_n: int | None = Field(
            None, ge=1, le=s.max_passages,
            description=f"Candidates the reranker sees: the first top_n given, or the index's top_n (default {s.top_n})",
        )
        task: Literal[KNOWN_TASKS] = Field("qa", description="Decides the generator's task line")  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _unique(self) -> "AnswerRequest":
            unique_ids(self.passages)
            return self

    return RerankRequest, AnswerRequest


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def _error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(status_code=status, content=body, headers=headers)


_KIND_OF_STATUS = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
                   413: "request_too_large", 422: "invalid_request_error"}


def _field_message(errors: Sequence[dict[str, Any]]) -> str:
    """``body.passages.2.text: String should have at most 4000 characters; ...``"""
    parts = []
    for err in errors[:10]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(parts) + more


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, _field_message(exc.errors()), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _KIND_OF_STATUS.get(exc.status_code, "invalid_request_error")
        return _error_response(exc.status_code, str(exc.detail), kind, getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(500, f"internal server error ({type(exc).__name__})", "server_error")


class _Guard:
    """ASGI middleware: cap the request body and log request metadata (never bodies).

    Neither FastAPI nor uvicorn caps body size, so an oversized body is refused here: at once
    from its Content-Length, or while it streams in (chunked uploads).
    """

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        sizes = {"in": 0, "out": 0, "status": 0}
        too_large = f"request body larger than {self.max_body_bytes} bytes"

        async def logged_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                sizes["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        async def counted_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                sizes["in"] += len(message.get("body", b""))
                if sizes["in"] > self.max_body_bytes:
                    raise HTTPException(413, too_large)  # answered by the app's handler
            return message

        try:
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                await _error_response(413, too_large, "request_too_large")(scope, receive, logged_send)
            else:
                await self.app(scope, counted_receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.info(
                "%s %s %s -> %d in %.1f ms (request %s B, response %d B)", client[0], scope.get("method"),
                scope.get("path"), sizes["status"], 1000 * (time.perf_counter() - start),
                declared or sizes["in"], sizes["out"],
            )


# ---------------------------------------------------------------- the batched work


@dataclass
class _Work:
    kind: Literal["rerank", "answer"]
    example: Example
    retrieve_top_n: int | None = None  # search the index for this many candidates first


@dataclass
class _Outcome:
    example: Example  # with the passages the reranker saw
    selection: Selection
    answer: str | None


@dataclass
class _Worker:
    """The blocking part of a batch: retrieve, rerank all, generate for the answer requests."""

    reranker: Any
    generator: Any
    retriever: Any = None

    def __call__(self, batch: list[_Work]) -> list[_Outcome]:
        examples = [w.example for w in batch]
        by_top_n: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(batch):
            if w.retrieve_top_n is not None:
                by_top_n[w.retrieve_top_n].append(i)
        for top_n, members in by_top_n.items():
            for i, ex in zip(members, with_passages([examples[i] for i in members], self.retriever, top_n)):
                examples[i] = ex
        selections = self.reranker.select(examples)  # one batched reranker pass for every request
        usable = [i for i, w in enumerate(batch) if w.kind == "answer" and selections[i].error is None]
        answers = self.generator.answer([examples[i] for i in usable], [selections[i] for i in usable])
        answer_of = dict(zip(usable, answers))
        return [_Outcome(ex, sel, answer_of.get(i)) for i, (ex, sel) in enumerate(zip(examples, selections))]


async def _run(request: Request, work: _Work) -> _Outcome:
    """Submit ``work`` to the batcher; turn its failures into HTTP errors."""
    batcher: MicroBatcher | None = getattr(request.app.state, "batcher", None)
    settings: ServeSettings = request.app.state.settings
    if batcher is None:  # the ASGI server ran without lifespan events, so no worker started
        raise ApiError(503, "the batch worker is not running (was the server started with lifespan off?)",
                       "unavailable")
    try:
        return await batcher.submit(work, timeout=settings.timeout_s)
    except QueueFullError as err:
        raise ApiError(503, str(err), "overloaded", {"Retry-After": str(err.retry_after_s)}) from None
    except ServerClosingError as err:
        raise ApiError(503, str(err), "unavailable", {"Retry-After": "5"}) from None
    except RequestTimeoutError as err:
        raise ApiError(504, f"request timed out: {err} (server timeout_s={settings.timeout_s:g})", "timeout") from None
    except BatchItemError as err:
        raise ApiError(502, f"model call failed: {str(err)[:500]}", "model_error") from None


def _passages(given: Sequence[Any]) -> list[Passage]:
    return [Passage(id=p.id if p.id is not None else str(i), title=p.title, text=p.text)
            for i, p in enumerate(given, start=1)]


def _check_count(given: Sequence[Any] | None, settings: ServeSettings) -> None:
    if given is not None and len(given) > settings.max_passages:
        raise ApiError(413, f"body.passages: {len(given)} passages, more than this server's limit of "
                            f"{settings.max_passages} per request", "request_too_large")


def _api_key_dependency(expected: str) -> Any:
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")
    want = expected.encode()

    async def require_key(
        creds: HTTPAuthorizationCredentials | None = Security(bearer), key: str | None = Security(header)
    ) -> None:
        given = [c for c in (creds.credentials if creds else None, key) if c]
        # compare_digest: the time taken does not tell how much of a guess was right
        if not any(hmac.compare_digest(c.encode(), want) for c in given):
            reason = "invalid API key" if given else "missing API key"
            raise ApiError(401, f"{reason}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                           "authentication_error", {"WWW-Authenticate": "Bearer"})

    return Depends(require_key)


# ---------------------------------------------------------------- the app


def create_app(reranker: Any, generator: Any, retriever: Any = None, settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app serving ``reranker`` and ``generator``.

    Args:
        reranker: Anything with ``select(examples) -> list[Selection]`` (typically
            :class:`~dynamicrag.rerank.DynamicReranker`).
        generator: A :class:`~dynamicrag.generate.Generator` (``answer(examples, selections)``).
        retriever: An index (:func:`~dynamicrag.retrieve.load_index`) searched when
            ``/v1/answer`` gets no passages; None: passages are required.
        settings: Limits, batching and the API key; default :class:`ServeSettings`.

    Returns:
        The app; run it with uvicorn, :func:`serve_command`, or
        :class:`~dynamicrag.serve.BackgroundServer` in tests.
    """
    settings = settings or ServeSettings()
    model_name = settings.model_name or getattr(getattr(generator, "backend", None), "model", None) or "unknown"
    RerankRequest, AnswerRequest = _request_models(settings)
    work = _Worker(reranker, generator, retriever)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = MicroBatcher(work, max_batch=settings.max_batch, wait_s=settings.batch_wait_ms / 1000,
                               max_queue=settings.max_queue, name="dynamicrag-serve")
        await batcher.start()
        app.state.batcher = batcher
        logger.info("serving %s (max_batch %d, max_queue %d, index %s, API key %s)", model_name, settings.max_batch,
                    settings.max_queue, "yes" if retriever is not None else "no", "on" if settings.api_key else "off")
        try:
            yield
        finally:
            await batcher.stop()  # pending requests get 503

    app = FastAPI(
        title="dynamicrag",
        summary="DynamicRAG: an LLM reranker chooses which passages, and how many, then the generator answers.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(_Guard, max_body_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    guarded = [_api_key_dependency(settings.api_key)] if settings.api_key else []
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text} for code, text in {
            401: "Missing or invalid API key", 413: "Too many passages or too large a body",
            422: "Invalid input; the message names the field", 502: "The model call failed",
            503: "Queue full (see Retry-After) or shutting down", 504: "No result within the timeout",
        }.items()
    }

    @app.post("/v1/rerank", response_model=RerankResponse, dependencies=guarded, responses=errors)
    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:  # type: ignore[valid-type]
        """Choose the passages the query needs, in order (``k`` may be 0)."""
        _check_count(body.passages, settings)
        example = Example(id="rerank", question=body.query, passages=_passages(body.passages))
        out = await _run(request, _Work("rerank", example))
        sel = out.selection
        return RerankResponse(
            selected=[example.passages[i - 1].id for i in sel.ids], positions=sel.ids, k=sel.k,
            raw=sel.raw, well_formed=sel.well_formed, error=sel.error,
        )

    @app.post("/v1/answer", response_model=AnswerResponse, dependencies=guarded, responses=errors)
    async def answer(body: AnswerRequest, request: Request) -> AnswerResponse:  # type: ignore[valid-type]
        """Rerank the given passages (or the index's top ``top_n``) and answer from the chosen ones."""
        _check_count(body.passages, settings)
        example = Example(id="answer", question=body.question, task=body.task)
        if body.passages is None:
            if retriever is None:
                raise ApiError(422, "body.passages: required, since this server has no index "
                                    "(start it with an index to answer from retrieved passages)")
            job = _Work("answer", example, retrieve_top_n=body.top_n or settings.top_n)
        else:
            given = _passages(body.passages)[: body.top_n] if body.top_n else _passages(body.passages)
            job = _Work("answer", example.model_copy(update={"passages": given}))
        out = await _run(request, job)
        sel = out.selection
        return AnswerResponse(
            answer=out.answer,
            selected=[PassageOut(id=p.id, title=p.title, text=p.text) for p in (out.example.passages[i - 1] for i in sel.ids)],
            k=sel.k, raw=sel.raw, well_formed=sel.well_formed, error=sel.error, retrieved=body.passages is None,
        )

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health(request: Request) -> Any:
        """Liveness and load: 200 while the batch worker runs, else 503."""
        batcher: MicroBatcher | None = getattr(request.app.state, "batcher", None)
        ok = batcher is not None and batcher.alive
        report = HealthResponse(
            ok=ok, model=model_name, queue_depth=batcher.depth if batcher else 0, max_queue=settings.max_queue,
            in_flight=batcher.in_flight if batcher else 0, index=retriever is not None,
            batches=batcher.stats.to_json() if batcher else {},
        )
        return report if ok else JSONResponse(status_code=503, content=report.model_dump())

    return app


# ---------------------------------------------------------------- the command


SERVE_OPTIONS_HELP: dict[str, str] = {
    "host": "Interface to bind; loopback by default (0.0.0.0 serves other machines: set an API key)",
    "port": "TCP port",
    "config": "What plays each role (models, adapters, backends) and the reranker's settings",
    "index_dir": "Index (from `dynamicrag index`) searched when /v1/answer gets no passages",
    **{f.name: f.metadata["help"] for f in fields(ServeSettings) if f.name not in ("model_name", "max_body_bytes")},
}
"""Help of each :func:`serve_command` parameter, for the typer command (written once here)."""

SERVE_DEFAULTS: dict[str, Any] = {"top_n": None, "constrained": True}
"""The server's defaults for what neither the options nor the reranker adapter's manifest set
(:func:`dynamicrag.build.resolve_config`): constrained decoding, as the base model is not
trained as a reranker; ``top_n`` left to :class:`ServeSettings`."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(
    host: str = "127.0.0.1",
    port: int = 8000,
    config: Any = None,
    index_dir: str | Path | None = None,
    api_key: str | None = None,
    max_passages: int = ServeSettings.max_passages,
    max_text_chars: int = ServeSettings.max_text_chars,
    max_queue: int = ServeSettings.max_queue,
    timeout_s: float = ServeSettings.timeout_s,
    max_batch: int = ServeSettings.max_batch,
    batch_wait_ms: float = ServeSettings.batch_wait_ms,
    top_n: int | None = None,
) -> None:
    """Load the models (and the index), then serve until interrupted (Ctrl-C).

    Args: see :data:`SERVE_OPTIONS_HELP`. ``config`` is a :class:`~dynamicrag.build.PipelineConfig`
    (None: every default), resolved with :data:`SERVE_DEFAULTS`; ``top_n`` falls back to its
    ``top_n``; ``api_key`` to ``$DYNAMICRAG_API_KEY`` (which keeps the key out of the process list).

    Raises:
        ValueError: A bad option (unknown backend, adapter, prompt style, limits).
        NotAnIndexError: ``index_dir`` is not an index.
    """
    from dynamicrag.build import PipelineConfig, build_pipeline, resolve_config
    from dynamicrag.retrieve import load_index

    config = resolve_config(config or PipelineConfig(), **SERVE_DEFAULTS)
    settings = ServeSettings(
        api_key=api_key or os.environ.get(API_KEY_ENV) or None, max_passages=max_passages,
        max_text_chars=max_text_chars, max_queue=max_queue, timeout_s=timeout_s, max_batch=max_batch,
        batch_wait_ms=batch_wait_ms, top_n=top_n or config.top_n,
    )
    if not _is_loopback(host) and settings.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    retriever = load_index(index_dir) if index_dir else None
    pipeline = build_pipeline(config)
    app = create_app(pipeline.reranker, pipeline.generator, retriever, settings)
    # After Ctrl-C, running requests get up to one timeout to finish; then the rest get 503.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=int(timeout_s) + 1)
