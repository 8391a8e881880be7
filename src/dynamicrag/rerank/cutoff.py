"""Training-free dynamic k: cut the score-sorted candidates where the scores say so.

The baselines a user without a trained reranker reaches for. Both score every candidate with a
pointwise :class:`~dynamicrag.rerank.pointwise.Scorer` (``"retriever"`` reads the scores the
retriever already gave, ``Passage.score``), sort the candidates by score (highest first; equal
scores keep retrieval order; NaN last), and keep a prefix of that order:

* :class:`AdaptiveKReranker`: up to the largest gap between consecutive scores (Adaptive-k);
* :class:`ThresholdReranker`: while the score stays above a threshold, or within a drop from
  the top score.

Example:
    >>> from dynamicrag.rerank.pointwise import make_scorer
    >>> reranker = AdaptiveKReranker(make_scorer("retriever"), buffer=2)
    >>> [selection] = reranker.select([example])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dynamicrag.rerank.pointwise import Scorer
from dynamicrag.schema import Example, Selection


def score_order(scorer: Scorer, example: Example) -> tuple[list[int], list[float]]:
    """The example's passages by decreasing score.

    Args:
        scorer: Scores each passage.
        example: Its passages are the candidates.

    Returns:
        (0-based positions, their scores), both by decreasing score; equal scores keep
        retrieval order, NaN scores come last.

    Raises:
        ValueError: The scorer returned another number of scores than there are passages.
    """
    if not example.passages:
        return [], []
    scores = [float(s) for s in scorer.score(example.question, example.passages)]
    if len(scores) != len(example.passages):
        raise ValueError(
            f"scorer {type(scorer).__name__} returned {len(scores)} scores "
            f"for {len(example.passages)} passages (example {example.id!r})"
        )
    # sorted() is stable: equal scores keep retrieval order.
    order = sorted(range(len(scores)), key=lambda i: math.inf if math.isnan(scores[i]) else -scores[i])
    return order, [scores[i] for i in order]


def largest_gap_k(scores: Sequence[float], ignore_head: float = 0.0, ignore_tail: float = 0.1) -> int:
    """How many of the sorted ``scores`` come before their largest gap (Adaptive-k's cut).

    The gaps are the drops between consecutive scores, ``scores[i] - scores[i + 1]``; the cut
    falls after position ``i`` of the largest one (the first, on ties), so the result is
    ``i + 1``: at least 1, at most ``len(scores) - 1``. As in the published code, the search
    leaves out the first ``int((n - 1) * ignore_head)`` and the last ``int((n - 1) * ignore_tail)``
    gaps, ``n`` being the number of scores (its QA runs leave out the last 10 %).

    Args:
        scores: Finite scores, sorted highest first.
        ignore_head: Share of the gaps at the top that the search skips.
        ignore_tail: Share of the gaps at the bottom that the search skips.

    Returns:
        The number of passages above the largest gap; ``len(scores)`` when there are fewer
        than two scores (no gap to cut at).
    """
    n = len(scores)
    if n < 2:
        return n
    gaps = [scores[i] - scores[i + 1] for i in range(n - 1)]
    start, end = int((n - 1) * ignore_head), n - 1 - int((n - 1) * ignore_tail)
    if start >= end:  # the shares leave no gap to search: search them all rather than fail
        start, end = 0, n - 1
    best = max(range(start, end), key=gaps.__getitem__)  # max() keeps the first of equal gaps
    return best + 1


@dataclass
class AdaptiveKReranker:
    """Adaptive-k: keep the candidates above the largest gap of their sorted scores, plus a buffer.

    Sort the candidates by score (highest first), find the largest drop between consecutive
    scores (:func:`largest_gap_k`, skipping the tail share ``ignore_tail``), keep every
    candidate above it and ``buffer`` more. Without a buffer this keeps at least one and at
    most all but one candidate; all-equal scores keep one (the first gap wins ties).

    Deviations from the published method, which cuts the similarity-sorted chunks of a whole
    long context: here it cuts the reranker's top-N candidates; a single candidate is kept
    (the published code needs two scores); candidates with a NaN score are left out of the gap
    search and can come in only through the buffer.

    Args:
        scorer: Scores the candidates (``make_scorer("retriever")`` for the retriever's own
            scores; the paper uses embedding cosine similarity, ``make_scorer("embedding")``).
        buffer: Extra candidates kept below the cut (the published QA runs use 5).
        ignore_head: Share of the gaps at the top that the gap search skips (published: 0).
        ignore_tail: Share of the gaps at the bottom that the gap search skips (published QA
            runs: 0.1).

    Returns from :meth:`select`: Selections whose ``ids`` are 1-based positions into
    ``example.passages`` by decreasing score; ``calls`` is the number of passages scored.

    References:
        Taguchi, Maekawa and Bhutani, "Efficient Context Selection for Long-Context QA: No
        Tuning, No Iteration, Just Adaptive-k", EMNLP 2025 (arXiv 2506.08479); method as in
        github.com/megagonlabs/adaptive-k-retrieval (``largest_gap``, ``retrieve_more``).
    """

    scorer: Scorer
    buffer: int = 0
    ignore_head: float = 0.0
    ignore_tail: float = 0.1

    def __post_init__(self) -> None:
        if self.buffer < 0:
            raise ValueError(f"buffer must be >= 0, got {self.buffer}")
        if not (0 <= self.ignore_head < 1 and 0 <= self.ignore_tail < 1):
            raise ValueError(f"ignore_head and ignore_tail must be in [0, 1), got {self.ignore_head}, {self.ignore_tail}")

    def select(self, examples: Sequence[Example]) -> list[Selection]:
        """One Selection per example: the candidates above the largest score gap, plus the buffer."""
        out = []
        for ex in examples:
            order, scores = score_order(self.scorer, ex)
            finite = [s for s in scores if not math.isnan(s)]  # NaN sorts last: a prefix is finite
            k = min(largest_gap_k(finite, self.ignore_head, self.ignore_tail) + self.buffer, len(order))
            out.append(Selection(ids=[i + 1 for i in order[:k]], calls=len(order)))
        return out


@dataclass
class ThresholdReranker:
    """Keep the candidates, best first, while their score passes a threshold and/or a drop limit.

    A candidate (in score order) is kept when its score is at least ``threshold`` and, with
    ``max_drop``, when it is at most ``max_drop * |top score|`` below the top score (0.5: within
    half of the top score). The kept candidates are a prefix of the score order. An absolute
    threshold can keep none (the generator then answers without passages); a drop limit alone
    always keeps the top candidate. NaN scores are never kept.

    Args:
        scorer: Scores the candidates (see :class:`AdaptiveKReranker`).
        threshold: Lowest score kept (in the scorer's own scale: cosine similarity for
            ``embedding``, log-probability for ``monot5``, the retriever's for ``retriever``).
        max_drop: Largest drop from the top score kept, as a share of ``|top score|``.

    Raises:
        ValueError: Neither ``threshold`` nor ``max_drop`` given, or a negative ``max_drop``.
    """

    scorer: Scorer
    threshold: float | None = None
    max_drop: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is None and self.max_drop is None:
            raise ValueError("the threshold reranker needs a threshold, a max_drop, or both")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise ValueError(f"max_drop must be >= 0, got {self.max_drop}")

    def _keeps(self, score: float, top: float) -> bool:
        if math.isnan(score):
            return False
        if self.threshold is not None and score < self.threshold:
            return False
        return self.max_drop is None or top - score <= self.max_drop * abs(top)

    def select(self, examples: Sequence[Example]) -> list[Selection]:
        """One Selection per example: the leading candidates that pass the cut."""
        out = []
        for ex in examples:
            order, scores = score_order(self.scorer, ex)
            k = 0
            while k < len(order) and self._keeps(scores[k], scores[0]):
                k += 1
            out.append(Selection(ids=[i + 1 for i in order[:k]], calls=len(order)))
        return out


__all__ = ["AdaptiveKReranker", "ThresholdReranker", "largest_gap_k", "score_order"]
