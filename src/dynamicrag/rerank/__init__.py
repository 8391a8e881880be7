"""Rerankers: each turns examples with candidate passages into Selections (ids, in order).

``dynamic`` is the method; ``none``, ``topk``, ``pointwise`` and ``listwise`` are the baselines
of the paper's comparisons, run with the same generator; ``adaptive-k`` and ``threshold`` are
training-free dynamic-k baselines (a cut of the score-sorted candidates); ``gold`` selects the
passages the data marks as gold (a ceiling, not a method).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from dynamicrag.llm.base import Backend
from dynamicrag.prompts import PromptStyle, load_style
from dynamicrag.rerank.dynamic import DynamicReranker
from dynamicrag.rerank.parse import parse_selection
from dynamicrag.rerank.topk import TopKReranker
from dynamicrag.schema import Example, Selection


class Reranker(Protocol):
    def select(self, examples: Sequence[Example]) -> list[Selection]:
        """One Selection per example; ids are 1-based positions into ``example.passages``."""
        ...


RERANKERS = ("dynamic", "none", "topk", "pointwise", "listwise", "adaptive-k", "threshold", "gold")


def make_reranker(
    kind: str,
    backend: Backend | None = None,
    style: PromptStyle | None = None,
    *,
    k: int = 5,
    window: int | None = None,
    stride: int = 10,
    constrained: bool = False,
    scorer: str = "embedding",
    max_new_tokens: int | None = None,
    passage_words: int | None = None,
    buffer: int = 0,
    threshold: float | None = None,
    max_drop: float | None = None,
    order_by: Any = None,
    continue_bias: float = 0.0,
) -> Any:
    """Build a reranker by name: the one place the CLI and the benchmark runner turn options
    into a reranker.

    Args:
        kind: One of :data:`RERANKERS`.
        backend: The LLM for ``dynamic`` and ``listwise``.
        style: Prompt style of the dynamic reranker.
        k: Passages kept by ``topk``, ``pointwise`` and ``listwise``.
        window: Passages per LLM call (dynamic: 40, listwise: 20 when None).
        stride: Listwise window step.
        constrained: Dynamic reranker decoding constrained to the id grammar.
        scorer: Scorer of ``pointwise``, ``adaptive-k`` and ``threshold`` (see
            :func:`dynamicrag.rerank.pointwise.make_scorer`; ``retriever``: the retriever's scores).
        max_new_tokens: Cap on an LLM reranker's output (None: the reranker's default).
        passage_words: Dynamic reranker: words shown of each passage (None: all).
        buffer: ``adaptive-k``: extra passages kept below the largest score gap.
        threshold: ``threshold``: lowest score kept.
        max_drop: ``threshold``: largest drop from the top score kept, as a share of it.
        order_by: ``dynamic``: a scorer, or a scorer's name (as ``scorer``), that orders the
            candidates before the reranker reads them; None or ``"none"``: the retriever's order.
        continue_bias: ``dynamic``: added to the logit of going on after an id (see
            :class:`DynamicReranker`).
    """
    if kind not in RERANKERS:
        raise ValueError(f"unknown reranker {kind!r}; choose one of {sorted(RERANKERS)}")
    if kind == "none":
        return TopKReranker(0)
    if kind == "topk":
        return TopKReranker(k)
    if kind == "pointwise":
        from dynamicrag.rerank.pointwise import PointwiseReranker, make_scorer

        return PointwiseReranker(make_scorer(scorer), k=k)
    if kind in ("adaptive-k", "threshold"):
        from dynamicrag.rerank.cutoff import AdaptiveKReranker, ThresholdReranker
        from dynamicrag.rerank.pointwise import make_scorer

        if kind == "adaptive-k":
            return AdaptiveKReranker(make_scorer(scorer), buffer=buffer)
        return ThresholdReranker(make_scorer(scorer), threshold=threshold, max_drop=max_drop)
    if kind == "gold":
        from dynamicrag.rerank.gold import GoldReranker

        return GoldReranker()
    if backend is None:
        raise ValueError(f"the {kind} reranker needs an LLM backend")
    if kind == "listwise":
        from dynamicrag.rerank.listwise import ListwiseReranker

        return ListwiseReranker(backend, k=k, window=window or 20, stride=stride, max_new_tokens=max_new_tokens)
    order = None if order_by in (None, "none") else order_by
    if isinstance(order, str):
        from dynamicrag.rerank.pointwise import make_scorer

        order = make_scorer(order)
    return DynamicReranker(
        backend, style or load_style("default"), window=window or 40,
        max_new_tokens=max_new_tokens or 100, constrained=constrained, passage_words=passage_words, order_by=order,
        continue_bias=continue_bias,
    )


__all__ = [
    "RERANKERS", "AdaptiveKReranker", "DynamicReranker", "GoldReranker", "ListwiseReranker", "PointwiseReranker",
    "Reranker", "ThresholdReranker", "TopKReranker", "make_reranker", "parse_selection",
]


def __getattr__(name: str) -> Any:
    # The baselines import sentence-transformers / extra model code: load them only when used.
    if name == "PointwiseReranker":
        from dynamicrag.rerank.pointwise import PointwiseReranker

        return PointwiseReranker
    if name == "ListwiseReranker":
        from dynamicrag.rerank.listwise import ListwiseReranker

        return ListwiseReranker
    if name in ("AdaptiveKReranker", "ThresholdReranker"):
        from dynamicrag.rerank import cutoff

        return getattr(cutoff, name)
    if name == "GoldReranker":
        from dynamicrag.rerank.gold import GoldReranker

        return GoldReranker
    raise AttributeError(name)
