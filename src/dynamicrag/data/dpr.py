"""DPR's Wikipedia passages, ``psgs_w100.tsv``: a header ``id\\ttext\\ttitle``, one passage a line.

The full file has 21M lines, so it is streamed row by row, never loaded whole. Fields follow
the csv module's quoting (DPR writes text with ``"..."`` and doubled inner quotes).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from dynamicrag.data.errors import DataError, Loc
from dynamicrag.data.files import open_text, reading
from dynamicrag.schema import Passage


def iter_corpus(path: str | Path) -> Iterator[Passage]:
    """Yield passages one row at a time (columns found by header name; ``title`` optional)."""
    with reading(path), open_text(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            return
        columns = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in ("id", "text") if c not in columns]
        if missing:
            raise DataError(f"header {header} lacks column(s) {missing}", path=path, line=1, field="header")
        i_id, i_text, i_title = columns["id"], columns["text"], columns.get("title")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(f"bad TSV row: {err}", path=path, line=reader.line_num) from err
            if not row:
                continue
            loc = Loc(str(path), line=reader.line_num)
            if len(row) != len(header):
                raise loc.error(None, f"expected {len(header)} tab-separated columns, got {len(row)}")
            if not row[i_text].strip():
                raise loc.error("text", "empty passage text")
            if not row[i_id]:
                raise loc.error("id", "empty")
            yield Passage(id=row[i_id], title=row[i_title] if i_title is not None else "", text=row[i_text])
