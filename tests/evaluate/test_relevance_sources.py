"""Reranker relevance from a TREC qrels file and from gold id lists, as from passage flags."""

import gzip
import math

import pytest

from dynamicrag.data import DataError
from dynamicrag.evaluate import gold_source, mean_rerank_scores, rerank_scores
from dynamicrag.evaluate.report import evaluate_records
from dynamicrag.evaluate.rerank_metrics import load_qrels, ndcg_at_k, relevance


def passages(n=6, **labels):
    out = [{"id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(1, n + 1)]
    for field, positions in labels.items():
        for i, p in enumerate(out, start=1):
            p[field] = i in positions
    return out


# Three questions: gold at positions {2, 4}, {1} and none; the selections hit them differently.
GOLD = {"q1": {2, 4}, "q2": {1}, "q3": set()}
SELECTED = {"q1": [3, 2, 4], "q2": [2, 1], "q3": []}


def flagged():
    return [{"id": q, "answers": ["x"], "passages": passages(isgold=g), "selected": SELECTED[q]} for q, g in GOLD.items()]


def with_gold_ids():
    return [
        {"id": q, "answers": ["x"], "passages": passages(), "selected": SELECTED[q], "gold_ids": [f"d{i}" for i in sorted(g)]}
        for q, g in GOLD.items()
    ]


def write_qrels(path):
    lines = [f"{q} 0 d{i} {int(i in g)}" for q, g in GOLD.items() for i in range(1, 7)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_qrels_and_gold_ids_give_the_same_metrics_as_flags(tmp_path):
    by_flags = mean_rerank_scores(flagged())
    assert by_flags["scored"] == 3
    assert mean_rerank_scores(with_gold_ids()) == pytest.approx(by_flags)
    qrels = load_qrels(write_qrels(tmp_path / "run.qrels"))
    unlabelled = [{k: v for k, v in r.items() if k != "gold_ids"} for r in with_gold_ids()]
    assert mean_rerank_scores(unlabelled, qrels=qrels) == pytest.approx(by_flags)
    for flags, ids, plain in zip(flagged(), with_gold_ids(), unlabelled):
        assert rerank_scores(ids) == pytest.approx(rerank_scores(flags))
        assert rerank_scores(plain, qrels=qrels) == pytest.approx(rerank_scores(flags))
    assert {gold_source(r) for r in with_gold_ids()} == {"gold_ids"}
    assert {gold_source(r, qrels) for r in unlabelled} == {"qrels"}
    # q1 by hand: selected [3, 2, 4], gold {2, 4}: recall@1 0, recall@3 1, MRR 1/2,
    # NDCG@10 = (1/log2 3 + 1/log2 4) / (1 + 1/log2 3).
    q1 = rerank_scores(flagged()[0])
    assert (q1["recall@1"], q1["recall@3"], q1["mrr"]) == (0.0, 1.0, 0.5)
    assert q1["ndcg@10"] == pytest.approx((1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3)))


def test_graded_qrels_ndcg_by_hand(tmp_path):
    path = tmp_path / "graded.qrels.gz"
    with gzip.open(path, "wt") as f:
        f.write("q 0 d1 0\nq 0 d2 2\nq 0 d4 1\nq 0 elsewhere 3\n")
    qrels = load_qrels(path)
    record = {"id": "q", "answers": [], "passages": passages(), "selected": [4, 2]}
    # Among the passages seen: d2 grade 2, d4 grade 1 ("elsewhere" was not retrieved: it is
    # no reranker's miss). Ranked d4, d2: DCG = 1/log2(2) + 2/log2(3) = 2.26186;
    # ideal d2, d4: 2/log2(2) + 1/log2(3) = 2.63093; NDCG@10 = 0.85972.
    assert relevance(record, qrels) == {2: 2, 4: 1}
    scores = rerank_scores(record, qrels=qrels)
    assert scores["ndcg@10"] == pytest.approx(0.85972, abs=1e-5)
    assert scores["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert (scores["recall@1"], scores["recall@3"], scores["mrr"]) == (0.5, 1.0, 1.0)
    assert (scores["precision"], scores["recall"]) == (1.0, 1.0)
    assert ndcg_at_k([2, 4], {2: 2, 4: 1}) == pytest.approx(1.0)


def test_qrels_are_the_only_source_when_given(tmp_path):
    qrels = load_qrels(write_qrels(tmp_path / "q.qrels"))
    unjudged = {"id": "q9", "answers": ["x"], "passages": passages(isgold={1}), "selected": [1]}
    assert gold_source(unjudged) == "isgold"
    assert gold_source(unjudged, qrels) is None and rerank_scores(unjudged, qrels=qrels) is None
    # Judged by qrels, the flags say otherwise: qrels win.
    judged = {"id": "q2", "answers": ["x"], "passages": passages(isgold={5}), "selected": [1]}
    assert rerank_scores(judged, qrels=qrels)["mrr"] == 1.0
    records = [dict(r, task="nq", answer="x", error=None) for r in (judged, unjudged)]
    summary = evaluate_records(records, qrels=qrels)
    group = summary["groups"]["all"]
    assert group["gold_source"] == {"none": 1, "qrels": 1}
    assert group["rerank"]["scored"] == 1 and group["rerank"]["mrr"] == 1.0


def test_gold_ids_beat_passage_flags_and_must_be_a_list():
    record = {"id": "q", "answers": ["x"], "passages": passages(isgold={1}), "selected": [3], "gold_ids": ["d3", 7]}
    assert relevance(record) == {3: 1}
    with pytest.raises(ValueError, match=r"record 'q': field 'gold_ids': expected a list of passage ids"):
        relevance(dict(record, gold_ids="d3"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("q 0 d1 1\nq 0 d2\n", r"bad\.qrels:2: expected 4 fields"),
        ("q 0 d1 yes\n", r"bad\.qrels:1: relevance 'yes' is not an integer"),
        ("q 0 d1 1\n\nq 0 d1 0\n", r"bad\.qrels:3: query 'q', document 'd1' already judged on line 1"),
        ("\n", r"bad\.qrels: no judgments"),
    ],
)
def test_bad_qrels_lines_are_named(tmp_path, text, message):
    path = tmp_path / "bad.qrels"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_qrels(path)
