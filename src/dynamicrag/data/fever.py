"""FEVER JSONL (``id``, ``claim``, ``label``, ``verifiable``, ``evidence``): claim -> question."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynamicrag.data.errors import Loc
from dynamicrag.data.fields import build, example_id, record_task, required_str, type_error, unique_examples
from dynamicrag.data.files import iter_records
from dynamicrag.schema import Example


def to_example(record: dict[str, Any], loc: Loc, task: str = "qa") -> Example:
    """One claim as an example: ``answers = [label]`` (none for the unlabelled test set), task ``fever``.

    ``task`` is unused: a FEVER file is the ``fever`` task unless its records say otherwise.
    """
    ex_id, id_key = example_id(record, loc)
    claim = required_str(record, "claim", loc)
    label = record.get("label")
    if label is not None and not isinstance(label, str):
        raise type_error(loc, "label", "a string", label)
    return build(
        Example,
        loc,
        "",
        id=ex_id,
        question=claim,
        answers=[label] if label is not None else [],
        task=record_task(record) or "fever",
        extra={k: v for k, v in record.items() if k not in ("claim", "label", "task", id_key)},
    )


def iter_examples(path: str | Path, task: str = "qa") -> Iterator[Example]:
    yield from unique_examples(iter_records(path), lambda record, loc: to_example(record, loc, task))
