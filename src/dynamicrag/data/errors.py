"""The one error every loader raises: what is wrong, and where (file, line or record, field)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Invalid input data, rendered like ``data/nq.jsonl:17: field 'answers': expected ...``.

    Args:
        message: What is wrong.
        path: The file, as the user gave it.
        line: 1-based line of a line-based file (JSONL, TSV), or of a JSON syntax error.
        record: 1-based index of the record in a whole-file JSON array (when ``line`` is None).
        field: The offending field, as a JSON path into the record (``ctxs[2].text``).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.record = record
        self.field = field
        where = self.path or ""
        if line is not None:
            where += f":{line}"
        elif record is not None:
            where += f": record {record}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}" if where else what)


@dataclass(frozen=True)
class Loc:
    """Where a record came from; builds the :class:`DataError` for one of its fields."""

    path: str
    line: int | None = None
    record: int | None = None

    @property
    def n(self) -> int:
        """The line (JSONL) or record index (JSON array) used in default ids."""
        return self.line if self.line is not None else (self.record or 0)

    @property
    def where(self) -> str:
        """``"line 3"`` or ``"record 3"``, for messages that point at a second place."""
        return f"line {self.line}" if self.line is not None else f"record {self.record or 0}"

    def error(self, field: str | None, message: str) -> DataError:
        return DataError(message, path=self.path, line=self.line, record=self.record, field=field)
