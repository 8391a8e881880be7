"""Rerankers: each turns examples with candidate passages into Selections (ids, in order).

``dynamic`` is the method; ``none``, ``topk``, ``pointwise`` and ``listwise`` are the baselines
of the paper's comparisons, run with the same generator.
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


RERANKERS = ("dynamic", "none", "topk", "pointwise", "listwise")


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
        scorer: Pointwise scorer (see :func:`dynamicrag.rerank.pointwise.make_scorer`).
        max_new_tokens: Cap on an LLM reranker's output (None: the reranker's default).
        passage_words: Dynamic reranker: words shown of each passage (None: all).
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
    if backend is None:
        raise ValueError(f"the {kind} reranker needs an LLM backend")
    if kind == "listwise":
        from dynamicrag.rerank.listwise import ListwiseReranker

        return ListwiseReranker(backend, k=k, window=window or 20, stride=stride, max_new_tokens=max_new_tokens)
    return DynamicReranker(
        backend, style or load_style("default"), window=window or 40,
        max_new_tokens=max_new_tokens or 100, constrained=constrained, passage_words=passage_words,
    )


__all__ = [
    "RERANKERS", "DynamicReranker", "ListwiseReranker", "PointwiseReranker", "Reranker", "TopKReranker",
    "make_reranker", "parse_selection",
]


def __getattr__(name: str) -> Any:
    # The baselines import sentence-transformers / extra model code: load them only when used.
    if name == "PointwiseReranker":
        from dynamicrag.rerank.pointwise import PointwiseReranker

        return PointwiseReranker
    if name == "ListwiseReranker":
        from dynamicrag.rerank.listwise import ListwiseReranker

        return ListwiseReranker
    raise AttributeError(name)
