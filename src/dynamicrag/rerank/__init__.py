"""Rerankers: each turns examples with candidate passages into Selections (ids, in order)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dynamicrag.rerank.dynamic import DynamicReranker
from dynamicrag.rerank.parse import parse_selection
from dynamicrag.rerank.topk import TopKReranker
from dynamicrag.schema import Example, Selection


class Reranker(Protocol):
    def select(self, examples: Sequence[Example]) -> list[Selection]:
        """One Selection per example; ids are 1-based positions into ``example.passages``."""
        ...


__all__ = ["DynamicReranker", "Reranker", "TopKReranker", "parse_selection"]
