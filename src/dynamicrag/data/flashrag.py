"""FlashRAG datasets: examples (``id``, ``question``, ``golden_answers``, ``metadata``) and
corpora (``id``, ``contents`` = ``'"Title"\\ntext'``)."""

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
    unique_examples,
)
from dynamicrag.data.files import file_stem, iter_records
from dynamicrag.schema import Example, Passage


def to_example(record: dict[str, Any], loc: Loc, task: str = "qa") -> Example:
    ex_id, id_key = example_id(record, loc)
    return build(
        Example,
        loc,
        "",
        id=ex_id,
        question=required_str(record, "question", loc),
        answers=answer_list(record.get("golden_answers"), "golden_answers", loc),
        task=record_task(record) or task,
        extra={k: v for k, v in record.items() if k not in ("question", "golden_answers", "task", id_key)},
    )


def iter_examples(path: str | Path, task: str = "qa") -> Iterator[Example]:
    yield from unique_examples(iter_records(path), lambda record, loc: to_example(record, loc, task))


def split_contents(contents: str) -> tuple[str, str]:
    """``'"Title"\\ntext'`` -> ``("Title", "text")``: the first line, its surrounding quotes removed.

    Contents without a newline are all text (FlashRAG itself would give an empty text).
    """
    title, sep, text = contents.partition("\n")
    if not sep:
        return "", contents
    if len(title) >= 2 and title.startswith('"') and title.endswith('"'):
        title = title[1:-1]
    return title, text


def to_passage(record: dict[str, Any], loc: Loc) -> Passage:
    contents = required_str(record, "contents", loc)
    title, text = split_contents(contents)
    if not text.strip():
        raise loc.error("contents", "empty passage text after the title line")
    ctx = {k: v for k, v in record.items() if k != "contents"} | {"title": title, "text": text}
    return passage(ctx, loc, "", f"{file_stem(loc.path)}:{loc.n}")


def iter_corpus(path: str | Path) -> Iterator[Passage]:
    for loc, record in iter_records(path):
        yield to_passage(record, loc)
