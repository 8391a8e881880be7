"""Failure isolation: run a batch; if it fails, run its items one by one, so one bad item
fails alone and never stops a stage.

Every batched stage calls a model (or a teacher, a judge, a server) on many items at once. An
exception of that call says only that *some* item could not be handled. :func:`run_isolated`
then retries each item alone, and an item that fails even alone gets the result its caller
builds from the exception (a record carrying the error, a failure marker); it is never dropped.
The pipeline, the label, sample and reward stages, the judge and the HTTP micro-batchers all
isolate failures through this one function.

Example:
    >>> def double(xs):
    ...     if "bad" in xs:
    ...         raise ValueError("cannot double 'bad'")
    ...     return [x * 2 for x in xs]
    >>> run_isolated(double, [1, "bad", 3], lambda item, err: f"failed: {err}")
    [2, "failed: cannot double 'bad'", 6]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def error_text(err: BaseException) -> str:
    """How a failure is recorded: ``"ValueError: what went wrong"``."""
    return f"{type(err).__name__}: {err}"


def run_isolated(
    process: Callable[[list[T]], Sequence[R]],
    items: Sequence[T],
    on_failure: Callable[[T, Exception], R],
    *,
    what: str = "item",
    log: logging.Logger = logger,
) -> list[R]:
    """``process(items)``, or each item alone when the batch fails.

    Args:
        process: Maps a list of items to one result per item, in order. Returning another
            number of results counts as a failure of the batch.
        items: The batch.
        on_failure: The result of an item that fails even alone, built from the item and the
            exception (e.g. a record with its ``error`` set).
        what: What an item is, for the log (``"example"``, ``"judge prompt"``).
        log: Where the warnings go (the caller's module logger).

    Returns:
        One result per item, in input order.
    """
    items = list(items)
    try:
        results = list(process(items))
        if len(results) != len(items):
            raise RuntimeError(f"{len(results)} results for {len(items)} {what}s")
        return results
    except Exception as err:  # noqa: BLE001 - a model is a boundary: isolate the failing item below
        if len(items) == 1:
            log.warning("%s failed: %s", what, error_text(err))
            return [on_failure(items[0], err)]
        if not items:
            raise
        log.warning("a batch of %d %ss failed (%s); retrying them one by one", len(items), what, error_text(err))
        return [run_isolated(process, [item], on_failure, what=what, log=log)[0] for item in items]


__all__ = ["error_text", "run_isolated"]
