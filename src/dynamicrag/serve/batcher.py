"""Micro-batching for the HTTP server: concurrent requests share one model call.

Requests wait in a bounded :class:`asyncio.Queue`; one worker task takes up to ``max_batch``
of them (waiting at most ``wait_s`` for the batch to fill) and runs ``process`` on the whole
batch in a thread, so the event loop keeps accepting and answering requests meanwhile. While a
batch runs, the next requests queue up and go together into the next call: throughput grows
with concurrency up to ``max_batch``.

Written here rather than taken from a library: the serving libraries that batch (vLLM, TGI,
Ray Serve) batch at the model or bring a whole runtime; this needs batching of a Python
callable inside one FastAPI process, with a bounded queue, per-request timeouts and per-item
failure isolation.

Example:
    >>> batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=8)
    >>> await batcher.start()  # doctest: +SKIP
    >>> await batcher.submit(21, timeout=5)  # doctest: +SKIP
    42
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dynamicrag.isolation import run_isolated

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The queue holds ``max_queue`` requests already; the caller should retry later."""

    def __init__(self, max_queue: int, retry_after_s: int) -> None:
        super().__init__(f"the server queue is full ({max_queue} requests waiting); retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class ServerClosingError(RuntimeError):
    """The batcher is stopping (or stopped): the request was not, or will not be, run."""


class RequestTimeoutError(TimeoutError):
    """No result within the request's timeout (queue wait included)."""


class BatchItemError(RuntimeError):
    """``process`` raised for this item, even when run alone; ``__cause__`` is the original."""


@dataclass
class _Failure:
    """``process`` raised for an item (kept apart from results, which may be anything)."""

    error: BaseException


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What the worker has done so far (shown by ``/health`` and the load test)."""

    batches: int = 0
    items: int = 0
    failed_items: int = 0
    largest_batch: int = 0
    seconds_per_batch: float = 0.0  # moving average, used to suggest Retry-After

    def to_json(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "failed_items": self.failed_items,
            "largest_batch": self.largest_batch,
            "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
            "seconds_per_batch": round(self.seconds_per_batch, 3),
        }


class MicroBatcher:
    """Gather concurrent submissions into batches for one blocking ``process`` call each.

    Args:
        process: Blocking function from a list of items to one result per item, in order.
            It runs in a worker thread, one batch at a time. If it raises on a batch of
            several items, each item is retried alone, so one bad item fails only itself
            (as :meth:`dynamicrag.pipeline.Pipeline.run` does).
        max_batch: Most items per ``process`` call.
        wait_s: Longest wait for a batch to fill once its first item is there.
        max_queue: Most items waiting (not counting the running batch); more are refused
            with :class:`QueueFullError` rather than let the queue grow.
        name: Name of the worker thread (shows in logs and thread dumps).
    """

    def __init__(
        self,
        process: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int = 8,
        wait_s: float = 0.01,
        max_queue: int = 64,
        name: str = "dynamicrag-batch",
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch} and {max_queue}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self.process = process
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue
        self.name = name
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: list[_Job] = []
        self._closing = False

    @property
    def depth(self) -> int:
        """Items waiting in the queue (not counting the batch being run)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def in_flight(self) -> int:
        """Items of the batch being run now."""
        return len(self._running)

    @property
    def alive(self) -> bool:
        """True while the worker runs and accepts work."""
        return self._worker is not None and not self._worker.done() and not self._closing

    async def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("this batcher was started already")
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        # One thread: batches run one after another, and the model is never entered twice.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._worker = asyncio.create_task(self._run(), name=self.name)
        self._worker.add_done_callback(self._worker_done)

    async def submit(self, item: Any, timeout: float | None = None) -> Any:
        """Queue ``item`` and wait for its result.

        Args:
            item: Handed to ``process`` inside a batch.
            timeout: Seconds from now (queue wait included); None waits as long as it takes.

        Returns:
            ``process``'s result for this item.

        Raises:
            QueueFullError: ``max_queue`` items are waiting already.
            ServerClosingError: The batcher is stopping, or was not started.
            RequestTimeoutError: No result within ``timeout``; the item is dropped if it had
                not started.
            BatchItemError: ``process`` raised for this item.
        """
        if self._queue is None or not self.alive:
            raise ServerClosingError("the server is shutting down" if self._closing else "the batch worker is not running")
        job = _Job(item, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFullError(self.max_queue, self.retry_after_s()) from None
        try:
            # shield: the timeout must not cancel the job's future under the worker's feet
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError:
            job.future.cancel()  # still queued: the worker skips it; running: its result is dropped
            raise RequestTimeoutError(f"no result within {timeout:g}s") from None
        finally:
            if not job.future.done():  # the client went away (request task cancelled)
                job.future.cancel()

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained by one batch's worth (at least 1)."""
        batches_ahead = self.depth / self.max_batch + 1
        return max(1, math.ceil(self.stats.seconds_per_batch * batches_ahead))

    async def stop(self) -> None:
        """Stop the worker and fail every queued or running request with ServerClosingError.

        A running ``process`` call cannot be interrupted; its thread finishes in the
        background and its results are dropped.
        """
        self._closing = True
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        pending = list(self._running)
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(ServerClosingError("the server shut down before this request was answered"))
        self._running = []
        if pending:
            logger.warning("%s: shut down with %d requests unanswered", self.name, len(pending))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _worker_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: the batch worker died", self.name, exc_info=task.exception())

    async def _next_batch(self) -> list[_Job]:
        """The next batch: the first waiting job, then whatever comes within ``wait_s``."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        self._running = batch  # from now on stop() sees (and fails) these jobs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        self._running = [job for job in batch if not job.future.done()]  # timed out or abandoned: skip
        return self._running

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            start = time.monotonic()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._process_isolated, [j.item for j in batch])
            except asyncio.CancelledError:
                raise  # stop(): it fails self._running
            except Exception as err:  # noqa: BLE001 - the worker must outlive any batch
                logger.exception("%s: batch of %d failed outside process()", self.name, len(batch))
                outcomes = [_Failure(err)] * len(batch)
            elapsed = time.monotonic() - start
            self._account(len(batch), elapsed, outcomes)
            for job, outcome in zip(batch, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, _Failure):
                    error = BatchItemError(f"{type(outcome.error).__name__}: {outcome.error}")
                    error.__cause__ = outcome.error
                    job.future.set_exception(error)
                else:
                    job.future.set_result(outcome)
            self._running = []
            logger.debug(
                "%s: batch of %d in %.3fs (oldest waited %.3fs)", self.name, len(batch), elapsed,
                start - min(j.enqueued for j in batch),
            )

    def _account(self, size: int, elapsed: float, outcomes: Sequence[Any]) -> None:
        s = self.stats
        s.batches += 1
        s.items += size
        s.failed_items += sum(isinstance(o, _Failure) for o in outcomes)
        s.largest_batch = max(s.largest_batch, size)
        s.seconds_per_batch = elapsed if s.batches == 1 else 0.8 * s.seconds_per_batch + 0.2 * elapsed

    def _process_isolated(self, items: list[Any]) -> list[Any]:
        """``process(items)``; on failure, each item alone, so only the bad ones fail."""
        return run_isolated(self.process, items, lambda item, err: _Failure(err), what=f"{self.name} item", log=logger)
