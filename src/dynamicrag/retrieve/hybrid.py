"""Hybrid retrieval: BM25 and dense rankings fused by reciprocal rank (RRF).

Each side retrieves a deeper pool than asked (``max(k, pool)``) so a passage ranked modestly
by both can still rise to the top; the fused score of a passage is

    RRF(d) = sum over rankings r containing d of 1 / (k_rrf + rank_r(d)),   rank from 1

(Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and individual
rank learning methods", SIGIR 2009, with their k_rrf = 60). RRF ignores the raw scores, which
live on incomparable scales (BM25 vs cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynamicrag.retrieve.base import BaseRetriever, Hits, check_corpus
from dynamicrag.retrieve.bm25 import BM25Retriever
from dynamicrag.retrieve.dense import DenseRetriever
from dynamicrag.schema import Passage


def rrf_fuse(rankings: Sequence[Sequence[int]], k: int, k_rrf: float = 60.0) -> Hits:
    """Fuse rankings of corpus positions by reciprocal rank.

    Args:
        rankings: Each a list of positions, best first.
        k: Fused results wanted.
        k_rrf: The RRF constant (60 in Cormack et al. 2009).

    Returns:
        Up to ``k`` (position, fused score), best first. Ties go to the passage with the
        better best rank, then to the earlier ranking (BM25 in :class:`HybridRetriever`).
    """
    scores: dict[int, float] = {}
    best: dict[int, tuple[int, int]] = {}  # position -> (best rank, index of that ranking)
    for r, ranking in enumerate(rankings):
        for rank, pos in enumerate(ranking, start=1):
            scores[pos] = scores.get(pos, 0.0) + 1.0 / (k_rrf + rank)
            best[pos] = min(best.get(pos, (rank, r)), (rank, r))
    order = sorted(scores, key=lambda pos: (-scores[pos], best[pos]))
    return [(pos, scores[pos]) for pos in order[:k]]


class HybridRetriever(BaseRetriever):
    """BM25 + dense retrieval over one corpus, fused with reciprocal-rank fusion.

    Args:
        bm25: A BM25 retriever.
        dense: A dense retriever over the same passages, in the same order.
        k_rrf: RRF constant.
        pool: Passages each side retrieves per query before fusion (at least ``k``).

    References:
        Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and
        individual rank learning methods" (SIGIR 2009).
    """

    kind = "hybrid"

    def __init__(
        self, bm25: BM25Retriever, dense: DenseRetriever, k_rrf: float = 60, pool: int = 100
    ) -> None:
        if len(bm25) != len(dense) or any(
            a.id != b.id for a, b in zip(bm25.passages, dense.passages)
        ):
            raise ValueError(
                "BM25 and dense retrievers must index the same passages in the same order "
                f"(got {len(bm25)} and {len(dense)} passages)"
            )
        if k_rrf < 0 or pool < 1:
            raise ValueError(f"need k_rrf >= 0 and pool >= 1, got k_rrf={k_rrf}, pool={pool}")
        # The three corpus lists hold the same Passage objects, so the text is in memory once.
        super().__init__(bm25.passages)
        self.bm25 = bm25
        self.dense = dense
        self.k_rrf = k_rrf
        self.pool = pool

    @classmethod
    def build(
        cls,
        passages: Sequence[Passage],
        *,
        k_rrf: float = 60,
        pool: int = 100,
        bm25_options: dict[str, Any] | None = None,
        show_progress: bool = True,
        **dense_options: Any,
    ) -> HybridRetriever:
        """Build both sides over one corpus.

        Args:
            passages: The corpus (ids unique).
            k_rrf: RRF constant.
            pool: Per-side retrieval depth before fusion.
            bm25_options: Keyword arguments of :meth:`BM25Retriever.build` (k1, b, stemmer...).
            show_progress: Show progress bars.
            **dense_options: Keyword arguments of :meth:`DenseRetriever.build` (encoder,
                faiss_index, batch_size...).

        Returns:
            The retriever.
        """
        corpus = check_corpus(passages)
        bm25 = BM25Retriever.build(corpus, show_progress=show_progress, **(bm25_options or {}))
        dense = DenseRetriever.build(corpus, show_progress=show_progress, **dense_options)
        return cls(bm25, dense, k_rrf=k_rrf, pool=pool)

    def search_positions(self, queries: list[str], k: int) -> list[Hits]:
        depth = min(len(self), max(k, self.pool))
        sparse = self.bm25.search_positions(queries, depth)
        dense = self.dense.search_positions(queries, depth)
        # A BM25 score of 0 means no query term occurs in the passage: such passages are
        # left out of the BM25 ranking rather than ranked by an arbitrary tie order.
        return [
            rrf_fuse([[p for p, score in s if score > 0], [p for p, _ in d]], k, self.k_rrf)
            for s, d in zip(sparse, dense)
        ]

    def options(self) -> dict[str, Any]:
        return {
            "k_rrf": self.k_rrf,
            "pool": self.pool,
            "bm25": self.bm25.options(),
            "dense": self.dense.options(),
        }

    def counts(self) -> dict[str, Any]:
        return {**self.bm25.counts(), **self.dense.counts()}

    def write_files(self, index_dir: Path) -> None:
        self.bm25.write_files(index_dir)
        self.dense.write_files(index_dir)

    @classmethod
    def read_files(
        cls, index_dir: Path, passages: list[Passage], options: dict[str, Any]
    ) -> HybridRetriever:
        bm25 = BM25Retriever.read_files(index_dir, passages, options["bm25"])
        dense = DenseRetriever.read_files(index_dir, passages, options["dense"])
        return cls(bm25, dense, k_rrf=options["k_rrf"], pool=options["pool"])

    @classmethod
    def required_files(cls, options: dict[str, Any]) -> list[str]:
        return [
            *BM25Retriever.required_files(options.get("bm25", {})),
            *DenseRetriever.required_files(options.get("dense", {})),
        ]
