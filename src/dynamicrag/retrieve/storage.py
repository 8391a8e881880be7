"""The on-disk index layout, written atomically.

An index folder holds::

    meta.json        kind, format version, counts, options, creation time
    passages.jsonl   the corpus, one Passage per line, in index order (shared by sub-indexes)
    bm25/            bm25s files           (kinds bm25, hybrid)
    dense/           index.faiss           (kinds dense, hybrid)

Everything is written into a temporary folder beside the target and renamed into place, so
an interrupted build never leaves a half index where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynamicrag.schema import Passage

if TYPE_CHECKING:
    from dynamicrag.retrieve.base import BaseRetriever

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
PASSAGES_FILE = "passages.jsonl"


class NotAnIndexError(FileNotFoundError):
    """The folder given to ``load_index`` is not a (complete) dynamicrag index."""


def write_passages(passages: list[Passage], path: Path) -> None:
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


def write_index(retriever: BaseRetriever, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``retriever`` as a complete index at ``out_dir``, atomically.

    Args:
        retriever: The retriever to save.
        out_dir: Target folder. It must not exist (an empty folder is fine) unless ``overwrite``.
        overwrite: Replace an existing folder. The old folder is moved aside, the new one
            renamed in, then the old one deleted, so a reader sees the old or the new index.

    Returns:
        The resolved ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
    """
    out = check_target(out_dir, overwrite=overwrite)
    with index_folder(out, overwrite=overwrite) as tmp:
        write_passages(retriever.passages, tmp / PASSAGES_FILE)
        retriever.write_files(tmp)
        write_meta(tmp, retriever.kind, retriever.counts(), retriever.options())
    logger.info("wrote %s index of %d passages to %s", retriever.kind, len(retriever), out)
    return out


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
        overwrite: Replace an existing folder (see :func:`write_index`).

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
