"""SQuAD answer normalisation and answer containment."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD v1.1)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    """True when some normalised, non-empty gold answer occurs in the normalised ``text``.

    Matching is on whole tokens ("1901" is not found in "19015"), as in the ``match`` metric
    of Self-RAG / FlashRAG, and an empty answer never matches.
    """
    padded = f" {normalize_answer(text)} "
    return any(norm and f" {norm} " in padded for norm in map(normalize_answer, answers))
