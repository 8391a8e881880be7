"""Oracle ceilings of a benchmark table: how much a perfect choice of passages could gain.

Two oracles choose, per question and knowing the gold answer, among candidate selections of
the reranker's input (the retrieved top-N, in retrieval order):

* ``oracle-k``: the prefixes ``[]``, ``[1]``, ``[1, 2]``, ... ``[1..N]`` (the best fixed k per
  question); it answers a question when any k does, and the smallest such k is the k it needs.
* ``oracle-single``: each passage alone, ``[1]`` ... ``[N]``; the answer without passages is
  also asked, for the row note "or no passage".

Each candidate is answered by the (cached) generator and scored with the question's headline
metric (``match`` for short-answer QA, see :func:`dynamicrag.evaluate.report.main_metric`). The
candidates are asked in order, and a question stops at its first candidate scoring 1.0, the
metric's maximum: the oracle's choice (the first best) is then known, and a question answered at
small k costs a few generator calls, not N + 1. A question no candidate scores 1.0 on has all
of them asked and keeps the first best (``[]`` for oracle-k, ``[1]`` for oracle-single when all
score 0).

The output records are ordinary ``infer`` records (``selected`` = the oracle's choice, its
answer) plus an ``oracle`` field with every candidate asked, its answer and score, so the
benchmark table scores them like any run and nothing is hidden.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynamicrag.evaluate.answer_metrics import score_record
from dynamicrag.generate import Generator
from dynamicrag.isolation import error_text, run_isolated
from dynamicrag.schema import Example, Selection, to_record

logger = logging.getLogger(__name__)

ORACLES = ("oracle-k", "oracle-single")


def _main_metric(task: str) -> str:
    from dynamicrag.evaluate.report import main_metric  # report imports plotting helpers: load late

    return main_metric(task)


def oracle_candidates(kind: str, n: int) -> list[list[int]]:
    """The selections an oracle chooses among, for ``n`` candidate passages, in asking order."""
    if kind == "oracle-k":
        return [list(range(1, k + 1)) for k in range(n + 1)]
    if kind == "oracle-single":
        return [[i] for i in range(1, n + 1)]
    raise ValueError(f"unknown oracle {kind!r}; choose one of {list(ORACLES)}")


@dataclass
class _Question:
    example: Example
    candidates: list[list[int]]
    metric: str
    answers: list[str]
    scores: list[float]
    no_passage: tuple[str, float] | None = None

    @property
    def done(self) -> bool:
        return len(self.scores) == len(self.candidates) or (bool(self.scores) and self.scores[-1] >= 1.0)


@dataclass
class Oracle:
    """Answer each question with every candidate selection (until one scores 1.0) and keep the best.

    Args:
        kind: ``"oracle-k"`` or ``"oracle-single"``.
        generator: Answers; a :class:`~dynamicrag.evaluate.answer_cache.CachedGenerator` makes
            the prompts other rows already asked free.
    """

    kind: str
    generator: Generator

    def __post_init__(self) -> None:
        if self.kind not in ORACLES:
            raise ValueError(f"unknown oracle {self.kind!r}; choose one of {list(ORACLES)}")

    def _score(self, q: _Question, ids: list[int], answer: str) -> float:
        return score_record(to_record(q.example, Selection(ids=ids), answer), [q.metric])[q.metric]

    def run(self, examples: Sequence[Example]) -> list[dict[str, Any]]:
        """One record per example (its passages already the candidates), in order.

        A batch the generator fails on is retried one example at a time; an example that still
        fails becomes a record with its ``error``, never dropped.
        """
        return run_isolated(
            self._run, examples, lambda ex, err: to_record(ex, None, None, error_text(err)), what="example", log=logger
        )

    def _run(self, examples: Sequence[Example]) -> list[dict[str, Any]]:
        questions = [
            _Question(ex, oracle_candidates(self.kind, len(ex.passages)), _main_metric(ex.task), [], [])
            for ex in examples
        ]
        if self.kind == "oracle-single":  # the note "or no passage": the answer without passages
            answers = self.generator.answer(examples, [Selection() for _ in examples])
            for q, answer in zip(questions, answers):
                q.no_passage = (answer, self._score(q, [], answer))
        # Round r asks every open question its r-th candidate, in one generator batch.
        while open_ := [q for q in questions if not q.done]:
            asked = [q.candidates[len(q.scores)] for q in open_]
            answers = self.generator.answer([q.example for q in open_], [Selection(ids=ids) for ids in asked])
            for q, ids, answer in zip(open_, asked, answers):
                q.answers.append(answer)
                q.scores.append(self._score(q, ids, answer))
        return [self._record(q) for q in questions]

    def _record(self, q: _Question) -> dict[str, Any]:
        if not q.candidates:  # oracle-single on a question without passages: nothing to choose
            record = to_record(q.example, Selection(), None, "no passages to choose a single one from")
            best_score = 0.0
        else:
            best = max(range(len(q.scores)), key=q.scores.__getitem__)  # the first of the best
            record = to_record(q.example, Selection(ids=q.candidates[best]), q.answers[best])
            best_score = q.scores[best]
        record["oracle"] = {
            "kind": self.kind,
            "metric": q.metric,
            "best_score": best_score,
            "candidates": q.candidates[: len(q.scores)],
            "answers": q.answers,
            "scores": q.scores,
        }
        if q.no_passage is not None:
            record["oracle"]["no_passage"] = {"answer": q.no_passage[0], "score": q.no_passage[1]}
        return record


def oracle_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What an oracle run needed: its score, the k it needed, what it could not answer.

    Args:
        records: Records written by :class:`Oracle` (each with an ``oracle`` field).

    Returns:
        ``n``; ``score`` (mean best score); ``answered`` (questions whose best score is above
        0); ``unanswerable`` (the rest); ``k_needed`` (k -> questions, over the answered ones:
        the size of the oracle's choice, the smallest that reaches the best score); for
        oracle-single also ``or_no_passage`` (the mean score when the answer without passages
        may be chosen too).
    """
    oracles = [r.get("oracle") or {"best_score": 0.0} for r in records]
    answered = [(r, o) for r, o in zip(records, oracles) if o["best_score"] > 0]
    out: dict[str, Any] = {
        "n": len(records),
        "score": sum(o["best_score"] for o in oracles) / len(records) if records else 0.0,
        "answered": len(answered),
        "unanswerable": len(records) - len(answered),
        "k_needed": dict(sorted(Counter(len(r["selected"]) for r, _ in answered).items())),
    }
    if any("no_passage" in o for o in oracles):
        out["or_no_passage"] = sum(
            max(o["best_score"], o.get("no_passage", {}).get("score", 0.0)) for o in oracles
        ) / len(records)
    return out


__all__ = ["ORACLES", "Oracle", "oracle_candidates", "oracle_summary"]
