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

The ``utility`` teacher (:mod:`dynamicrag.train.utility`) asks the generator itself: a
passage's score is how much it raises the teacher-forced log-likelihood of a gold answer over
no passage (nats), and the teacher's verdict is an ordered expert list (best first, stopping
when the next passage no longer helps, ``None`` when no passage beats no passage), written to
``Example.extra["expert"]`` (1-based positions) with its log-likelihoods and cost in
``Example.extra["utility"]``. Its ``threshold`` is the margin in nats a passage must add, its
``top_m`` the longest list, and its default rule ``teacher`` (the likelihood of the gold
answer already knows where the answer is; a bridge paragraph that raises it is kept).

The ``evidence`` teacher (:class:`EvidenceTeacher`, no model) teaches only where to stop over
the candidates' order: its expert list is the shortest prefix that holds the gold evidence,
every supporting paragraph where the data marks them (HotpotQA's ``supporting``, so bridge
paragraphs count), else the first passage holding a gold answer; at most ``top_m`` long, and
``None`` when no candidate holds any. Its default rule is ``teacher`` (the prefix is the list).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dynamicrag.data import DataError, read_jsonl
from dynamicrag.evaluate.normalize import contains_answer, normalize_answer
from dynamicrag.isolation import error_text, run_isolated
from dynamicrag.rerank.cutoff import score_order
from dynamicrag.rerank.pointwise import SCORERS, Scorer, check_scorer, make_scorer
from dynamicrag.schema import Example, Passage
from dynamicrag.train.utility import (
    ANSWER_FORMS,
    DEFAULT_MARGIN,
    DEFAULT_TIE_MARGIN,
    EXPERT_RULES,
    UtilityResult,
    UtilityTeacher,
)

logger = logging.getLogger(__name__)

LABEL_ERROR = "label_error"
"""``Example.extra`` key of an example the teacher failed on (the exception, as text)."""

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
    "utility": TeacherDefaults(DEFAULT_MARGIN, 5),  # nats a passage must add; at most 5 in a list
    "evidence": TeacherDefaults(0.0, 5),  # no score to threshold; prefixes of at most 5
}
"""Scorer kind (the part of ``LabelConfig.scorer`` before ``:``) -> default threshold, top_m."""

TEACHER_KINDS = frozenset(SCORERS) | {"utility", "evidence"}
"""Teacher kinds of ``LabelConfig.scorer``: the pointwise scorers, the generator's utility, and
the gold evidence's prefix."""


@dataclass
class LabelConfig:
    """Teacher labelling options (``dynamicrag label``)."""

    scorer: str = field(
        default="embedding",
        metadata={"help": "Teacher: embedding[:encoder] | monot5[:model] | cross-encoder[:model] | causal[:model] "
                  "(the paper: monot5) | utility[:model] (the generator's likelihood of the gold answer) | "
                  "evidence (the shortest prefix of the candidates holding the gold evidence)"},
    )
    top_n: int = field(
        default=10,
        metadata={"help": "Passages kept and labelled per example (the first top_n in retrieval order); "
                  "they are the candidates of the reranker's training prompt"},
    )
    order_by: str | None = field(
        default=None,
        metadata={"help": "A scorer (as --scorer of infer, e.g. query-likelihood) that orders the top_n candidates "
                  "before labelling: the order the reranker's training prompt shows them in, and the one its "
                  "inference must use (null: retrieval order)"},
    )
    rule: LabelRule | None = field(
        default=None,
        metadata={"help": "teacher_and_answer | teacher (the paper) | answer | teacher_or_answer; default: "
                  "teacher for utility, teacher_and_answer for the others; label tasks (fever) and examples "
                  "without answers use the teacher alone"},
    )
    threshold: float | None = field(
        default=None,
        metadata={"help": "Teacher score above which a passage is relevant; default by scorer kind: "
                  "monot5/causal log(0.5), cross-encoder 0.0, embedding 0.45; utility: the nats a passage "
                  f"must add to the gold answer's log-likelihood ({DEFAULT_MARGIN})"},
    )
    top_m: int | None = field(
        default=None,
        metadata={"help": "Only an example's top_m best-scored passages can be teacher-relevant "
                  "(0: no cap); default by scorer kind: embedding 3, utility 5 (the longest expert list), others 0"},
    )
    prompt_style: str = field(
        default="default",
        metadata={"help": "utility: prompt style of the generator prompt scored (the one used at inference)"},
    )
    tie_margin: float = field(
        default=DEFAULT_TIE_MARGIN,
        metadata={"help": "utility: utilities closer than this (nats) are a tie, broken toward retrieval order"},
    )
    answer_form: str = field(
        default="phrase",
        metadata={"help": "utility: surface form of the gold answer scored: phrase (the answer alone) | "
                  "sentence ('The answer is ...')"},
    )
    max_answers: int = field(
        default=3, metadata={"help": "utility: most gold answers scored per question (log-sum-exp of their likelihoods)"}
    )
    expert: str = field(
        default="best-first",
        metadata={"help": "utility: how the expert list is built: best-first (by utility, while each passage adds "
                  "the margin) | prefix (the candidates' order kept, as many as pay the margin each: with "
                  "order_by, teaches when to stop over that order)"},
    )

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in TEACHER_KINDS:
            raise ValueError(f"scorer: unknown kind {kind!r}; use one of {sorted(TEACHER_KINDS)}")
        if self.rule is None:
            self.rule = LabelRule.teacher if kind in ("utility", "evidence") else LabelRule.teacher_and_answer
        try:
            self.rule = LabelRule(self.rule)
        except ValueError:
            raise ValueError(
                f"rule: unknown rule {self.rule!r}; use one of {sorted(r.value for r in LabelRule)}"
            ) from None
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n}")
        if self.order_by not in (None, "none"):
            try:
                check_scorer(str(self.order_by))
            except ValueError as err:
                raise ValueError(f"order_by: {err}, or null") from None
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
        if kind == "utility" and self.threshold < 0:
            raise ValueError(f"threshold: the utility margin must be >= 0 nats, got {self.threshold}")
        if not (self.tie_margin >= 0 and math.isfinite(self.tie_margin)):
            raise ValueError(f"tie_margin must be a finite number >= 0, got {self.tie_margin}")
        if self.answer_form not in ANSWER_FORMS:
            raise ValueError(f"answer_form: unknown form {self.answer_form!r}; use one of {sorted(ANSWER_FORMS)}")
        if self.max_answers < 1:
            raise ValueError(f"max_answers must be >= 1, got {self.max_answers}")
        if self.expert not in EXPERT_RULES:
            raise ValueError(f"expert: unknown rule {self.expert!r}; use one of {list(EXPERT_RULES)}")

    @property
    def kind(self) -> str:
        """The teacher kind: the part of ``scorer`` before ``:``."""
        return self.scorer.partition(":")[0]


@dataclass(frozen=True)
class EvidenceTeacher:
    """The ``evidence`` teacher: the shortest prefix of the candidates holding the gold evidence.

    Written by hand because it is a rule over the data's own gold marks, not a model: a
    reranker taught these lists learns only how far to read in the order it is shown (one
    passage where one holds the answer, as far as the last supporting paragraph on a
    multi-hop question), never a reordering.
    """

    max_k: int = 5

    def needed(self, example: Example) -> list[bool]:
        """Which candidates the answer needs: the supporting paragraphs where the data marks them,
        else the first passage holding a gold answer (none for label answers such as FEVER's)."""
        passages = example.passages
        if any("supporting" in p.extra for p in passages):
            return [bool(p.extra.get("supporting")) for p in passages]
        if not uses_containment(example):
            return [False] * len(passages)
        holds = [contains_answer(f"{p.title} {p.text}", example.answers) for p in passages]
        first = holds.index(True) if any(holds) else len(holds)
        return [i == first for i in range(len(holds))]

    def expert(self, needed: Sequence[bool]) -> list[int]:
        """0-based positions of the expert prefix over candidates marked by :meth:`needed`
        (``[]``: ``None``)."""
        if not any(needed):
            return []
        last = max(i for i, n in enumerate(needed) if n)
        return list(range(min(last + 1, self.max_k) if self.max_k > 0 else last + 1))


Teacher = Scorer | UtilityTeacher | EvidenceTeacher
"""A pointwise scorer, the utility teacher (which needs the gold answers and labels whole
examples), or the evidence teacher (the data's gold marks)."""


def make_teacher(config: LabelConfig, backend: Any = None) -> Teacher:
    """The teacher of ``config.scorer``: a pointwise scorer, or a :class:`UtilityTeacher` on
    ``backend`` (None: the transformers backend of its model, the bundled SmolLM2 when none is
    named)."""
    if config.kind == "evidence":
        return EvidenceTeacher(max_k=config.top_m)  # type: ignore[arg-type]
    if config.kind != "utility":
        return make_scorer(config.scorer)
    if backend is None:
        from dynamicrag.llm import load_backend

        backend = load_backend("transformers", config.scorer.partition(":")[2].strip() or None)
    return UtilityTeacher(
        backend, config.prompt_style, margin=config.threshold,  # type: ignore[arg-type]
        tie_margin=config.tie_margin, max_k=config.top_m, answer_form=config.answer_form,  # type: ignore[arg-type]
        max_answers=config.max_answers, expert=config.expert,
    )


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


def _labelled(example: Example, passages: Sequence[Passage], scores: Sequence[float], teacher: Sequence[bool],
              config: LabelConfig, extra: dict[str, Any]) -> Example:
    """The labelled copy: scores, the teacher's verdicts, containment and the rule's verdict."""
    containment = uses_containment(example)
    labelled: list[Passage] = []
    for p, score, says in zip(passages, scores, teacher):
        has_answer = contains_answer(f"{p.title} {p.text}", example.answers) if containment else None
        p_extra: dict[str, Any] = dict(p.extra)
        if p.score is not None:
            p_extra["retrieval_score"] = p.score
        p_extra.update(
            teacher_relevant=says,
            has_answer=has_answer,
            relevant=combine(config.rule, says, has_answer),  # type: ignore[arg-type]
        )
        labelled.append(p.model_copy(update={"score": score, "extra": p_extra}))
    rule = config.rule.value if containment else LabelRule.teacher.value  # type: ignore[union-attr]
    return example.model_copy(
        update={"passages": labelled, "extra": {**example.extra, **extra, "label_rule": rule}}
    )


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
    return _labelled(example, passages, scores, teacher, config, {})


def utility_labelled(example: Example, result: UtilityResult, config: LabelConfig) -> Example:
    """A labelled copy of ``example`` (its first ``config.top_n`` passages) from the utility teacher.

    ``score`` is each passage's utility (nats); the teacher's verdict is membership of the
    expert list, whose order goes to ``extra["expert"]`` (1-based positions, ``[]`` for
    ``None``); ``extra["utility"]`` keeps the log-likelihoods, the answers scored, the stop
    rule's steps and the cost.
    """
    passages = example.passages[: config.top_n]
    expert = set(result.expert)
    extra = {
        "expert": [i + 1 for i in result.expert],
        "utility": {
            "none_ll": result.none_ll, "expert_ll": result.expert_ll, "answers": result.answers,
            "steps": result.steps, "cost": result.cost, "answer_form": config.answer_form,
            "margin": config.threshold, "tie_margin": config.tie_margin, "model": config.scorer,
            "expert_rule": config.expert,
        },
    }
    return _labelled(example, passages, result.utilities, [i in expert for i in range(len(passages))], config, extra)


def evidence_labelled(example: Example, teacher: EvidenceTeacher, config: LabelConfig) -> Example:
    """A labelled copy of ``example`` (its first ``config.top_n`` passages) from the evidence
    teacher: ``score`` 1.0 for a passage the answer needs, else 0.0; the teacher's verdict is
    membership of the expert prefix, written to ``extra["expert"]`` (1-based, ``[]`` for ``None``)."""
    shown = example.model_copy(update={"passages": example.passages[: config.top_n]})
    needed = teacher.needed(shown)
    expert = teacher.expert(needed)
    scores = [float(n) for n in needed]
    verdicts = [i in expert for i in range(len(shown.passages))]
    return _labelled(shown, shown.passages, scores, verdicts, config, {"expert": [i + 1 for i in expert]})


def label_examples(examples: Iterable[Example], scorer: Teacher, config: LabelConfig) -> list[Example]:
    """Label every example (copies; the inputs are not changed).

    Args:
        examples: Examples with their retrieved passages, in retrieval order.
        scorer: The teacher (build it with :func:`make_teacher`); a :class:`UtilityTeacher`
            labels the whole batch in batched forward passes.
        config: Labelling options.

    Returns:
        One labelled :class:`~dynamicrag.schema.Example` per input, in input order, keeping
        the first ``config.top_n`` passages. An example the teacher fails on (an exception,
        even when scored alone) keeps its passages unlabelled and the error in
        ``extra["label_error"]``; the others are labelled as usual
        (:func:`~dynamicrag.isolation.run_isolated`), and :func:`read_labelled` leaves it out.
    """

    def label(batch: list[Example]) -> list[Example]:
        if isinstance(scorer, EvidenceTeacher):
            return [evidence_labelled(ex, scorer, config) for ex in batch]
        if isinstance(scorer, UtilityTeacher):
            shown = [ex.model_copy(update={"passages": ex.passages[: config.top_n]}) for ex in batch]
            return [utility_labelled(ex, r, config) for ex, r in zip(shown, scorer.label(shown))]
        return [label_example(ex, scorer, config) for ex in batch]

    def failed(example: Example, err: Exception) -> Example:
        return example.model_copy(update={"passages": example.passages[: config.top_n],
                                          "extra": {**example.extra, LABEL_ERROR: error_text(err)}})

    out = run_isolated(label, list(examples), failed, what="example", log=logger)
    fallback = sum(1 for ex in out if ex.extra.get("label_rule", config.rule.value) != config.rule.value)  # type: ignore[union-attr]
    if fallback and config.rule is not LabelRule.teacher:
        logger.info("%d of %d examples labelled by the teacher alone (label answers or none)", fallback, len(out))
    return out


def ordered_candidates(example: Example, scorer: Scorer, top_n: int) -> Example:
    """A copy of ``example`` with its first ``top_n`` passages, best scored first (``order_by``)."""
    shown = example.model_copy(update={"passages": example.passages[:top_n]})
    return shown.model_copy(update={"passages": [shown.passages[i] for i in score_order(scorer, shown)[0]]})


def label_batch_fn(config: LabelConfig, index_dir: str | None, retrieve: bool) -> Callable[[list[Example]], list[dict]]:
    """The batch function of ``dynamicrag label`` (see :mod:`dynamicrag.executors`): the teacher
    and the index load here, once per worker; each batch gets its candidates (its own first
    ``top_n`` passages, or the index's with ``retrieve``) and is labelled, as JSON records."""
    from dynamicrag.pipeline import with_passages
    from dynamicrag.retrieve import load_index

    teacher = make_teacher(config)
    retriever = load_index(index_dir) if index_dir else None
    order = None if config.order_by in (None, "none") else make_scorer(config.order_by)

    def label_batch(batch: list[Example]) -> list[dict]:
        batch = with_passages(batch, retriever, config.top_n, retrieve)
        if order is not None:
            batch = [ordered_candidates(ex, order, config.top_n) for ex in batch]
        labelled = label_examples(batch, teacher, config)
        return [ex.model_dump(mode="json") for ex in labelled]

    return label_batch


def label_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a label output holds: passages, the teacher's and the rule's verdicts, failures.

    Args:
        records: The output's records (``Example.model_dump`` each).

    Returns:
        ``examples``, ``passages``, ``teacher_yes``, ``has_answer``, ``relevant``,
        ``none_relevant`` (examples without a relevant passage), ``mean_relevant``,
        ``teacher_alone`` (examples labelled by the teacher alone), ``failed`` (the teacher
        raised), and ``utility`` (None, or for the utility teacher: ``questions``,
        ``none_share``, ``mean_k``, ``sequences``, ``forward_passes``, ``tokens_run`` per question).
    """
    labelled = [r for r in records if LABEL_ERROR not in r.get("extra", {})]
    passages = [p["extra"] for r in labelled for p in r["passages"]]
    relevant = [sum(bool(p["extra"].get("relevant")) for p in r["passages"]) for r in labelled]
    out: dict[str, Any] = {
        "examples": len(records),
        "passages": len(passages),
        "teacher_yes": sum(bool(p.get("teacher_relevant")) for p in passages),
        "has_answer": sum(p.get("has_answer") is True for p in passages),
        "relevant": sum(relevant),
        "none_relevant": sum(n == 0 for n in relevant),
        "mean_relevant": round(sum(relevant) / len(labelled), 2) if labelled else None,
        "teacher_alone": sum(r["extra"].get("label_rule") == LabelRule.teacher.value for r in labelled),
        "failed": len(records) - len(labelled),
        "utility": None,
    }
    costs = [r["extra"]["utility"] for r in labelled if "utility" in r["extra"]]
    if costs:
        experts = [r["extra"]["expert"] for r in labelled if "expert" in r["extra"]]
        mean = lambda key: sum(c["cost"].get(key, 0) for c in costs) / len(costs)  # noqa: E731
        out["utility"] = {
            "questions": len(costs), "none_share": sum(not e for e in experts) / len(experts),
            "mean_k": sum(map(len, experts)) / len(experts), "sequences": mean("sequences"),
            "forward_passes": mean("forward_passes"), "tokens_run": mean("tokens"),
        }
    return out


def read_labelled(path: str | Path) -> list[Example]:
    """Read the examples written by ``dynamicrag label`` (``Example.model_dump`` per line).

    Examples the teacher failed on (``extra["label_error"]``) are left out, with a warning
    naming how many and the first one's line.

    Raises:
        DataError: A line that is not an Example, or whose passages were never labelled
            (naming the file and line).
    """
    out = []
    failed: list[int] = []
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
        if LABEL_ERROR in example.extra:
            failed.append(line_no)
            continue
        if any("relevant" not in p.extra for p in example.passages):
            raise DataError("passages carry no 'relevant' label; run `dynamicrag label` first",
                            path=path, line=line_no)
        out.append(example)
    if failed:
        logger.warning("%s: %d examples the teacher failed on are left out (the first at line %d)",
                       path, len(failed), failed[0])
    return out


__all__ = [
    "LABEL_ANSWERS",
    "LABEL_ERROR",
    "LABEL_TASKS",
    "LabelConfig",
    "LabelRule",
    "TEACHER_DEFAULTS",
    "TEACHER_KINDS",
    "Teacher",
    "TeacherDefaults",
    "combine",
    "label_batch_fn",
    "label_example",
    "label_examples",
    "label_summary",
    "make_teacher",
    "utility_labelled",
    "read_labelled",
    "teacher_verdicts",
    "uses_containment",
]
