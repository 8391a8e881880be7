"""Fixed-k selection: the first k passages in retrieval order (k = 0: no retrieval)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dynamicrag.schema import Example, Selection


@dataclass
class TopKReranker:
    """Keep the retriever's top ``k`` passages; the fixed-k baseline of the paper's tables."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")

    def select(self, examples: Sequence[Example]) -> list[Selection]:
        return [Selection(ids=list(range(1, min(self.k, len(ex.passages)) + 1))) for ex in examples]
