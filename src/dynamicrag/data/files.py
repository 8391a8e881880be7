"""Reading JSON/JSONL (transparent gzip), the resumable JSONL writer, atomic writes.

Every long stage (infer, label, sample, reward) writes its output through
:class:`ResumableJsonlWriter`: one record per input, in input order, so a killed run restarts
with ``inputs[writer.done:]``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dynamicrag.data.errors import DataError, Loc

logger = logging.getLogger(__name__)


def base_suffix(path: str | Path) -> str:
    """The format suffix, ignoring a trailing ``.gz``: ``nq.jsonl.gz`` -> ``.jsonl``."""
    p = Path(path)
    if p.suffix.lower() == ".gz":
        p = p.with_suffix("")
    return p.suffix.lower()


def file_stem(path: str | Path) -> str:
    """The file name without ``.gz`` and its format suffix: ``nq-open.jsonl.gz`` -> ``nq-open``."""
    p = Path(path)
    if p.suffix.lower() == ".gz":
        p = p.with_suffix("")
    return p.stem


def open_text(path: str | Path, newline: str | None = None) -> IO[str]:
    """Open a UTF-8 text file for reading, gunzipping ``*.gz`` on the fly (a BOM is dropped)."""
    if str(path).lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _short(err: BaseException) -> str:
    """The gist of a ValueError/RecursionError from ``json.loads`` (Python's messages run long)."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err).split(";")[0]  # "Exceeds the limit (4300 digits) for integer string conversion: ..."


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn decoding failures met while reading ``path`` into a :class:`DataError` naming it."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=path) from err
    except _GZIP_ERRORS as err:
        raise DataError(f"corrupt or truncated gzip file ({err})", path=path) from err


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, record)`` for each non-blank line of a JSONL file (``.gz`` too).

    Raises:
        DataError: on a line that is not a JSON object, naming the file and line; on a gzip
            stream that breaks off, naming the line it broke in.
    """
    line_no = 0
    try:
        with reading(path), open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    yield line_no, _parse_line(line, path, line_no)
    except DataError as err:
        if err.line is not None or not isinstance(err.__cause__, _GZIP_ERRORS):
            raise
        # Lines are decompressed ahead of use, so every line yielded was whole: the stream
        # broke off in the next one.
        raise DataError(err.reason, path=path, line=line_no + 1) from err.__cause__


def _parse_line(line: str, path: str | Path, line_no: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", path=path, line=line_no) from err
    except (ValueError, RecursionError) as err:  # an integer over 4300 digits; nesting too deep
        raise DataError(f"unreadable JSON: {_short(err)}", path=path, line=line_no) from err
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", path=path, line=line_no)
    return _valid_unicode(record, line, path, line_no)


# A UTF-16 surrogate left alone after decoding: JSON can spell one ("\ud800"), Unicode has none.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_warned_surrogates: set[str] = set()


def _valid_unicode(value: Any, text: str, path: str | Path, line: int | None = None) -> Any:
    """``value`` with lone surrogates replaced by U+FFFD (warned once per file).

    Such a string cannot be written as UTF-8 (a stage's output) nor be serialised by pydantic,
    so it would stop a long stage at that record on every resume; broken emoji in scraped
    text are the usual source. Only text holding a ``\\uD8..-\\uDF..`` escape is searched.
    """
    if "\\ud" not in text and "\\uD" not in text:
        return value
    replaced = [0]

    def fix(v: Any) -> Any:
        if isinstance(v, str):
            new, n = _LONE_SURROGATE.subn("\ufffd", v)
            replaced[0] += n
            return new
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {fix(k): fix(x) for k, x in v.items()}
        return v

    value = fix(value)
    if replaced[0] and str(path) not in _warned_surrogates:
        _warned_surrogates.add(str(path))
        where = f"{path}:{line}" if line is not None else str(path)
        logger.warning("%s: replaced lone UTF-16 surrogates (not valid Unicode) with U+FFFD; "
                       "further ones in this file are replaced without a warning", where)
    return value


def read_json(path: str | Path) -> Any:
    """Parse a whole JSON file (``.gz`` too); syntax errors name the line."""
    with reading(path), open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", path=path, line=err.lineno) from err
    except (ValueError, RecursionError) as err:
        raise DataError(f"unreadable JSON: {_short(err)}", path=path) from err
    return _valid_unicode(data, text, path)


def iter_records(path: str | Path) -> Iterator[tuple[Loc, dict[str, Any]]]:
    """Yield ``(location, record)`` from a JSONL file or a JSON file.

    A JSON array yields its elements (located by 1-based record index), a JSON object yields
    itself once. A ``.json`` file that is really JSONL (common in the wild) is read as JSONL.
    """
    where = str(path)
    if base_suffix(path) != ".json":
        for line_no, record in read_jsonl(path):
            yield Loc(where, line=line_no), record
        return
    with reading(path), open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and text.lstrip().startswith("{"):
            # split("\n"), not splitlines(): JSON strings may hold U+2028, U+0085 and the like raw.
            for line_no, line in enumerate(text.split("\n"), 1):
                if line.strip():
                    yield Loc(where, line=line_no), _parse_line(line, path, line_no)
            return
        raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", path=path, line=err.lineno) from err
    except (ValueError, RecursionError) as err:
        raise DataError(f"unreadable JSON: {_short(err)}", path=path) from err
    data = _valid_unicode(data, text, path)
    if isinstance(data, dict):
        yield Loc(where, record=1), data
        return
    if not isinstance(data, list):
        raise DataError(f"expected a JSON array or object, got {type(data).__name__}", path=path)
    for i, record in enumerate(data, 1):
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", path=path, record=i)
        yield Loc(where, record=i), record


def first_record(path: str | Path) -> dict[str, Any] | None:
    """The first record of a JSON/JSONL file, or None when it has none (used to sniff formats)."""
    records = iter_records(path)
    try:
        return next(records, (None, None))[1]
    finally:
        records.close()


class ResumableJsonlWriter:
    """Append-only JSONL output that survives being killed and resumes where it stopped.

    On open, the complete lines already in the file are counted (``done``) and a trailing
    partial line, left by a run killed mid-write, is cut off. Each :meth:`write` serialises a
    record to one line and writes it with a single write call followed by a flush, so a kill
    leaves at most one partial last line, which the next open removes. Records are written in
    input order, so a stage resumes with ``inputs[writer.done:]``.

    Args:
        path: Output file (parent folders are created). Plain JSONL only: a gzip stream cannot
            be cut back to its last complete line.
        fsync_every: Seconds between ``os.fsync`` calls (and one at close). ``flush`` already
            hands each line to the OS, which is enough to survive a killed process; fsync only
            guards against a machine crash or power loss and costs milliseconds on disk, so
            doing it per record would slow fast stages for little gain.

    Example:
        >>> with ResumableJsonlWriter("out/infer.jsonl") as writer:  # doctest: +SKIP
        ...     for example in examples[writer.done:]:
        ...         writer.write(run(example))
    """

    def __init__(self, path: str | Path, *, fsync_every: float = 30.0) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() == ".gz":
            raise ValueError(f"{path}: resumable output must be plain .jsonl, not gzip")
        self.fsync_every = fsync_every
        self.done = 0
        self.ids: list[str | None] = []  # of the complete records, in file order (None: no id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        end = self._scan() if self.path.exists() else 0
        self._file = open(self.path, "ab")
        size = self.path.stat().st_size
        if size > end:
            logger.warning(
                "%s: dropped a partial last line (%d bytes) left by an interrupted run", self.path, size - end
            )
            self._file.truncate(end)
        self._last_sync = time.monotonic()

    def _scan(self) -> int:
        """Count the complete records, collect their ids; return the byte offset after them."""
        end = 0
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # partial last line: cut off by the caller
                end += len(raw)
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"invalid JSON in a complete line ({err.msg}); not an output of this tool, or corrupt",
                        path=self.path,
                        line=line_no,
                    ) from err
                self.done += 1
                record_id = record.get("id") if isinstance(record, dict) else None
                self.ids.append(None if record_id is None else str(record_id))
        return end

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line (UTF-8, ``ensure_ascii=False``) and flush it.

        A string holding a lone surrogate (valid in JSON input as ``"\\ud800"``, not encodable
        as UTF-8) is written with ``\\u`` escapes instead, so the record reads back unchanged.
        """
        try:
            data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:
            data = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
        self._file.write(data)  # one call: a kill leaves at most a partial last line
        self._file.flush()
        self.done += 1
        self.ids.append(None if record.get("id") is None else str(record["id"]))
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_every:
            os.fsync(self._file.fileno())
            self._last_sync = now

    @property
    def done_ids(self) -> set[str]:
        """The ids of the records written so far (records without one are left out)."""
        return {i for i in self.ids if i is not None}

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record in the file so far (the earlier run's and this one's), in order."""
        if not self._file.closed:
            self._file.flush()
        for _, record in read_jsonl(self.path):
            yield record

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> ResumableJsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never half of it.

    Writes a temporary file in the same folder (same filesystem, so the rename is atomic),
    fsyncs it, then ``os.replace``-s the target. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; keep the target's mode, or give a new file the usual 0644.
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON (UTF-8, ``ensure_ascii=False``) and write it atomically.

    Serialisation happens first, so an unserialisable object leaves the old file untouched.
    """
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")
