"""The batched work of ``dynamicrag serve``: what one micro-batch runs (retrieve, rerank every
request, answer the answer requests) and how a request waits for its result.

Both HTTP servers (this one and :mod:`dynamicrag.serve.openai_server`) queue their requests in
the one :class:`~dynamicrag.serve.batcher.MicroBatcher` (bounded queue, per-request timeout,
failure isolation) and turn its failures into HTTP errors with :func:`submit`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dynamicrag.isolation import error_text
from dynamicrag.pipeline import Outcome, Pipeline, with_passages
from dynamicrag.schema import Example, Passage
from dynamicrag.serve.batcher import (
    BatchItemError,
    MicroBatcher,
    QueueFullError,
    RequestTimeoutError,
    ServerClosingError,
)
from dynamicrag.serve.errors import ApiError


@dataclass
class Work:
    """One request's share of a batch."""

    kind: Literal["rerank", "answer"]
    example: Example
    retrieve_top_n: int | None = None  # search the index for this many candidates first
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class BatchWork:
    """The blocking part of a batch, run by the micro-batcher's thread: retrieve for the requests
    without passages, rerank all of them in one call, answer the answer requests in one call.

    Args:
        pipeline: The reranker and the generator (and the index searched for requests without
            passages).
    """

    pipeline: Pipeline

    def __call__(self, batch: list[Work]) -> list[Outcome]:
        start = time.perf_counter()
        examples = [w.example for w in batch]
        by_top_n: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(batch):
            if w.retrieve_top_n is not None:
                by_top_n[w.retrieve_top_n].append(i)
        for top_n, members in by_top_n.items():
            for i, ex in zip(members, with_passages([examples[i] for i in members], self.pipeline.retriever, top_n)):
                examples[i] = ex
        outcomes = self.pipeline.rerank_and_answer(
            examples, answer=[w.kind == "answer" for w in batch], timings={"retrieve": time.perf_counter() - start}
        )
        for w, outcome in zip(batch, outcomes):
            outcome.timings = {**outcome.timings, "queue": start - w.arrived, "batch_size": len(batch)}
        return outcomes


def given_passages(given: Sequence[Any]) -> list[Passage]:
    """The passages of a request, their ids defaulting to their 1-based position."""
    return [Passage(id=p.id if p.id is not None else str(i), title=p.title, text=p.text)
            for i, p in enumerate(given, start=1)]


def model_error(err: BaseException) -> ApiError:
    """A request whose model call raised, even alone: 502."""
    return ApiError(502, f"model call failed: {error_text(err)[:500]}", "model_error")


async def submit(
    batcher: MicroBatcher | None, item: Any, timeout_s: float, failed: Callable[[BaseException], ApiError] = model_error
) -> Any:
    """Queue ``item`` in ``batcher`` and wait for its result; its failures become HTTP errors.

    Args:
        batcher: The app's batcher (None: the server ran without lifespan events).
        item: What the batch function gets for this request.
        timeout_s: The request's deadline, queue wait included.
        failed: The error of a request whose own work raised (given the original exception).

    Raises:
        ApiError: 503 (queue full, with ``Retry-After``; shutting down; no worker), 504 (timeout),
            or ``failed``'s.
    """
    if batcher is None:  # the ASGI server ran without lifespan events, so no worker started
        raise ApiError(503, "the batch worker is not running (was the server started with lifespan off?)",
                       "unavailable")
    try:
        return await batcher.submit(item, timeout=timeout_s)
    except QueueFullError as err:
        raise ApiError(503, str(err), "overloaded", {"Retry-After": str(err.retry_after_s)}) from None
    except ServerClosingError as err:
        raise ApiError(503, str(err), "unavailable", {"Retry-After": "5"}) from None
    except RequestTimeoutError as err:
        raise ApiError(504, f"request timed out: {err} (server timeout_s={timeout_s:g})", "timeout") from None
    except BatchItemError as err:
        raise failed(err.__cause__ or err) from None
