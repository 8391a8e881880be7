"""retrieve -> rerank -> generate over a batch of examples, one output record per example."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dynamicrag.generate import Generator
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
        """Answer a batch. A failing example becomes a record with its ``error``; never dropped.

        The batch goes through the models together; if that raises, the examples are retried
        one by one so one bad example does not sink the others.
        """
        try:
            return self._run_batch(with_passages(examples, self.retriever, self.top_n, self.retrieve))
        except Exception as err:  # noqa: BLE001 - isolate the failing example below
            if len(examples) == 1:
                logger.warning("example %s failed: %s", examples[0].id, err)
                return [to_record(examples[0], None, None, f"{type(err).__name__}: {err}")]
            logger.warning("batch failed (%s); retrying its %d examples one by one", err, len(examples))
            return [record for ex in examples for record in self.run([ex])]

    def _run_batch(self, examples: list[Example]) -> list[dict[str, Any]]:
        selections: list[Selection] = self.reranker.select(examples)
        usable = [i for i, sel in enumerate(selections) if sel.error is None]
        completions = self.generator.complete([examples[i] for i in usable], [selections[i] for i in usable])
        completion_of = dict(zip(usable, completions))
        # An unusable reranker output leaves the record without an answer: it is counted as
        # failed (error set), never silently answered some other way or dropped.
        records = []
        for i, (ex, sel) in enumerate(zip(examples, selections)):
            completion = completion_of.get(i)
            record = to_record(ex, sel, completion.text if completion else None)
            if completion is not None and "snapped_from" in completion.extra:
                # A label snapped after the fact (the backend could not constrain): keep the model's text.
                record["answer_raw"] = completion.extra["snapped_from"]
            records.append(record)
        return records
