"""The on-disk index layout, written atomically.

An index folder holds::

    meta.json        kind, format version, counts, options, creation time
    passages.jsonl   the corpus, one Passage per line, in index order (shared by sub-indexes)
    bm25/            bm25s files           (kinds bm25, hybrid)
    dense/           index.faiss           (kinds dense, hybrid)

Everything is written into a temporary folder beside the target and renamed into place, so
an interrupted build never leaves a half index where a finished one is expected. This module
knows the files, not the retrievers: :meth:`~dynamicrag.retrieve.base.BaseRetriever.save`
writes a retriever through it. A corpus too large for memory stays on disk as a
:class:`PassageFile`, read by line offsets.
"""

from __future__ import annotations

import contextlib
import mmap
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from dynamicrag.schema import Passage

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
PASSAGES_FILE = "passages.jsonl"


class NotAnIndexError(FileNotFoundError):
    """The folder given to ``load_index`` is not a (complete) dynamicrag index."""


def write_passages(passages: Iterable[Passage], path: Path) -> None:
    """Write the corpus as JSON lines (``score`` left out: it belongs to results, not corpora)."""
    with path.open("w", encoding="utf-8") as f:
        for p in passages:
            f.write(p.model_dump_json(exclude={"score"}))
            f.write("\n")


def read_passages(path: Path) -> list[Passage]:
    """Read ``passages.jsonl``; a bad line is reported with its file and line number."""
    passages = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                passages.append(Passage.model_validate_json(line))
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: not a valid passage: {e}") from e
    return passages


def read_meta(index_dir: Path) -> dict[str, Any]:
    """Read and check ``meta.json``; name the missing or bad file when it is not an index."""
    meta_path = index_dir / META_FILE
    if not index_dir.is_dir():
        raise NotAnIndexError(f"index folder not found: {index_dir}")
    if not meta_path.is_file():
        raise NotAnIndexError(
            f"{index_dir} is not a dynamicrag index: missing {META_FILE} "
            "(build one with dynamicrag.retrieve.build_index)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise NotAnIndexError(f"{meta_path}: not valid JSON ({e})") from e
    for field in ("format_version", "kind", "options"):
        if field not in meta:
            raise NotAnIndexError(f"{meta_path}: missing field {field!r}")
    if meta["format_version"] > FORMAT_VERSION:
        raise NotAnIndexError(
            f"{meta_path}: format version {meta['format_version']} is newer than this "
            f"dynamicrag reads ({FORMAT_VERSION}); upgrade dynamicrag"
        )
    return meta


def check_files(index_dir: Path, relative_paths: list[str]) -> None:
    """Raise :class:`NotAnIndexError` naming the first missing file of ``relative_paths``."""
    for rel in [PASSAGES_FILE, *relative_paths]:
        if not (index_dir / rel).exists():
            raise NotAnIndexError(f"{index_dir} is an incomplete index: missing {rel}")


def check_target(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Resolve ``out_dir`` and refuse an existing, non-empty one unless ``overwrite``.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    return out


@contextlib.contextmanager
def index_folder(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that replaces ``out_dir`` when the block succeeds.

    Write the index files into the yielded folder, ``meta.json`` last (:func:`write_meta`); on
    an exception the folder is deleted and ``out_dir`` is left as it was.

    Args:
        out_dir: Target folder (must not exist, or be empty, unless ``overwrite``).
        overwrite: Replace an existing folder: the old folder is moved aside, the new one renamed
            in, then the old one deleted, so a reader sees the old or the new index.

    Yields:
        The temporary folder.
    """
    out = check_target(out_dir, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Same parent folder, so the final rename stays on one filesystem (and so is atomic).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; an index is meant to be shared
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_meta(
    index_dir: Path, kind: str, counts: dict[str, Any], options: dict[str, Any], **extra: Any
) -> None:
    """Write ``meta.json``: format version, kind, counts, options, ``extra`` fields, time."""
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "counts": counts,
        "options": options,
        **extra,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dynamicrag_version": _package_version(),
    }
    # meta.json last: its presence marks a finished index even inside the temp folder.
    (index_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old.rmdir()
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)  # put the previous index back
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _package_version() -> str:
    from dynamicrag import __version__

    return __version__


def line_offsets(path: Path) -> np.ndarray:
    """Byte offset where each line of ``path`` starts, then the file size: (n_lines + 1,)."""
    import numpy as np  # here, not at import: reading an index's metadata needs no numpy

    starts = [np.zeros(1, dtype=np.int64)]
    done = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            starts.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n")) + done + 1)
            done += len(block)
    return np.concatenate(starts)


class PassageFile(Sequence[Passage]):
    """``passages.jsonl`` as a read-only sequence: a passage is parsed when it is asked for.

    Args:
        path: The passages file (one JSON passage a line, as :func:`write_passages` writes).
        offsets: Byte offset of each line, then the file size (:func:`line_offsets`).
    """

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.path = path
        self._offsets = offsets
        size = path.stat().st_size
        if int(offsets[-1]) != size:
            raise ValueError(
                f"{path} has {size} bytes but its line offsets expect {int(offsets[-1])}: "
                "the index is corrupt, rebuild it"
            )
        with path.open("rb") as f:
            # A memory map: slicing it is thread-safe, where seek + read on one handle is not.
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, i: int) -> Passage: ...

    @overload
    def __getitem__(self, i: slice) -> list[Passage]: ...

    def __getitem__(self, i: int | slice) -> Passage | list[Passage]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"passage {i} out of range ({n} passages)")
        i %= n
        start, stop = int(self._offsets[i]), int(self._offsets[i + 1])
        try:
            return Passage.model_validate_json(self._map[start:stop])
        except ValueError as err:
            raise ValueError(f"{self.path}:{i + 1}: not a valid passage: {err}") from err
