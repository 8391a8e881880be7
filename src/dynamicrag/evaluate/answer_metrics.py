"""Answer metrics: EM, match, token F1, FEVER accuracy, ROUGE-L, ASQA str-em, per task.

Every metric takes the generated text and the gold answers and returns a float in [0, 1];
:func:`score_record` picks the task's metrics (:data:`TASK_METRICS`) for one ``infer`` record.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from dynamicrag.evaluate.normalize import contains_answer, normalize_answer

logger = logging.getLogger(__name__)

FEVER_LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")

# One alternation, so the earliest label in the text wins whatever its spelling. Separators
# may be spaces, "_" or "-" ("NOT_ENOUGH_INFO"); "\b" treats curly quotes as boundaries.
_FEVER_RE = re.compile(
    r"\b(?:(?P<sup>support(?:s|ed)?)|(?P<ref>refute(?:s|d)?)"
    r"|(?P<nei>nei|not[\s_-]+enough[\s_-]+info(?:rmation)?))\b",
    re.IGNORECASE,
)
_FEVER_GROUPS = {"sup": "SUPPORTS", "ref": "REFUTES", "nei": "NOT ENOUGH INFO"}


def em(prediction: str, answers: Iterable[str]) -> float:
    """Exact match after SQuAD normalisation, max over gold answers.

    Args:
        prediction: Generated answer.
        answers: Gold answers.

    Returns:
        1.0 when the normalised prediction equals some normalised gold answer, else 0.0.
    """
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def match(prediction: str, answers: Iterable[str]) -> float:
    """A normalised gold answer occurs (whole tokens) in the normalised prediction.

    The ``match`` of Self-RAG and ALCE, FlashRAG's ``acc``. An empty prediction never matches.

    Args:
        prediction: Generated answer.
        answers: Gold answers.

    Returns:
        1.0 or 0.0.
    """
    return float(contains_answer(prediction, answers))


def match_official(prediction: str, answers: Iterable[str]) -> float:
    """The original DynamicRAG code's match: normalised PREDICTION inside a normalised gold answer.

    Kept only to compare with the paper's published numbers; use :func:`match` otherwise. The
    direction is reversed from the standard metric, so a prediction shorter than the gold
    ("Paris" for "Paris, France") matches, a longer correct one does not, and an empty
    prediction matches every question (plain substring test, as in the original).

    Args:
        prediction: Generated answer.
        answers: Gold answers.

    Returns:
        1.0 or 0.0.
    """
    pred = normalize_answer(prediction)
    return float(any(pred in normalize_answer(a) for a in answers))


def _token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: Iterable[str]) -> float:
    """SQuAD v1.1 token F1 (bag of normalised tokens), max over gold answers.

    Args:
        prediction: Generated answer.
        answers: Gold answers.

    Returns:
        The best F1 over answers; 0.0 when there are none or nothing overlaps.
    """
    return max((_token_f1(prediction, a) for a in answers), default=0.0)


def fever_label(text: str) -> str | None:
    """The FEVER label a text states: ``SUPPORTS``, ``REFUTES``, ``NOT ENOUGH INFO`` or None.

    Accepts the usual spellings (support/supports/supported, refutes/refuted, NEI, not enough
    info/information), any case, quoted or inside a sentence; the first label mentioned wins.
    No negation handling: "does not support" reads as SUPPORTS.

    Args:
        text: Generated answer or gold label.

    Returns:
        The canonical label, or None when the text names none.
    """
    found = _FEVER_RE.search(text)
    return _FEVER_GROUPS[found.lastgroup] if found else None


def fever_accuracy(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the prediction's label equals a gold label (both read by :func:`fever_label`).

    Deviation: the original code compares first letters only, so any answer starting with "S"
    counts as SUPPORTS; here a prediction naming no label is wrong.

    Args:
        prediction: Generated answer.
        answers: Gold labels (usually one).

    Returns:
        1.0 or 0.0.
    """
    label = fever_label(prediction)
    return float(label is not None and label in {fever_label(a) for a in answers})


@functools.cache
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("ROUGE-L needs the rouge-score package: pip install 'rouge-score>=0.1.2'") from err
    # Porter stemming, as ALCE does for ASQA/ELI5.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Iterable[str]) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemming), max over references.

    Args:
        prediction: Generated text.
        references: Reference texts.

    Returns:
        The best F-measure; 0.0 when there are no references.
    """
    scorer = _rouge_scorer()
    return max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references), default=0.0)


def _strings(value: Any) -> Iterator[str]:
    """Strings of a string or (nested) list, as ASQA's short_answers come."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def asqa_str_em(prediction: str, qa_pairs: Sequence[dict[str, Any]]) -> float:
    """ALCE's ASQA ``str_em``: share of qa_pairs with a short answer contained in the output.

    Containment is :func:`contains_answer` (whole normalised tokens); ALCE tests a plain
    substring, which can also count "1901" inside "19015".

    Args:
        prediction: Generated long answer.
        qa_pairs: ASQA disambiguations, each with ``short_answers`` (strings or nested lists).

    Returns:
        Hits / number of pairs; 0.0 when there are no pairs.
    """
    if not qa_pairs:
        return 0.0
    hits = sum(contains_answer(prediction, _strings(p.get("short_answers", []))) for p in qa_pairs)
    return hits / len(qa_pairs)


def _asqa_references(record: dict[str, Any]) -> list[str]:
    """ASQA ROUGE references: the long answers of ALCE's annotations, else the gold answers."""
    longs = [a["long_answer"] for a in record.get("annotations") or [] if isinstance(a, dict) and a.get("long_answer")]
    return longs or list(record.get("answers") or [])


def _str_em(prediction: str, record: dict[str, Any]) -> float:
    if "qa_pairs" not in record:
        raise ValueError(f"record {record.get('id')!r}: metric str_em needs the field 'qa_pairs'")
    return asqa_str_em(prediction, record["qa_pairs"])


def _rouge_l(prediction: str, record: dict[str, Any]) -> float:
    refs = _asqa_references(record) if record.get("task") == "asqa" else list(record.get("answers") or [])
    return rouge_l(prediction, refs)


def _on_answers(fn: Callable[[str, Iterable[str]], float]) -> Callable[[str, dict[str, Any]], float]:
    return lambda prediction, record: fn(prediction, record.get("answers") or [])


# name -> metric of (prediction, record); ``match_official`` is here for comparisons only.
METRICS: dict[str, Callable[[str, dict[str, Any]], float]] = {
    "em": _on_answers(em),
    "match": _on_answers(match),
    "match_official": _on_answers(match_official),
    "f1": _on_answers(f1),
    "accuracy": _on_answers(fever_accuracy),
    "rouge_l": _rouge_l,
    "str_em": _str_em,
}

# match first: it is the headline metric (a small generator writes sentences, so EM is ~0).
_SHORT_QA = ["match", "em", "f1"]
TASK_METRICS: dict[str, list[str]] = {
    **{task: _SHORT_QA for task in ("nq", "triviaqa", "hotpotqa", "2wikimqa", "popqa", "qa")},
    "fever": ["accuracy"],
    "eli5": ["rouge_l"],
    "asqa": ["str_em", "rouge_l"],
}


def task_metrics(task: str) -> list[str]:
    """The metric names reported for ``task``; unknown tasks are short-answer QA (match, em, f1)."""
    return list(TASK_METRICS.get(task, _SHORT_QA))


def score_record(record: dict[str, Any], metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Score one ``infer`` output record with its task's metrics.

    Args:
        record: Output record (``task``, ``answers``, ``answer``, ``error``, and the input's
            extra fields such as ``qa_pairs`` / ``annotations`` at top level).
        metrics: Metric names to compute instead of the task's (keys of :data:`METRICS`).

    Returns:
        Metric name -> score. A record with an ``error`` or no ``answer`` scores 0.0 on every
        metric: failed records count as wrong, never as missing.

    Raises:
        ValueError: An unknown metric name, or an ASQA record without ``qa_pairs``.
    """
    if metrics is None:
        # a benchmark config may name the metrics of its runs (stored on each record)
        metrics = record.get("metrics") or task_metrics(record.get("task") or "qa")
    names = list(metrics)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
    answer = record.get("answer")
    if record.get("error") is not None or answer is None:
        return dict.fromkeys(names, 0.0)
    return {name: METRICS[name](answer, record) for name in names}
