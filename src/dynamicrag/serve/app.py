"""``dynamicrag serve``: the reranker and the generator over HTTP, with micro-batching.

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /v1/rerank`` ``{query, passages: [{id?, title?, text}]}`` -> the ids the dynamic
  reranker chose, in its order, with ``k``, the raw output and whether it was well formed.
- ``POST /v1/answer`` ``{question, passages?, top_n?, task?}`` -> the answer and the passages
  it was given; without ``passages`` the server's index is searched for the top ``top_n``.
- ``GET /health`` -> model, queue depth, batch statistics.
- ``GET /`` -> a small web page that asks ``/v1/answer`` and shows the answer, the chosen and
  the unchosen passages, k and the timings (``serve/static``, no external resources).

Concurrent requests are gathered into one reranker and one generator call per batch
(:class:`~dynamicrag.serve.batcher.MicroBatcher` running :class:`~dynamicrag.serve.work.BatchWork`),
run in a thread so the event loop keeps answering. Errors are JSON, ``{"error": {"message", "type", "code"}}``: 401 bad or missing API
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

Modules: :mod:`.settings` (limits), :mod:`.schemas` (request and response bodies),
:mod:`.errors` (JSON errors, the body guard), :mod:`.work` (the batched work), this one (the
app), :mod:`.command` (``dynamicrag serve``), :mod:`.background` (a server in a thread).
"""


# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# run time, and the request models are local classes (they carry the configured limits).
import contextlib
import hmac
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from dynamicrag.pipeline import Pipeline
from dynamicrag.schema import Example
from dynamicrag.serve.batcher import MicroBatcher
from dynamicrag.serve.errors import ApiError, BodyGuard, install_error_handlers
from dynamicrag.serve.schemas import (
    AnswerResponse,
    ErrorBody,
    HealthResponse,
    PassageOut,
    RerankResponse,
    Timings,
    request_models,
)
from dynamicrag.serve.settings import ServeSettings
from dynamicrag.serve.work import BatchWork, Work, given_passages, submit

try:
    from fastapi import Depends, FastAPI, Request, Security
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from fastapi.staticfiles import StaticFiles
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("`dynamicrag serve` needs `pip install dynamicrag[serve]`") from e

logger = logging.getLogger(__name__)


def _milliseconds(timings: dict[str, float]) -> dict[str, float]:
    """A batch's timings (seconds, :class:`~dynamicrag.pipeline.Outcome`) as :class:`Timings` fields."""
    ms = {f"{step}_ms": round(1000 * timings[step], 1) for step in ("queue", "retrieve", "rerank", "generate")}
    return {**ms, "batch_size": int(timings["batch_size"])}


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
        The app; run it with uvicorn, :func:`~dynamicrag.serve.command.serve_command`, or
        :class:`~dynamicrag.serve.BackgroundServer` in tests.
    """
    settings = settings or ServeSettings()
    model_name = settings.model_name or getattr(getattr(generator, "backend", None), "model", None) or "unknown"
    RerankRequest, AnswerRequest = request_models(settings)
    work = BatchWork(Pipeline(reranker, generator, retriever))

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
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
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
        example = Example(id="rerank", question=body.query, passages=given_passages(body.passages))
        out = await submit(getattr(request.app.state, "batcher", None), Work("rerank", example), settings.timeout_s)
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
            job = Work("answer", example, retrieve_top_n=body.top_n or settings.top_n)
        else:
            given = given_passages(body.passages)[: body.top_n] if body.top_n else given_passages(body.passages)
            job = Work("answer", example.model_copy(update={"passages": given}))
        out = await submit(getattr(request.app.state, "batcher", None), job, settings.timeout_s)
        sel = out.selection
        candidates = [PassageOut(id=p.id, title=p.title, text=p.text) for p in out.example.passages]
        return AnswerResponse(
            answer=out.answer, selected=[candidates[i - 1] for i in sel.ids],
            k=sel.k, raw=sel.raw, well_formed=sel.well_formed, error=sel.error, retrieved=body.passages is None,
            candidates=candidates, positions=sel.ids,
            timings=Timings(**_milliseconds(out.timings), total_ms=round(1000 * (time.perf_counter() - job.arrived), 1)),
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

    _add_page(app)
    return app



_STATIC = importlib.resources.files("dynamicrag.serve") / "static"
# The page loads only its own script and style, and talks only to this server.
_PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
             "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


def _add_page(app: FastAPI) -> None:
    """``GET /``: the web page (``static/index.html``); its script and style under ``/static``.

    The page itself needs no key: it asks for one, keeps it in the browser's session storage
    and sends it as ``Authorization: Bearer`` with each ``/v1/answer`` request.
    """
    page = (_STATIC / "index.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")

