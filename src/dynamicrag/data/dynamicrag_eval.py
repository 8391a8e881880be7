"""DynamicRAG / Self-RAG evaluation records, ASQA (ALCE) records and NQ-open.

One record shape covers them all: ``question``; gold answers in ``answers`` (list or str), or
``answer`` (NQ-open, ELI5), or for ASQA the union of ``qa_pairs[*].short_answers``; candidate
passages in ``ctxs`` or ``docs`` (``{id?, title, text, score?, hasanswer?, isgold?, ...}``), or
``passages`` in this package's own ``Example`` dumps (labelled examples, the DPO pool), which
therefore read back unchanged.
Files: JSONL, or a JSON array (ALCE's ASQA files).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynamicrag.data.errors import Loc
from dynamicrag.data.fields import (
    answer_list,
    build,
    example_id,
    passage,
    record_task,
    required_str,
    type_error,
    unique_examples,
    unique_passage_ids,
)
from dynamicrag.data.files import iter_records
from dynamicrag.schema import Example


def asqa_answers(qa_pairs: Any, loc: Loc) -> list[str]:
    """The union of ``qa_pairs[*].short_answers`` (nested lists flattened), first-seen order."""
    if not isinstance(qa_pairs, list):
        raise type_error(loc, "qa_pairs", "a list", qa_pairs)
    answers: dict[str, None] = {}  # ordered set

    def add(value: Any, field: str) -> None:
        if isinstance(value, str):
            answers.setdefault(value)
        elif isinstance(value, list):
            for item in value:
                add(item, field)
        else:
            raise type_error(loc, field, "strings or lists of strings", value)

    for i, pair in enumerate(qa_pairs):
        if not isinstance(pair, dict):
            raise type_error(loc, f"qa_pairs[{i}]", "a JSON object", pair)
        add(pair.get("short_answers", []), f"qa_pairs[{i}].short_answers")
    return list(answers)


def to_example(record: dict[str, Any], loc: Loc, task: str = "qa") -> Example:
    """Normalise one record.

    Args:
        record: The source record.
        loc: Where it is, for errors and the default id.
        task: Task used unless the record names its own (``task``/``dataset``) or is ASQA.

    Returns:
        The example; every field not consumed is kept in ``extra``.
    """
    ex_id, id_key = example_id(record, loc, ("id", "_id", "sample_id"))
    question = required_str(record, "question", loc)
    used = {"question", "task", id_key}
    if "answers" in record:
        answers = answer_list(record["answers"], "answers", loc)
        used.add("answers")
    elif "qa_pairs" in record:
        # ALCE's ASQA ``answer`` is the long-form reference: it stays in extra.
        answers = asqa_answers(record["qa_pairs"], loc)
    elif "answer" in record:
        answers = answer_list(record["answer"], "answer", loc)
        used.add("answer")
    else:
        answers = []
    key = next((k for k in ("ctxs", "docs", "passages") if k in record), "ctxs")
    ctxs = record.get(key)
    if ctxs is None:
        ctxs = []
    elif not isinstance(ctxs, list):  # "" and {} too: a wrong type, not "no passages"
        raise type_error(loc, key, "a list of passages", ctxs)
    used.add(key)
    passages = [passage(c, loc, f"{key}[{i}]", f"{ex_id}:{i + 1}") for i, c in enumerate(ctxs)]
    unique_passage_ids(passages, loc, key)
    return build(
        Example,
        loc,
        "",
        id=ex_id,
        question=question,
        answers=answers,
        task=record_task(record) or ("asqa" if "qa_pairs" in record else task),
        passages=passages,
        extra=_extra(record, used),
    )


def _extra(record: dict[str, Any], used: set[str]) -> dict[str, Any]:
    rest = {k: v for k, v in record.items() if k not in used}
    if isinstance(rest.get("extra"), dict):  # this package's own Example dump: its extra, flat again
        rest = {**rest.pop("extra"), **rest}
    return rest


def iter_examples(path: str | Path, task: str = "qa") -> Iterator[Example]:
    """Examples of a DynamicRAG / Self-RAG / ASQA / NQ-open file, in file order."""
    yield from unique_examples(
        iter_records(path), lambda record, loc: to_example(record, loc, task), ("id", "_id", "sample_id")
    )
