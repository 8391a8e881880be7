"""retrieve -> rerank -> generate over a batch of examples, one output record per example."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynamicrag.generate import Generator
from dynamicrag.isolation import error_text, run_isolated
from dynamicrag.llm.base import Completion
from dynamicrag.rerank import Reranker
from dynamicrag.schema import Example, Selection, to_record

logger = logging.getLogger(__name__)


def with_passages(
    examples: Sequence[Example], retriever: Any, top_n: int, retrieve: bool = False
) -> list[Example]:
    """Copies of ``examples`` holding their top-N candidates.

    Args:
        examples: The batch.
        retriever: Index searched for examples without passages (or for all, see ``retrieve``).
        top_n: Candidates per example.
        retrieve: Retrieve for every example, even those that come with passages. Their own
            gold passages (``isgold``, e.g. NQ-open's oracle passage) then mark the retrieved
            passages with the same title and text ``isgold`` True (others False), so the
            reranker's selection can still be scored against gold.

    Returns:
        Each example with its own first ``top_n`` passages, or the retriever's top ``top_n``.
    """
    if retrieve:
        if retriever is None:
            raise ValueError("retrieve=True needs a retriever (an index)")
        found = retriever.search([ex.question for ex in examples], top_n)
        out = []
        for ex, passages in zip(examples, found):
            gold = {(p.title, p.text) for p in ex.passages if p.extra.get("isgold")}
            if gold:
                passages = [
                    p.model_copy(update={"extra": {**p.extra, "isgold": (p.title, p.text) in gold}}) for p in passages
                ]
            out.append(ex.model_copy(update={"passages": passages}))
        return out
    own = [ex.model_copy(update={"passages": ex.passages[:top_n]}) for ex in examples]
    need = [i for i, ex in enumerate(own) if not ex.passages]
    if need and retriever is not None:
        for i, passages in zip(need, retriever.search([own[i].question for i in need], top_n)):
            own[i].passages = passages
    return own


def retrieve_batch_fn(index_dir: str, top_n: int) -> Callable[[list[Example]], list[dict[str, Any]]]:
    """The batch function of ``dynamicrag retrieve`` (see :mod:`dynamicrag.executors`): each
    example with the index's top ``top_n`` passages, as JSON records."""
    from dynamicrag.retrieve import load_index

    retriever = load_index(index_dir)
    return lambda batch: [ex.model_dump(mode="json") for ex in with_passages(batch, retriever, top_n, retrieve=True)]


def infer_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What an ``infer`` output holds: ``records``, ``answered``, ``failed``, ``malformed``
    (reranker outputs off the id grammar) and ``mean_k`` (over the answered records)."""
    answered = [r for r in records if not r.get("error")]
    return {
        "records": len(records),
        "answered": len(answered),
        "failed": len(records) - len(answered),
        "malformed": sum(1 for r in records if r.get("well_formed") is False),
        "mean_k": sum(len(r["selected"]) for r in answered) / len(answered) if answered else 0.0,
    }


@dataclass
class Outcome:
    """One example through the pipeline.

    Args:
        example: The example with the candidates the reranker saw (the input example when it
            failed before retrieval ended).
        selection: The reranker's choice; None when the example failed before it.
        completion: The generator's answer; None when the selection was unusable, the example
            failed, or no answer was asked for.
        error: Why the example failed (an exception), or None.
        timings: Seconds spent on the batch the example ran in: ``retrieve``, ``rerank``,
            ``generate`` (the model calls are made for the whole batch).
    """

    example: Example
    selection: Selection | None
    completion: Completion | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def answer(self) -> str | None:
        return self.completion.text if self.completion is not None else None

    def record(self) -> dict[str, Any]:
        """The output record of ``infer`` (:func:`~dynamicrag.schema.to_record`)."""
        record = to_record(self.example, self.selection, self.answer, self.error)
        if self.completion is not None and "snapped_from" in self.completion.extra:
            # A label snapped after the fact (the backend could not constrain): keep the model's text.
            record["answer_raw"] = self.completion.extra["snapped_from"]
        return record


@dataclass
class Pipeline:
    """The method end to end.

    Args:
        reranker: Chooses passages (the dynamic reranker, or a baseline).
        generator: Answers from the chosen passages.
        retriever: Fills ``passages`` for examples that come without their own; None means
            such examples get no passages.
        top_n: Candidates the reranker sees: the first ``top_n`` of the example's own passages,
            or the retriever's top ``top_n``.
        retrieve: Retrieve for every example, even those with their own passages (which then
            only mark gold); see :func:`with_passages`.
        settings: What plays each role (:func:`dynamicrag.build.role_settings`), for run records.
    """

    reranker: Reranker
    generator: Generator
    retriever: Any = None
    top_n: int = 40
    retrieve: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def run(self, examples: Sequence[Example]) -> list[dict[str, Any]]:
        """Answer a batch: one record per example, in order (see :meth:`answer`)."""
        return [outcome.record() for outcome in self.answer(examples)]

    def answer(self, examples: Sequence[Example], generate: bool = True) -> list[Outcome]:
        """Retrieve, rerank and answer a batch. A failing example keeps its ``error``; never dropped.

        The batch goes through the models together; if that raises, the examples are run one by
        one so one bad example does not sink the others (:func:`~dynamicrag.isolation.run_isolated`).

        Args:
            examples: The batch.
            generate: Answer them (False: retrieve and rerank only, e.g. to stream the answer).
        """

        def batch(group: list[Example]) -> list[Outcome]:
            start = time.perf_counter()
            shown = with_passages(group, self.retriever, self.top_n, self.retrieve)
            return self.rerank_and_answer(shown, [generate] * len(shown), {"retrieve": time.perf_counter() - start})

        return run_isolated(batch, examples, _failed, what="example", log=logger)

    def rerank_and_answer(
        self, examples: Sequence[Example], answer: Sequence[bool] | None = None, timings: dict[str, float] | None = None
    ) -> list[Outcome]:
        """Rerank examples that hold their candidates already, and answer them.

        Args:
            examples: The batch, each with the passages the reranker is to see.
            answer: Which examples get an answer (default: all); the others are only reranked.
            timings: Seconds already spent on the batch (e.g. ``retrieve``), kept in the outcomes.

        Returns:
            One :class:`Outcome` per example. An unusable reranker output leaves the example
            without an answer: it is counted as failed (its selection's error), never silently
            answered some other way or dropped.
        """
        timings = dict(timings or {})
        start = time.perf_counter()
        selections: list[Selection] = self.reranker.select(examples)
        reranked = time.perf_counter()
        wanted = answer if answer is not None else [True] * len(examples)
        usable = [i for i, sel in enumerate(selections) if sel.error is None and wanted[i]]
        completions = self.generator.complete([examples[i] for i in usable], [selections[i] for i in usable])
        completion_of = dict(zip(usable, completions))
        timings.update(rerank=reranked - start, generate=time.perf_counter() - reranked)
        return [Outcome(ex, sel, completion_of.get(i), timings=timings)
                for i, (ex, sel) in enumerate(zip(examples, selections))]


def _failed(example: Example, err: Exception) -> Outcome:
    return Outcome(example, None, error=error_text(err))
