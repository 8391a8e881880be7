"""Reranker metrics: how well a record's ``selected`` ids hit the gold passages.

Positions are 1-based into ``record["passages"]``, as in ``selected``. Gold relevance comes
from the passages' own labels when the data has them, else from answer containment.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from dynamicrag.evaluate.normalize import contains_answer

logger = logging.getLogger(__name__)

# Passage fields that label relevance, most trusted first: NQ's annotated gold passage, the
# HotpotQA/2Wiki supporting paragraphs, then DPR's answer-string flag.
GOLD_FIELDS = ("isgold", "supporting", "hasanswer")
CONTAINS_ANSWER = "contains_answer"


def gold_source(record: dict[str, Any]) -> str | None:
    """Where :func:`gold_positions` reads relevance from for this record.

    Args:
        record: An ``infer`` output record.

    Returns:
        The first of :data:`GOLD_FIELDS` that some passage carries, else ``"contains_answer"``
        when the record has gold answers, else None (relevance unknown).
    """
    passages = record.get("passages") or []
    for field in GOLD_FIELDS:
        if any(field in p for p in passages):
            return field
    if passages and any(record.get("answers") or []):
        return CONTAINS_ANSWER
    return None


def gold_positions(record: dict[str, Any]) -> set[int] | None:
    """1-based positions of the record's relevant passages, or None when that is unknown.

    The source is :func:`gold_source`: a label field (a passage without it counts as not
    relevant) or, failing that, whether the passage text contains a gold answer.

    Args:
        record: An ``infer`` output record with ``passages`` (and ``answers``).

    Returns:
        The set of relevant positions (possibly empty), or None.
    """
    source = gold_source(record)
    if source is None:
        return None
    passages = record["passages"]
    if source == CONTAINS_ANSWER:
        answers = record["answers"]
        # Text only, like DPR's hasanswer: a title naming the answer is not evidence for it.
        hits = (contains_answer(p.get("text", ""), answers) for p in passages)
    else:
        hits = (bool(p.get(source)) for p in passages)
    return {i for i, hit in enumerate(hits, start=1) if hit}


def _unique(selected: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(selected))


def precision_recall_f1(selected: Sequence[int], gold: set[int]) -> tuple[float, float, float]:
    """Precision, recall and F1 of the selected set against the gold set.

    An empty set on one side only scores 0.0 everywhere; both empty (``None`` when nothing is
    relevant) scores 1.0 everywhere.

    Args:
        selected: Selected positions (order and repeats ignored).
        gold: Relevant positions.

    Returns:
        ``(precision, recall, f1)``.
    """
    chosen = set(selected)
    if not chosen or not gold:
        score = float(not chosen and not gold)
        return score, score, score
    hits = len(chosen & gold)
    if hits == 0:
        return 0.0, 0.0, 0.0
    precision, recall = hits / len(chosen), hits / len(gold)
    return precision, recall, 2 * precision * recall / (precision + recall)


def recall_at_k(selected: Sequence[int], gold: set[int], k: int) -> float:
    """Share of the gold positions among the first ``k`` selected (0.0 when gold is empty)."""
    if not gold:
        return 0.0
    return len(set(_unique(selected)[:k]) & gold) / len(gold)


def ndcg_at_k(selected: Sequence[int], gold: set[int], k: int = 10) -> float:
    """NDCG@k of the selected order with binary gain (0.0 when gold is empty).

    DCG = sum over ranks r <= k of rel_r / log2(r + 1); the ideal ranks every gold first.
    """
    if not gold:
        return 0.0
    dcg = sum(1 / math.log2(r + 1) for r, pos in enumerate(_unique(selected)[:k], start=1) if pos in gold)
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(gold), k) + 1))
    return dcg / ideal


def mrr(selected: Sequence[int], gold: set[int]) -> float:
    """Reciprocal rank of the first gold position in the selected order; 0.0 if none is gold."""
    for rank, pos in enumerate(_unique(selected), start=1):
        if pos in gold:
            return 1 / rank
    return 0.0


def rerank_scores(record: dict[str, Any], ks: Sequence[int] = (1, 3, 5)) -> dict[str, float] | None:
    """Every reranker metric of one record, or None when its gold passages are unknown.

    Failed records keep their (empty) selection and so score as choosing nothing.

    Args:
        record: An ``infer`` output record with ``passages`` and ``selected``.
        ks: Cut-offs for ``recall@k``.

    Returns:
        ``precision``, ``recall``, ``f1``, ``recall@k`` for each k, ``ndcg@10``, ``mrr``.
    """
    gold = gold_positions(record)
    if gold is None:
        return None
    selected = record.get("selected") or []
    precision, recall, f1 = precision_recall_f1(selected, gold)
    scores = {"precision": precision, "recall": recall, "f1": f1}
    scores.update({f"recall@{k}": recall_at_k(selected, gold, k) for k in ks})
    scores["ndcg@10"] = ndcg_at_k(selected, gold, 10)
    scores["mrr"] = mrr(selected, gold)
    return scores


def mean_rerank_scores(records: Iterable[dict[str, Any]], ks: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
    """:func:`rerank_scores` averaged over the records whose gold passages are known.

    Returns:
        The mean of each metric, plus ``scored``: how many records were averaged (0 and no
        metric when none had known gold).
    """
    scored = [s for s in (rerank_scores(r, ks) for r in records) if s is not None]
    means = {name: sum(s[name] for s in scored) / len(scored) for name in (scored[0] if scored else {})}
    return {**means, "scored": len(scored)}


def summarize_selections(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many passages the reranker chose, and how often it said None, broke format or failed.

    Args:
        records: ``infer`` output records.

    Returns:
        ``n``; ``mean_k`` and ``k_distribution`` (k -> count, sorted by k) over the records
        without an error; shares over all records: ``none`` (nothing selected and no error),
        ``malformed`` (``well_formed`` is False), ``failed`` (an ``error`` is set).

    Raises:
        ValueError: No records.
    """
    if not records:
        raise ValueError("summarize_selections: no records")
    ok = [r for r in records if r.get("error") is None]
    ks = Counter(len(r.get("selected") or []) for r in ok)
    n = len(records)
    return {
        "n": n,
        "mean_k": sum(k * c for k, c in ks.items()) / len(ok) if ok else 0.0,
        "k_distribution": dict(sorted(ks.items())),
        "none": ks[0] / n,
        "malformed": sum(r.get("well_formed") is False for r in records) / n,
        "failed": (n - len(ok)) / n,
    }
