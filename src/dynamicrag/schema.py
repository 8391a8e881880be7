"""The one vocabulary every stage speaks: Passage, Example, Selection.

One example travels through the pipeline: a loader builds an :class:`Example`, the retriever
fills ``passages``, the reranker adds a :class:`Selection`, the generator adds an answer, and
:func:`to_record` turns the lot into one output JSON line. Training stages read and write the
same records.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Task names decide the generator's task line and, later, the metrics. Anything else is
# accepted and treated as open-domain short-answer QA.
KNOWN_TASKS = ("nq", "triviaqa", "hotpotqa", "2wikimqa", "popqa", "fever", "eli5", "asqa", "qa")


class Passage(BaseModel):
    """A retrievable unit of text.

    Args:
        id: Identifier unique within its corpus (DPR id, FlashRAG id, or ``"{source}:{n}"``).
        title: Title of the page or document; may be empty.
        text: The passage body.
        score: Retriever or teacher score, when one was computed.
        extra: Any other field of the source record (``hasanswer``, ``isgold``, ...), kept as is.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str = ""
    text: str
    score: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Flat JSON as written to output records: id, title, text, score, then extra fields."""
        out: dict[str, Any] = {"id": self.id, "title": self.title, "text": self.text}
        if self.score is not None:
            out["score"] = self.score
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


class Example(BaseModel):
    """A question with its gold answers and candidate passages.

    Args:
        id: Identifier of the example (from the source, or ``"{file stem}-{line}"``).
        question: The question, or the claim for FEVER.
        answers: Gold answers (FEVER: the label); may be empty for unlabelled questions.
        task: Dataset or task name (``nq``, ``hotpotqa``, ``fever``, ``eli5``, ``asqa``, ...).
        passages: Candidate passages in retrieval order (the example's own ``ctxs``, or filled
            by a retriever).
        extra: Every other field of the source record, kept so outputs carry the input through.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    answers: list[str] = Field(default_factory=list)
    task: str = "qa"
    passages: list[Passage] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


class Selection(BaseModel):
    """What the dynamic reranker chose for one example.

    Args:
        ids: 1-based positions into the passages the reranker saw, in the chosen order.
            Empty when the model said ``None`` or when the output was unusable.
        raw: The model's raw output (for the top-N reduction: the outputs of every call,
            joined with ``" || "``).
        well_formed: True when the output followed the id grammar exactly (``[3], [1]`` or
            ``None``); a malformed output may still yield ids where they were unambiguous.
        error: Why no selection could be read, or None.
        calls: LLM calls made to reach this selection (1, or more for the top-N reduction).
        prompt_tokens: Prompt tokens over those calls (the cost benchmarks read these).
        completion_tokens: Generated tokens over those calls.
    """

    ids: list[int] = Field(default_factory=list)
    raw: str = ""
    well_formed: bool = True
    error: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def k(self) -> int:
        return len(self.ids)


def to_record(
    example: Example,
    selection: Selection | None,
    answer: str | None,
    error: str | None = None,
) -> dict[str, Any]:
    """The output record of ``infer``: the input fields, then what each stage added.

    ``selected`` holds 1-based positions into ``passages`` (what the reranker saw), in order.
    """
    record: dict[str, Any] = dict(example.extra)
    record.update(
        {
            "id": example.id,
            "question": example.question,
            "answers": example.answers,
            "task": example.task,
            "passages": [p.to_json() for p in example.passages],
            "selected": selection.ids if selection is not None else [],
            "reranker_output": selection.raw if selection is not None else None,
            "well_formed": selection.well_formed if selection is not None else None,
            "answer": answer,
            "error": error if error is not None else (selection.error if selection else None),
        }
    )
    return record
