"""Evaluation: answer normalisation (SQuAD) and containment, shared by metrics and labelling."""

from dynamicrag.evaluate.normalize import contains_answer, normalize_answer

__all__ = ["contains_answer", "normalize_answer"]
