import math

import pytest

from dynamicrag.evaluate import (
    gold_positions,
    gold_source,
    mean_rerank_scores,
    mrr,
    ndcg_at_k,
    precision_recall_f1,
    recall_at_k,
    rerank_scores,
    summarize_selections,
)
from dynamicrag.schema import Selection, to_record


def passages(**labels):
    """Five passages; ``labels`` maps a field to the 1-based positions where it is True."""
    out = [{"id": str(i), "title": f"T{i}", "text": f"text {i}"} for i in range(1, 6)]
    for field, positions in labels.items():
        for i, p in enumerate(out, start=1):
            p[field] = i in positions
    return out


def test_gold_from_each_source():
    nq = {"answers": ["x"], "passages": passages(isgold={2}, hasanswer={2, 5})}
    assert (gold_source(nq), gold_positions(nq)) == ("isgold", {2})  # the annotation beats hasanswer
    dpr = {"answers": ["x"], "passages": passages(hasanswer={1, 3})}
    assert (gold_source(dpr), gold_positions(dpr)) == ("hasanswer", {1, 3})
    hotpot = {"answers": ["yes"], "passages": passages(supporting={4, 5})}
    assert (gold_source(hotpot), gold_positions(hotpot)) == ("supporting", {4, 5})


def test_gold_field_on_some_passages_only_marks_the_others_irrelevant():
    ps = passages()
    ps[2]["isgold"] = True  # e.g. the oracle passage mixed into retrieved ones
    assert gold_positions({"answers": ["x"], "passages": ps}) == {3}


def test_gold_falls_back_to_answer_containment_in_the_text():
    ps = [
        {"id": "a", "title": "Paris", "text": "The capital of France."},  # title only: not gold
        {"id": "b", "title": "", "text": "Its capital is Paris."},
        {"id": "c", "title": "", "text": "Parisian cafés."},
    ]
    record = {"answers": ["paris"], "passages": ps}
    assert (gold_source(record), gold_positions(record)) == ("contains_answer", {2})


def test_gold_unknown_without_passages_or_answers():
    assert gold_positions({"answers": ["x"], "passages": []}) is None
    assert gold_positions({"answers": [], "passages": passages()}) is None
    assert rerank_scores({"answers": [], "passages": passages(), "selected": [1]}) is None


def test_gold_of_real_hotpotqa_records(shared_data):
    from dynamicrag.data import load_examples

    examples = load_examples(shared_data / "hotpotqa" / "hotpotqa_train.json")
    records = [to_record(ex, None, None) for ex in examples]
    assert {gold_source(r) for r in records} == {"supporting"}
    assert all(len(gold_positions(r)) == 2 for r in records)  # 2 supporting paragraphs of 10


def test_precision_recall_f1_of_the_set():
    # 2 of 3 selected are gold, both gold found: P = 2/3, R = 1, F1 = 0.8
    assert precision_recall_f1([4, 1, 2], {2, 4}) == pytest.approx((2 / 3, 1.0, 0.8))
    assert precision_recall_f1([4, 4], {2, 4}) == pytest.approx((1.0, 0.5, 2 / 3))  # repeats ignored
    assert precision_recall_f1([1, 3], {2, 4}) == (0.0, 0.0, 0.0)
    assert precision_recall_f1([], {2}) == (0.0, 0.0, 0.0)
    assert precision_recall_f1([1], set()) == (0.0, 0.0, 0.0)
    assert precision_recall_f1([], set()) == (1.0, 1.0, 1.0)  # a correct "None"


def test_order_metrics():
    assert recall_at_k([4, 1, 2], {2, 4}, 1) == 0.5
    assert recall_at_k([4, 1, 2], {2, 4}, 2) == 0.5
    assert recall_at_k([4, 1, 2], {2, 4}, 3) == 1.0
    assert recall_at_k([4, 4, 2], {2, 4}, 2) == 1.0  # a repeated id takes no second rank
    assert recall_at_k([1], set(), 1) == 0.0
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3)
    assert ndcg_at_k([4, 1, 2], {2, 4}) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k([2, 4, 1], {2, 4}) == pytest.approx(1.0)
    assert ndcg_at_k([1, 3], {2, 4}) == 0.0
    assert ndcg_at_k([1, 2], {2}, k=1) == 0.0
    assert mrr([4, 1, 2], {2, 4}) == 1.0
    assert mrr([3, 1, 2], {2, 4}) == pytest.approx(1 / 3)
    assert mrr([], {2}) == 0.0


def test_rerank_scores_of_a_record():
    record = {"answers": ["x"], "passages": passages(isgold={2, 4}), "selected": [3, 2]}
    assert rerank_scores(record) == pytest.approx(
        {
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "recall@1": 0.0,
            "recall@3": 0.5,
            "recall@5": 0.5,
            "ndcg@10": (1 / math.log2(3)) / (1 + 1 / math.log2(3)),
            "mrr": 0.5,
        }
    )


def test_mean_rerank_scores_skips_records_without_gold():
    a = {"answers": ["x"], "passages": passages(isgold={1}), "selected": [1]}
    b = {"answers": ["x"], "passages": passages(isgold={1}), "selected": [2]}
    unknown = {"answers": [], "passages": [], "selected": [1]}
    means = mean_rerank_scores([a, b, unknown], ks=(1,))
    halves = dict.fromkeys(["precision", "recall", "f1", "recall@1", "ndcg@10", "mrr"], 0.5)
    assert means == pytest.approx({**halves, "scored": 2})
    assert mean_rerank_scores([unknown]) == {"scored": 0}


def test_summarize_selections():
    records = [
        {"selected": [1, 2], "well_formed": True, "error": None},
        {"selected": [3], "well_formed": True, "error": None},
        {"selected": [2, 1], "well_formed": False, "error": None},  # ids recovered from a malformed output
        {"selected": [], "well_formed": True, "error": None},  # the model said None
        {"selected": [], "well_formed": False, "error": "no ids in output"},
    ]
    assert summarize_selections(records) == {
        "n": 5,
        "mean_k": 5 / 4,  # over the 4 records without error
        "k_distribution": {0: 1, 1: 1, 2: 2},
        "none": 1 / 5,
        "malformed": 2 / 5,
        "failed": 1 / 5,
    }


def test_summarize_selections_reads_infer_records():
    from dynamicrag.schema import Example

    ex = Example(id="q", question="?", answers=["x"])
    records = [
        to_record(ex, Selection(ids=[2, 1], raw="[2], [1]"), "x"),
        to_record(ex, Selection(ids=[], raw="None"), "x"),
        to_record(ex, None, None, error="backend timeout"),
    ]
    summary = summarize_selections(records)
    assert (summary["mean_k"], summary["none"], summary["malformed"], summary["failed"]) == (1.0, 1 / 3, 0.0, 1 / 3)
    with pytest.raises(ValueError, match="no records"):
        summarize_selections([])
