"""Evaluation: answer normalisation (SQuAD) and containment, answer and reranker metrics,
paired comparisons of runs."""

from dynamicrag.lazy import lazy_exports

_EXPORTS = {
    "GOLD_IDS_FIELD": "dynamicrag.evaluate.rerank_metrics",
    "METRICS": "dynamicrag.evaluate.answer_metrics",
    "TASK_METRICS": "dynamicrag.evaluate.answer_metrics",
    "asqa_str_em": "dynamicrag.evaluate.answer_metrics",
    "compare_runs": "dynamicrag.evaluate.compare",
    "contains_answer": "dynamicrag.evaluate.normalize",
    "diff_runs": "dynamicrag.evaluate.compare",
    "em": "dynamicrag.evaluate.answer_metrics",
    "f1": "dynamicrag.evaluate.answer_metrics",
    "fever_accuracy": "dynamicrag.evaluate.answer_metrics",
    "fever_label": "dynamicrag.evaluate.answer_metrics",
    "gold_positions": "dynamicrag.evaluate.rerank_metrics",
    "gold_source": "dynamicrag.evaluate.rerank_metrics",
    "holm": "dynamicrag.evaluate.compare",
    "load_qrels": "dynamicrag.evaluate.rerank_metrics",
    "match": "dynamicrag.evaluate.answer_metrics",
    "match_official": "dynamicrag.evaluate.answer_metrics",
    "mean_rerank_scores": "dynamicrag.evaluate.rerank_metrics",
    "mrr": "dynamicrag.evaluate.rerank_metrics",
    "ndcg_at_k": "dynamicrag.evaluate.rerank_metrics",
    "normalize_answer": "dynamicrag.evaluate.normalize",
    "paired_stats": "dynamicrag.evaluate.compare",
    "per_question": "dynamicrag.evaluate.compare",
    "precision_recall_f1": "dynamicrag.evaluate.rerank_metrics",
    "ranking_scores": "dynamicrag.evaluate.rerank_metrics",
    "recall_at_k": "dynamicrag.evaluate.rerank_metrics",
    "relevance": "dynamicrag.evaluate.rerank_metrics",
    "rerank_scores": "dynamicrag.evaluate.rerank_metrics",
    "rouge_l": "dynamicrag.evaluate.answer_metrics",
    "score_record": "dynamicrag.evaluate.answer_metrics",
    "summarize_selections": "dynamicrag.evaluate.rerank_metrics",
    "task_metrics": "dynamicrag.evaluate.answer_metrics",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
