"""Contriever's embedding files (``wikipedia_embeddings/passages_00``, ...: each a pickle of
``(ids, vectors)``), or any re-iterable source of ``(ids, vectors)`` blocks, and ids as compact
arrays."""

from __future__ import annotations

import glob
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# A vectors' source: a Contriever folder or glob, a list of files, or a callable giving a fresh
# iterable of (ids, vectors) blocks on every call.
EmbeddingSource = str | Path | Sequence[str | Path] | Callable[[], Iterable[tuple[Sequence[Any], np.ndarray]]]
Blocks = Callable[[], Iterator[tuple[str, Sequence[Any], np.ndarray]]]


def embedding_files(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The vector files of a Contriever-layout folder, in shard order.

    Args:
        path: A folder holding ``passages_00``, ``passages_01``, ... (when it has no
            ``passages_*`` file, every file not starting with a dot), a glob pattern such as
            ``"wikipedia_embeddings/passages_*"``, or a list of files.

    Returns:
        The files, sorted by their trailing number (``passages_2`` before ``passages_10``).

    Raises:
        FileNotFoundError: Nothing matches, or a listed file is missing.
    """
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
    else:
        p = Path(path).expanduser()
        if p.is_dir():
            files = sorted(p.glob("passages_*")) or [
                f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
            ]
        else:
            files = [Path(f) for f in glob.glob(str(p))]
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise FileNotFoundError(f"no embedding files at {missing[0] if missing else path}")

    def number(f: Path) -> tuple[int, str]:
        m = re.search(r"(\d+)(?:\.\w+)?$", f.name)
        return (int(m.group(1)) if m else -1, f.name)

    return sorted(files, key=number)


def read_embedding_file(path: str | Path) -> tuple[list[Any], np.ndarray]:
    """One Contriever embedding file: a pickle of ``(ids, vectors)``.

    Only open files you trust: unpickling can run code.

    Args:
        path: The file.

    Returns:
        ``(ids, vectors)``: the ids as stored (str or int), vectors of shape (n, dim) in their
        stored dtype (Contriever writes float16 or float32).

    Raises:
        ValueError: Not a pickled pair, vectors not 2-D, or counts that differ (file named).
    """
    with open(path, "rb") as f:
        try:
            data = pickle.load(f)
        except Exception as err:
            raise ValueError(f"{path}: not a pickle of (ids, vectors): {err}") from err
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{path}: expected a pickled pair (ids, vectors), got {type(data).__name__}")
    ids, vectors = list(data[0]), np.asarray(data[1])
    if vectors.ndim != 2:
        raise ValueError(f"{path}: vectors must be 2-D (n, dim), got shape {vectors.shape}")
    if len(ids) != vectors.shape[0]:
        raise ValueError(f"{path}: {len(ids)} ids for {vectors.shape[0]} vectors")
    return ids, vectors


def open_source(source: EmbeddingSource) -> tuple[Blocks, str, int]:
    """A re-iterable source of ``(where, ids, vectors)`` blocks, its description, and the size
    of its largest file (0 for a callable)."""
    if callable(source):

        def blocks() -> Iterator[tuple[str, Sequence[Any], np.ndarray]]:
            for i, (ids, vectors) in enumerate(source()):
                vectors = np.asarray(vectors)
                if vectors.ndim != 2 or len(ids) != vectors.shape[0]:
                    raise ValueError(f"block {i}: {len(ids)} ids for vectors of shape {vectors.shape}")
                yield f"block {i}", ids, vectors

        return blocks, getattr(source, "__name__", "a callable"), 0
    files = embedding_files(source)

    def file_blocks() -> Iterator[tuple[str, Sequence[Any], np.ndarray]]:
        for f in files:
            yield (str(f), *read_embedding_file(f))

    return file_blocks, f"{len(files)} file(s) in {files[0].parent}", max(f.stat().st_size for f in files)



def id_array(ids: Iterable[Any]) -> np.ndarray:
    # Fixed-width UTF-8 bytes: 21M ids take ~200 MB as one array, several GB as a Python set or
    # dict, so ids are matched by sorting and searchsorted rather than by check_corpus's dict.
    return np.array([str(i).encode("utf-8") for i in ids], dtype=np.bytes_)


def first_duplicate(sorted_ids: np.ndarray) -> str | None:
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    return sorted_ids[dup[0]].decode("utf-8") if len(dup) else None

