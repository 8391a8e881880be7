"""Reranker metrics: how well a record's ``selected`` ids hit the gold passages.

Positions are 1-based into ``record["passages"]``, as in ``selected``. Relevance comes, most
explicit first, from a TREC qrels file (:func:`load_qrels`, when one is given), the record's
list of gold passage ids (:data:`GOLD_IDS_FIELD`), the passages' own labels, else answer
containment. It is always relevance among the passages the reranker saw: a gold passage the
retriever missed is no reranker's fault, so it counts in no recall here.

The ranking metrics (recall@k, NDCG@10, MRR) are computed by ir_measures (trec_eval's code
through pytrec_eval), with graded gains where the qrels grade; the set metrics (precision,
recall and F1 of the selection) stay here, because a correct ``None`` (nothing selected,
nothing relevant) scores 1.0, which trec_eval cannot express.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dynamicrag.data.errors import DataError
from dynamicrag.data.files import open_text, reading
from dynamicrag.evaluate.normalize import contains_answer

logger = logging.getLogger(__name__)

# Passage fields that label relevance, most trusted first: NQ's annotated gold passage, the
# HotpotQA/2Wiki supporting paragraphs, then DPR's answer-string flag.
GOLD_FIELDS = ("isgold", "supporting", "hasanswer")
CONTAINS_ANSWER = "contains_answer"
QRELS = "qrels"
# A record field: the ids (``passages[i].id``) of the example's gold passages, e.g.
# ``"gold_ids": ["wiki:123", "wiki:456"]`` in the input file (loaders keep it on the record).
GOLD_IDS_FIELD = "gold_ids"

Qrels = Mapping[str, Mapping[str, int]]  # query id -> document id -> relevance grade


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a TREC qrels file: one ``query_id iteration doc_id relevance`` line per judgment.

    The format trec_eval, ir_measures and ranx read (``.gz`` too). Written here rather than
    with ``ir_measures.read_trec_qrels`` so that a bad line is named by file and line number.
    Query ids match the records' ``id``, document ids their passages' ``id``; a grade of 0 or
    less is "judged not relevant".

    Args:
        path: The qrels file.

    Returns:
        Query id -> document id -> grade.

    Raises:
        DataError: A line without four fields, a grade that is not an integer, or the same
            (query, document) judged twice; naming file and line.
    """
    qrels: dict[str, dict[str, int]] = {}
    seen: dict[tuple[str, str], int] = {}
    with reading(path), open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise DataError(
                    f"expected 4 fields 'query_id iteration doc_id relevance', got {len(fields)}", path=path, line=line_no
                )
            qid, _, doc, grade = fields
            try:
                rel = int(grade)
            except ValueError:
                raise DataError(f"relevance {grade!r} is not an integer", path=path, line=line_no) from None
            if (qid, doc) in seen:
                where = f"query {qid!r}, document {doc!r}"
                raise DataError(f"{where} already judged on line {seen[qid, doc]}", path=path, line=line_no)
            seen[qid, doc] = line_no
            qrels.setdefault(qid, {})[doc] = rel
    if not qrels:
        raise DataError("no judgments", path=path)
    return qrels


def gold_source(record: dict[str, Any], qrels: Qrels | None = None) -> str | None:
    """Where :func:`gold_positions` reads relevance from for this record.

    Args:
        record: An ``infer`` output record.
        qrels: Judgments by query id (:func:`load_qrels`). When given they are the only
            source: a record whose ``id`` has none is unjudged (None), as in trec_eval.

    Returns:
        ``"qrels"``; else ``"gold_ids"`` when the record has that field; else the first of
        :data:`GOLD_FIELDS` that some passage carries; else ``"contains_answer"`` when the
        record has gold answers; else None (relevance unknown). None too without passages.
    """
    passages = record.get("passages") or []
    if not passages:
        return None
    if qrels is not None:
        return QRELS if str(record.get("id")) in qrels else None
    if record.get(GOLD_IDS_FIELD) is not None:
        return GOLD_IDS_FIELD
    for field in GOLD_FIELDS:
        if any(field in p for p in passages):
            return field
    if any(record.get("answers") or []):
        return CONTAINS_ANSWER
    return None


def _gold_ids(record: dict[str, Any]) -> dict[str, int]:
    ids = record[GOLD_IDS_FIELD]
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
        raise ValueError(
            f"record {record.get('id')!r}: field '{GOLD_IDS_FIELD}': expected a list of passage ids, got {ids!r:.80}"
        )
    return {str(i): 1 for i in ids}


def relevance(record: dict[str, Any], qrels: Qrels | None = None) -> dict[int, int] | None:
    """Relevance grades of the record's relevant passages by 1-based position, or None if unknown.

    The source is :func:`gold_source`. Qrels and gold ids name passages by ``id`` (a passage
    that appears twice is relevant at both positions); a label field counts a passage without
    it as not relevant; containment reads the passage text. Every source but qrels grades 1.

    Args:
        record: An ``infer`` output record with ``passages`` (and ``answers``).
        qrels: Judgments by query id (see :func:`gold_source`).

    Returns:
        Position -> grade (> 0) of every relevant passage among ``passages``, or None.

    Raises:
        ValueError: A ``gold_ids`` field that is not a list of ids (naming the record).
    """
    source = gold_source(record, qrels)
    if source is None:
        return None
    passages = record["passages"]
    if source in (QRELS, GOLD_IDS_FIELD):
        grades = qrels[str(record["id"])] if source == QRELS else _gold_ids(record)
        graded = ((i, grades.get(str(p.get("id")), 0)) for i, p in enumerate(passages, start=1))
        return {i: grade for i, grade in graded if grade > 0}
    if source == CONTAINS_ANSWER:
        answers = record["answers"]
        # Text only, like DPR's hasanswer: a title naming the answer is not evidence for it.
        hits = (contains_answer(p.get("text", ""), answers) for p in passages)
    else:
        hits = (bool(p.get(source)) for p in passages)
    return {i: 1 for i, hit in enumerate(hits, start=1) if hit}


def gold_positions(record: dict[str, Any], qrels: Qrels | None = None) -> set[int] | None:
    """1-based positions of the record's relevant passages, or None when that is unknown.

    Args:
        record: An ``infer`` output record with ``passages`` (and ``answers``).
        qrels: Judgments by query id (see :func:`gold_source`).

    Returns:
        The set of relevant positions (possibly empty), or None; see :func:`relevance`.
    """
    grades = relevance(record, qrels)
    return None if grades is None else set(grades)


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


Gold = set[int] | Mapping[int, int]  # relevant positions, or position -> grade


def _grades(gold: Gold) -> dict[int, int]:
    if isinstance(gold, Mapping):
        return {pos: grade for pos, grade in gold.items() if grade > 0}
    return dict.fromkeys(gold, 1)


def _ir_measures() -> Any:
    try:
        import ir_measures
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the ranking metrics need ir_measures: pip install 'ir-measures>=0.3.1'") from err
    return ir_measures


def _ir_scores(rankings: Sequence[tuple[Sequence[int], Gold]], measures: Mapping[str, Any]) -> list[dict[str, float]]:
    """``measures`` (name -> ir_measures measure) of each ranking; 0.0 where trec_eval gives none."""
    scores = [dict.fromkeys(measures, 0.0) for _ in rankings]
    # One trec_eval query per ranking, named by its index; documents are positions and the
    # run's scores fall with the rank, so trec_eval's order is the selection's order.
    qrels = {str(q): {str(pos): g for pos, g in _grades(gold).items()} for q, (_, gold) in enumerate(rankings)}
    qrels = {q: docs for q, docs in qrels.items() if docs}  # nothing relevant: 0.0 everywhere
    if not qrels:
        return scores
    run = {}
    for q, (selected, _) in enumerate(rankings):
        ranked = _unique(selected)
        run[str(q)] = {str(pos): float(len(ranked) - rank) for rank, pos in enumerate(ranked)}
    names = {measure: name for name, measure in measures.items()}
    evaluator = _ir_measures().pytrec_eval.evaluator(list(measures.values()), qrels)
    for metric in evaluator.iter_calc(run):
        scores[int(metric.query_id)][names[metric.measure]] = metric.value
    return scores


def ranking_scores(rankings: Sequence[tuple[Sequence[int], Gold]], ks: Sequence[int] = (1, 3, 5)) -> list[dict[str, float]]:
    """recall@k, NDCG@10 and MRR of ranked selections, by ir_measures (trec_eval's definitions).

    NDCG uses the grades as gains (trec_eval's ``ndcg_cut``; binary gold gains 1); recall@k
    and MRR count every grade > 0 as relevant. A repeated id takes no second rank. Nothing
    relevant, or nothing selected, scores 0.0 on all three.

    Args:
        rankings: ``(selected positions in order, gold)`` per query; gold is a set of
            relevant positions or position -> grade.
        ks: Cut-offs for ``recall@k``.

    Returns:
        One ``{"recall@k"..., "ndcg@10", "mrr"}`` dict per ranking, in order.
    """
    ir = _ir_measures()
    return _ir_scores(rankings, {**{f"recall@{k}": ir.R @ k for k in ks}, "ndcg@10": ir.nDCG @ 10, "mrr": ir.RR})


def recall_at_k(selected: Sequence[int], gold: Gold, k: int) -> float:
    """Share of the gold positions among the first ``k`` selected (0.0 when gold is empty)."""
    return _ir_scores([(selected, gold)], {"r": _ir_measures().R @ k})[0]["r"]


def ndcg_at_k(selected: Sequence[int], gold: Gold, k: int = 10) -> float:
    """NDCG@k of the selected order (0.0 when gold is empty), as trec_eval's ``ndcg_cut_k``.

    DCG = sum over ranks r <= k of gain_r / log2(r + 1), the gain being the grade (1 for a
    set of positions); the ideal ranks every gold passage first, highest grade first.
    """
    return _ir_scores([(selected, gold)], {"ndcg": _ir_measures().nDCG @ k})[0]["ndcg"]


def mrr(selected: Sequence[int], gold: Gold) -> float:
    """Reciprocal rank of the first gold position in the selected order; 0.0 if none is gold."""
    return _ir_scores([(selected, gold)], {"rr": _ir_measures().RR})[0]["rr"]


def _record_scores(
    records: Sequence[dict[str, Any]], ks: Sequence[int], qrels: Qrels | None
) -> list[dict[str, float] | None]:
    grades = [relevance(r, qrels) for r in records]
    known = [(r, g) for r, g in zip(records, grades) if g is not None]
    ranked = iter(ranking_scores([(r.get("selected") or [], g) for r, g in known], ks))
    out: list[dict[str, float] | None] = []
    for record, gold in zip(records, grades):
        if gold is None:
            out.append(None)
            continue
        precision, recall, f1 = precision_recall_f1(record.get("selected") or [], set(gold))
        out.append({"precision": precision, "recall": recall, "f1": f1, **next(ranked)})
    return out


def rerank_scores(
    record: dict[str, Any], ks: Sequence[int] = (1, 3, 5), qrels: Qrels | None = None
) -> dict[str, float] | None:
    """Every reranker metric of one record, or None when its gold passages are unknown.

    Failed records keep their (empty) selection and so score as choosing nothing.

    Args:
        record: An ``infer`` output record with ``passages`` and ``selected``.
        ks: Cut-offs for ``recall@k``.
        qrels: Judgments by query id (see :func:`gold_source`).

    Returns:
        ``precision``, ``recall``, ``f1``, ``recall@k`` for each k, ``ndcg@10``, ``mrr``.
    """
    return _record_scores([record], ks, qrels)[0]


def mean_rerank_scores(
    records: Iterable[dict[str, Any]], ks: Sequence[int] = (1, 3, 5), qrels: Qrels | None = None
) -> dict[str, float]:
    """:func:`rerank_scores` averaged over the records whose gold passages are known.

    Args:
        records: ``infer`` output records.
        ks: Cut-offs for ``recall@k``.
        qrels: Judgments by query id (see :func:`gold_source`).

    Returns:
        The mean of each metric, plus ``scored``: how many records were averaged (0 and no
        metric when none had known gold).
    """
    scored = [s for s in _record_scores(list(records), ks, qrels) if s is not None]
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
