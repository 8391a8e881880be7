"""Training-free dynamic k (adaptive-k, threshold) and the gold ceiling, on hand-checked scores.

Scores are small integers or binary fractions, so every gap and drop below is exact.
"""

from __future__ import annotations

import math

import pytest

from dynamicrag.rerank import make_reranker
from dynamicrag.rerank.cutoff import AdaptiveKReranker, ThresholdReranker, largest_gap_k
from dynamicrag.rerank.gold import GoldReranker
from dynamicrag.rerank.pointwise import RetrieverScorer
from dynamicrag.schema import Example, Passage


class ListScorer:
    """Returns the scores it was given, and counts its calls."""

    def __init__(self, scores):
        self.scores, self.calls = list(scores), 0

    def score(self, query, passages):
        self.calls += 1
        assert len(passages) == len(self.scores)
        return self.scores


def example(n: int, **extra_of) -> Example:
    return Example(id="q", question="q?", passages=[
        Passage(id=f"p{i}", text=f"text {i}", extra={k: v[i - 1] for k, v in extra_of.items()}) for i in range(1, n + 1)
    ])


def adaptive(scores, **options) -> list[int]:
    [selection] = AdaptiveKReranker(ListScorer(scores), **options).select([example(len(scores))])
    return selection.ids


def threshold(scores, **options) -> list[int]:
    [selection] = ThresholdReranker(ListScorer(scores), **options).select([example(len(scores))])
    return selection.ids


@pytest.mark.parametrize(("scores", "k"), [
    ([1.0, 0.5, 0.25, 0.0], 1),    # gaps 0.5, 0.25, 0.25: the first is largest
    ([1.0, 0.75, 0.25, 0.0], 2),   # gaps 0.25, 0.5, 0.25
    ([1.0, 0.5, 0.0], 1),          # equal gaps: the first wins
    ([3.0, 3.0, 3.0, 3.0], 1),     # all equal: every gap 0, the first wins
    ([2.0], 1),                    # one score: no gap, kept
    ([], 0),
])
def test_largest_gap_k_cuts_after_the_largest_drop(scores, k):
    assert largest_gap_k(scores, ignore_tail=0.0) == k


def test_the_gap_search_skips_the_tail_and_head_shares_as_published():
    # 11 scores: gaps of 1 everywhere but the last (6); (11 - 1) * 0.1 = 1 gap is skipped at the tail
    scores = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, -5.0]
    assert largest_gap_k(scores, ignore_tail=0.0) == 10
    assert largest_gap_k(scores) == 1  # default 0.1: the last gap is out, the first of the 1s wins
    head = [10.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -8.5]  # the largest gap first
    assert largest_gap_k(head, ignore_tail=0.0) == 1
    assert largest_gap_k(head, ignore_head=0.1, ignore_tail=0.0) == 2  # first gap skipped; the 1s tie
    # shares that leave nothing to search fall back to every gap
    assert largest_gap_k([4.0, 3.0, 0.0], ignore_head=0.5, ignore_tail=0.5) == 2


def test_adaptive_k_returns_positions_in_score_order_plus_the_buffer():
    # sorted: p2 90, p5 85, p3 80 | p1 20, p4 10 -- gaps 5, 5, 60, 10
    scores = [20.0, 90.0, 80.0, 10.0, 85.0]
    assert adaptive(scores) == [2, 5, 3]
    assert adaptive(scores, buffer=1) == [2, 5, 3, 1]
    assert adaptive(scores, buffer=5) == [2, 5, 3, 1, 4]  # a buffer past the end keeps everything


def test_adaptive_k_ties_all_equal_one_and_no_passages():
    assert adaptive([5.0, 7.0, 7.0, 1.0]) == [2, 3, 1]  # equal scores keep retrieval order; gaps 0, 2, 4
    assert adaptive([3.0, 3.0, 3.0]) == [1]
    assert adaptive([3.0, 3.0, 3.0], buffer=1) == [1, 2]
    assert adaptive([0.5]) == [1] and adaptive([0.5], buffer=2) == [1]
    scorer = ListScorer([])
    [selection] = AdaptiveKReranker(scorer, buffer=3).select([example(0)])
    assert selection.ids == [] and selection.calls == 0 and scorer.calls == 0  # nothing scored


def test_adaptive_k_leaves_nan_scores_to_the_buffer():
    assert adaptive([math.nan, 3.0, 1.0]) == [2]
    assert adaptive([math.nan, 3.0, 1.0], buffer=2) == [2, 3, 1]


def test_adaptive_k_is_deterministic_and_counts_the_scored_passages():
    scores = [0.25, 0.75, 0.5, 0.0]
    reranker = AdaptiveKReranker(ListScorer(scores))
    first = reranker.select([example(4), example(4)])
    assert first == reranker.select([example(4), example(4)])
    assert [s.calls for s in first] == [4, 4] and first[0].ids == [2]  # gaps 0.25, 0.25, 0.25: the first


def test_threshold_keeps_a_prefix_of_the_score_order():
    scores = [0.5, 0.75, 0.25, 1.0]  # sorted: p4 1.0, p2 0.75, p1 0.5, p3 0.25
    assert threshold(scores, threshold=0.5) == [4, 2, 1]  # the threshold itself is kept
    assert threshold(scores, threshold=2.0) == []  # nothing passes: no passages
    assert threshold(scores, max_drop=0.25) == [4, 2]  # within 0.25 * |1.0| of the top
    assert threshold(scores, threshold=0.8, max_drop=0.5) == [4]  # both must hold
    assert threshold(scores, max_drop=0.0) == [4]  # a drop limit always keeps the top


def test_threshold_drop_on_negative_and_zero_top_scores():
    # log-probabilities: top -0.5, so the drop limit is max_drop * 0.5 (0.25, then 0.5)
    assert threshold([-1.0, -0.5, -2.0], max_drop=0.5) == [2]
    assert threshold([-1.0, -0.5, -2.0], max_drop=1.0) == [2, 1]
    assert threshold([0.0, -1.0], max_drop=0.5) == [1]  # a zero top keeps only its equals


def test_threshold_ties_one_none_and_nan():
    assert threshold([1.0, 1.0, 0.0], threshold=0.5) == [1, 2]
    assert threshold([1.0, 1.0, 0.0], max_drop=0.0) == [1, 2]
    assert threshold([0.25], threshold=0.5) == [] and threshold([0.75], threshold=0.5) == [1]
    assert threshold([], threshold=0.5) == []
    assert threshold([math.nan, 1.0], threshold=-10.0) == [2]


def test_threshold_needs_a_cut():
    with pytest.raises(ValueError, match="needs a threshold, a max_drop, or both"):
        ThresholdReranker(ListScorer([]))
    with pytest.raises(ValueError, match="max_drop must be >= 0"):
        ThresholdReranker(ListScorer([]), max_drop=-0.1)
    with pytest.raises(ValueError, match="buffer must be >= 0"):
        AdaptiveKReranker(ListScorer([]), buffer=-1)


def test_the_retriever_scorer_reads_passage_scores_and_names_a_missing_one():
    ex = Example(id="q", question="q?", passages=[
        Passage(id="a", text="x", score=2.0), Passage(id="b", text="y", score=9.0), Passage(id="c", text="z", score=1.0),
    ])
    reranker = make_reranker("adaptive-k", scorer="retriever")  # gaps 7, 1
    assert reranker.select([ex])[0].ids == [2]
    assert make_reranker("threshold", scorer="retriever", threshold=1.5).select([ex])[0].ids == [2, 1]
    ex.passages[1].score = None
    with pytest.raises(ValueError, match="passage 'b' has no retriever score"):
        RetrieverScorer().score(ex.question, ex.passages)


def test_gold_selects_the_labelled_passages_in_retrieval_order():
    [nq] = GoldReranker().select([example(3, isgold=[False, True, False])])
    assert nq.ids == [2] and nq.error is None
    [hotpot] = GoldReranker().select([example(4, supporting=[True, False, False, True])])
    assert hotpot.ids == [1, 4]
    # the gold passage was not retrieved: known, not here -> no passages
    [missed] = GoldReranker().select([example(2, isgold=[False, False])])
    assert missed.ids == [] and missed.error is None
    # hasanswer is not gold, and no label at all is an error
    [unknown] = GoldReranker().select([example(2, hasanswer=[True, False])])
    assert unknown.ids == [] and "no gold labels (isgold / supporting)" in unknown.error
