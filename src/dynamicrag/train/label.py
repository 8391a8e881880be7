"""Teacher labelling: which retrieved passages are relevant to each training question.

The paper labels each (query, passage) pair with monoT5 (``Query: {q} Document: {text}
Relevant:`` -> ``true`` / ``false``). Here every passage gets

- ``score``: the teacher's score (the retriever's score, if any, moves to
  ``extra["retrieval_score"]``);
- ``extra["teacher_relevant"]``: the teacher's verdict, ``score > threshold`` (and, for
  uncalibrated scorers, among the example's ``top_m`` best);
- ``extra["has_answer"]``: a gold answer occurs in ``title + text`` after SQuAD
  normalisation, on whole tokens (:func:`~dynamicrag.evaluate.normalize.contains_answer`);
  None where containment does not apply;
- ``extra["relevant"]``: the verdict of the labelling rule.

Rules (:class:`LabelRule`); the default is ``teacher_and_answer``:

- ``teacher``: the paper's rule, the teacher alone.
- ``answer``: gold-answer containment alone.
- ``teacher_and_answer`` (default, a deviation from the paper): both must agree. The answer
  check guards against teacher false positives (passages on the topic that do not hold the
  answer, which would teach the reranker to select padding); the teacher guards against
  passages that merely contain the answer string by chance ("1990", "John", "yes").
- ``teacher_or_answer``: either one (higher recall, noisier).

Containment is meaningless when the "answers" are labels (FEVER's ``SUPPORTS`` / ``REFUTES``,
HotpotQA's ``yes`` / ``no`` comparison answers) or when an example has no gold answer: such
examples fall back to the teacher alone, and the rule actually applied is written to
``Example.extra["label_rule"]``. Known limit of the default rule on multi-hop data: a bridge
passage (needed, but not holding the answer) is dropped; use ``teacher`` or
``teacher_or_answer`` there if the reranker should learn to select bridges.

The teacher's threshold: monoT5-style scorers return log P(true) against false, so
``log(0.5)`` reproduces the paper's generated word (``true`` wins). Cross-encoder scores are
logits, so ``0.0`` is the same 50 % point. Cosine similarity (the offline default) is not
calibrated, so the embedding teacher says relevant when the cosine is above a floor of 0.45
*and* the passage is among the example's 3 best: on 30 HotpotQA training questions with the
bundled all-MiniLM-L6-v2, supporting paragraphs have a median cosine of 0.56 and distractors
0.33 (the floor keeps ~70 % of supporting paragraphs and drops ~75 % of distractors), and the
cap keeps a vague question from making every passage "relevant".

Example:
    >>> from dynamicrag.rerank.pointwise import make_scorer
    >>> config = LabelConfig()  # embedding teacher, top 10, teacher_and_answer
    >>> labelled = label_examples(examples, make_scorer(config.scorer), config)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dynamicrag.data import DataError, read_jsonl
from dynamicrag.evaluate.normalize import contains_answer, normalize_answer
from dynamicrag.rerank.pointwise import SCORERS, Scorer
from dynamicrag.schema import Example, Passage

logger = logging.getLogger(__name__)

# Tasks whose "answers" are class labels: string containment in a passage means nothing.
LABEL_TASKS = frozenset({"fever"})
# Answers that are labels whatever the task (HotpotQA comparison questions): "yes" occurs by
# chance in many passages and is absent from the ones that settle the question.
LABEL_ANSWERS = frozenset({"yes", "no"})


class LabelRule(str, Enum):
    """How the teacher's verdict and gold-answer containment combine into ``relevant``."""

    teacher_and_answer = "teacher_and_answer"
    teacher = "teacher"
    answer = "answer"
    teacher_or_answer = "teacher_or_answer"


@dataclass(frozen=True)
class TeacherDefaults:
    """Default verdict parameters of a scorer kind (see the module docstring for why)."""

    threshold: float
    top_m: int  # 0: no cap


TEACHER_DEFAULTS: dict[str, TeacherDefaults] = {
    "monot5": TeacherDefaults(math.log(0.5), 0),  # log P(true) > log 0.5  <=>  "true" is generated
    "causal": TeacherDefaults(math.log(0.5), 0),  # same yes/no score on a causal LM
    "cross-encoder": TeacherDefaults(0.0, 0),  # logit 0 = probability 0.5
    "embedding": TeacherDefaults(0.45, 3),  # uncalibrated cosine: a floor and a per-query cap
}
"""Scorer kind (the part of ``LabelConfig.scorer`` before ``:``) -> default threshold, top_m."""


@dataclass
class LabelConfig:
    """Teacher labelling options (``dynamicrag label``)."""

    scorer: str = field(
        default="embedding",
        metadata={"help": "Teacher: embedding[:encoder] | monot5[:model] | cross-encoder[:model] | causal[:model] "
                  "(the paper: monot5)"},
    )
    top_n: int = field(
        default=10,
        metadata={"help": "Passages kept and labelled per example (the first top_n in retrieval order); "
                  "they are the candidates of the reranker's training prompt"},
    )
    rule: LabelRule = field(
        default=LabelRule.teacher_and_answer,
        metadata={"help": "teacher_and_answer | teacher (the paper) | answer | teacher_or_answer; "
                  "label tasks (fever) and examples without answers use the teacher alone"},
    )
    threshold: float | None = field(
        default=None,
        metadata={"help": "Teacher score above which a passage is relevant; default by scorer kind: "
                  "monot5/causal log(0.5), cross-encoder 0.0, embedding 0.45"},
    )
    top_m: int | None = field(
        default=None,
        metadata={"help": "Only an example's top_m best-scored passages can be teacher-relevant "
                  "(0: no cap); default by scorer kind: embedding 3, others 0"},
    )

    def __post_init__(self) -> None:
        kind = self.scorer.partition(":")[0]
        if kind not in SCORERS:
            raise ValueError(f"scorer: unknown kind {kind!r}; use one of {sorted(SCORERS)}")
        try:
            self.rule = LabelRule(self.rule)
        except ValueError:
            raise ValueError(
                f"rule: unknown rule {self.rule!r}; use one of {sorted(r.value for r in LabelRule)}"
            ) from None
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n}")
        defaults = TEACHER_DEFAULTS.get(kind)
        if defaults is None and self.threshold is None:
            raise ValueError(f"threshold: no default for scorer kind {kind!r}; set one")
        if self.threshold is None:
            self.threshold = defaults.threshold
        elif math.isnan(self.threshold):
            raise ValueError("threshold must be a number, got NaN")
        if self.top_m is None:
            self.top_m = defaults.top_m if defaults else 0
        if self.top_m < 0:
            raise ValueError(f"top_m must be >= 0 (0: no cap), got {self.top_m}")


def uses_containment(example: Example) -> bool:
    """Whether gold-answer containment can judge this example's passages."""
    answers = {normalize_answer(a) for a in example.answers} - {""}
    return example.task.lower() not in LABEL_TASKS and bool(answers - LABEL_ANSWERS)


def combine(rule: LabelRule, teacher: bool, has_answer: bool | None) -> bool:
    """The rule's verdict; ``has_answer=None`` (containment not applicable) means the teacher alone."""
    if has_answer is None:
        return teacher
    if rule is LabelRule.teacher:
        return teacher
    if rule is LabelRule.answer:
        return has_answer
    if rule is LabelRule.teacher_and_answer:
        return teacher and has_answer
    return teacher or has_answer


def teacher_verdicts(scores: Sequence[float], threshold: float, top_m: int = 0) -> list[bool]:
    """``score > threshold``, and among the ``top_m`` best when ``top_m > 0`` (NaN: never)."""
    above = [not math.isnan(s) and s > threshold for s in scores]
    if top_m <= 0:
        return above
    # Stable sort: equal scores keep retrieval order, so the cap is deterministic.
    order = sorted(range(len(scores)), key=lambda i: -scores[i] if not math.isnan(scores[i]) else math.inf)
    best = set(order[:top_m])
    return [ok and i in best for i, ok in enumerate(above)]


def label_example(example: Example, scorer: Scorer, config: LabelConfig) -> Example:
    """A labelled copy of ``example`` with its first ``config.top_n`` passages (see module doc)."""
    passages = example.passages[: config.top_n]
    scores = [float(s) for s in scorer.score(example.question, passages)] if passages else []
    if len(scores) != len(passages):
        raise ValueError(
            f"scorer {type(scorer).__name__} returned {len(scores)} scores for "
            f"{len(passages)} passages (example {example.id!r})"
        )
    teacher = teacher_verdicts(scores, config.threshold, config.top_m)  # type: ignore[arg-type]
    containment = uses_containment(example)
    labelled: list[Passage] = []
    for p, score, says in zip(passages, scores, teacher):
        has_answer = contains_answer(f"{p.title} {p.text}", example.answers) if containment else None
        extra: dict[str, Any] = dict(p.extra)
        if p.score is not None:
            extra["retrieval_score"] = p.score
        extra.update(
            teacher_relevant=says,
            has_answer=has_answer,
            relevant=combine(config.rule, says, has_answer),  # type: ignore[arg-type]
        )
        labelled.append(p.model_copy(update={"score": score, "extra": extra}))
    rule = config.rule.value if containment else LabelRule.teacher.value  # type: ignore[union-attr]
    return example.model_copy(
        update={"passages": labelled, "extra": {**example.extra, "label_rule": rule}}
    )


def label_examples(examples: Iterable[Example], scorer: Scorer, config: LabelConfig) -> list[Example]:
    """Label every example (copies; the inputs are not changed).

    Args:
        examples: Examples with their retrieved passages, in retrieval order.
        scorer: The teacher (build it with ``make_scorer(config.scorer)``).
        config: Labelling options.

    Returns:
        One labelled :class:`~dynamicrag.schema.Example` per input, in input order, keeping
        the first ``config.top_n`` passages.
    """
    out = [label_example(ex, scorer, config) for ex in examples]
    fallback = sum(1 for ex in out if ex.extra["label_rule"] != config.rule.value)  # type: ignore[union-attr]
    if fallback and config.rule is not LabelRule.teacher:
        logger.info("%d of %d examples labelled by the teacher alone (label answers or none)", fallback, len(out))
    return out


def read_labelled(path: str | Path) -> list[Example]:
    """Read the examples written by ``dynamicrag label`` (``Example.model_dump`` per line).

    Raises:
        DataError: A line that is not an Example, or whose passages were never labelled
            (naming the file and line).
    """
    out = []
    for line_no, record in read_jsonl(path):
        try:
            example = Example.model_validate(record)
        except ValidationError as err:
            first = err.errors()[0]
            raise DataError(
                f"not a labelled example (expected the output of `dynamicrag label`): "
                f"field {'.'.join(map(str, first['loc']))}: {first['msg']}",
                path=path, line=line_no,
            ) from err
        if any("relevant" not in p.extra for p in example.passages):
            raise DataError("passages carry no 'relevant' label; run `dynamicrag label` first",
                            path=path, line=line_no)
        out.append(example)
    return out


__all__ = [
    "LABEL_ANSWERS",
    "LABEL_TASKS",
    "LabelConfig",
    "LabelRule",
    "TEACHER_DEFAULTS",
    "TeacherDefaults",
    "combine",
    "label_example",
    "label_examples",
    "read_labelled",
    "teacher_verdicts",
    "uses_containment",
]
