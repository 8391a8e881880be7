"""The request and response bodies of ``dynamicrag serve`` (pydantic models: FastAPI validates
requests against them and publishes them at ``/docs``)."""

# No `from __future__ import annotations`: the request models are local classes whose
# annotations pydantic (and FastAPI) read at run time.
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dynamicrag.schema import KNOWN_TASKS
from dynamicrag.serve.settings import MAX_ID_CHARS, ServeSettings


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


class Timings(BaseModel):
    """Where a request's time went. The model calls are made for a whole micro-batch, so
    ``retrieve_ms``, ``rerank_ms`` and ``generate_ms`` are those of the batch the request was in
    (``batch_size`` requests shared them)."""

    queue_ms: float = Field(description="Waiting for its batch to start")
    retrieve_ms: float = Field(description="Searching the index (0 when the passages were given)")
    rerank_ms: float = Field(description="The reranker call choosing the passages")
    generate_ms: float = Field(description="The generator call writing the answers")
    total_ms: float = Field(description="From the request's arrival to its answer")
    batch_size: int = Field(description="Requests in the batch that shared these model calls")


class AnswerResponse(BaseModel):
    answer: str | None = Field(description="The generated answer; null when the reranker output was unusable")
    selected: list[PassageOut] = Field(description="The passages the generator was given, in order")
    k: int
    raw: str = Field(description="The reranker's raw output")
    well_formed: bool
    error: str | None
    retrieved: bool = Field(description="The candidates came from the server's index")
    candidates: list[PassageOut] = Field(description="Every passage the reranker saw, in retrieval (or given) order")
    positions: list[int] = Field(description="1-based positions of the selected passages in candidates")
    timings: Timings


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


def request_models(s: ServeSettings) -> tuple[type[BaseModel], type[BaseModel]]:
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

