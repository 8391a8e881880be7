"""Generic corpora: JSONL or a JSON array of ``{id?, title?, text, ...}`` records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dynamicrag.data.fields import passage
from dynamicrag.data.files import file_stem, iter_records
from dynamicrag.schema import Passage


def iter_corpus(path: str | Path) -> Iterator[Passage]:
    """Passages in file order; a record without ``id`` gets ``"{file stem}:{line or record}"``."""
    stem = file_stem(path)
    for loc, record in iter_records(path):
        yield passage(record, loc, "", f"{stem}:{loc.n}")
