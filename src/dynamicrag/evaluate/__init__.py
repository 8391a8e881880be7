"""Evaluation: answer normalisation (SQuAD) and containment, answer and reranker metrics."""

from dynamicrag.evaluate.answer_metrics import (
    METRICS,
    TASK_METRICS,
    asqa_str_em,
    em,
    f1,
    fever_accuracy,
    fever_label,
    match,
    match_official,
    rouge_l,
    score_record,
    task_metrics,
)
from dynamicrag.evaluate.normalize import contains_answer, normalize_answer
from dynamicrag.evaluate.rerank_metrics import (
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

__all__ = [
    "METRICS",
    "TASK_METRICS",
    "asqa_str_em",
    "contains_answer",
    "em",
    "f1",
    "fever_accuracy",
    "fever_label",
    "gold_positions",
    "gold_source",
    "match",
    "match_official",
    "mean_rerank_scores",
    "mrr",
    "ndcg_at_k",
    "normalize_answer",
    "precision_recall_f1",
    "recall_at_k",
    "rerank_scores",
    "rouge_l",
    "score_record",
    "summarize_selections",
    "task_metrics",
]
