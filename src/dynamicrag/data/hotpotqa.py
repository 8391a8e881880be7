"""HotpotQA native JSON (also 2WikiMultihopQA, same shape) and its ``{title: [sentences]}`` corpus.

An example is ``{_id, question, answer, type, level, supporting_facts: [[title, sent_idx]...],
context: [[title, [sentences]]...]}``; its context paragraphs become its passages. The
sentences carry their own leading spaces, so a paragraph is ``"".join(sentences)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynamicrag.data.errors import DataError, Loc
from dynamicrag.data.fields import (
    answer_list,
    build,
    example_id,
    passage,
    record_task,
    required_str,
    type_error,
    unique_examples,
)
from dynamicrag.data.files import file_stem, iter_records, read_json
from dynamicrag.schema import Example, Passage


def paragraph(sentences: Any, loc: Loc, field: str) -> str:
    """Sentences (or an already joined string) -> the paragraph text."""
    if isinstance(sentences, str):
        return sentences
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise type_error(loc, field, "a list of sentence strings", sentences)
    return "".join(sentences)


def to_example(record: dict[str, Any], loc: Loc, task: str = "qa") -> Example:
    """One question with its context paragraphs as passages.

    ``Passage.extra["supporting"]`` tells whether the paragraph's title is in
    ``supporting_facts`` (absent when the record has none, as in the test set). The task is
    ``hotpotqa`` (``2wikimqa`` for records with 2Wiki's ``evidences``) unless the record names
    one; ``task`` is unused.
    """
    ex_id, id_key = example_id(record, loc)
    question = required_str(record, "question", loc)
    facts = record.get("supporting_facts")
    well_formed = isinstance(facts, list) and all(isinstance(f, list) and f and isinstance(f[0], str) for f in facts)
    if facts is not None and not well_formed:
        raise type_error(loc, "supporting_facts", "a list of [title, sentence index]", facts)
    supporting = {f[0] for f in facts} if facts is not None else None
    context = record.get("context")
    if not isinstance(context, list):
        raise type_error(loc, "context", "a list of [title, sentences]", context)
    passages = []
    for i, item in enumerate(context):
        field = f"context[{i}]"
        if not (isinstance(item, list) and len(item) == 2):
            raise type_error(loc, field, "a [title, sentences] pair", item)
        title, sentences = item
        if not isinstance(title, str):
            raise type_error(loc, f"{field}[0]", "a title string", title)
        extra = {"supporting": title in supporting} if supporting is not None else {}
        ctx = {"title": title, "text": paragraph(sentences, loc, f"{field}[1]")}
        passages.append(passage(ctx, loc, field, f"{ex_id}:{i + 1}", extra))
    return build(
        Example,
        loc,
        "",
        id=ex_id,
        question=question,
        answers=answer_list(record.get("answer"), "answer", loc),
        task=record_task(record) or ("2wikimqa" if "evidences" in record else "hotpotqa"),
        passages=passages,
        extra={k: v for k, v in record.items() if k not in ("question", "answer", "context", "task", id_key)},
    )


def iter_examples(path: str | Path, task: str = "qa") -> Iterator[Example]:
    yield from unique_examples(iter_records(path), lambda record, loc: to_example(record, loc, task))


def iter_corpus(path: str | Path) -> Iterator[Passage]:
    """Passages of a JSON object ``{title: [sentences]}``; ids ``"{file stem}:{n}"`` (1-based).

    Errors name the title (the object has no lines or records to point at).
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object {{title: [sentences]}}, got {type(data).__name__}", path=path)
    stem = file_stem(path)
    loc = Loc(str(path))
    for n, (title, sentences) in enumerate(data.items(), 1):
        ctx = {"title": title, "text": paragraph(sentences, loc, title)}
        yield passage(ctx, loc, title, f"{stem}:{n}")
