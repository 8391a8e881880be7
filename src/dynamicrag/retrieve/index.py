"""Build, save and load retrieval indexes by kind; a loaded index is cached per process."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dynamicrag.retrieve.base import BaseRetriever, check_corpus
from dynamicrag.retrieve.bm25 import BM25Retriever
from dynamicrag.retrieve.dense import DenseRetriever
from dynamicrag.retrieve.hybrid import HybridRetriever
from dynamicrag.retrieve.sharded import ShardedDenseRetriever
from dynamicrag.retrieve.storage import META_FILE, NotAnIndexError, check_target, read_meta
from dynamicrag.schema import Passage

logger = logging.getLogger(__name__)

RETRIEVERS: dict[str, type[BaseRetriever]] = {
    cls.kind: cls for cls in (BM25Retriever, DenseRetriever, HybridRetriever, ShardedDenseRetriever)
}
"""Index kind (``meta.json``'s ``kind``) -> retriever class: :func:`load_index` opens every kind
through it, :func:`build_index` builds the kinds that have a ``build`` from passages."""

# resolved index folder -> (stamp of its meta.json, retriever). A rebuilt index has a new
# meta.json, so a stale entry is never served; one entry per folder, so a rebuild frees the
# old one.
_CACHE: dict[Path, tuple[tuple[int, int, int], BaseRetriever]] = {}
_CACHE_LOCK = threading.Lock()


def _stamp(index_dir: Path) -> tuple[int, int, int]:
    # mtime alone can repeat within the filesystem's clock tick; a rebuilt meta.json is also
    # a new file (inode), and an edited one usually changes size.
    st = (index_dir / META_FILE).stat()
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def retriever_class(kind: str) -> type[BaseRetriever]:
    """The retriever class registered under ``kind``; the error lists the known kinds."""
    try:
        return RETRIEVERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown retriever kind {kind!r}; choose from {sorted(RETRIEVERS)}"
        ) from None


def build_index(
    passages: Iterable[Passage],
    out_dir: str | Path,
    kind: str = "bm25",
    *,
    show_progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> BaseRetriever:
    """Index a corpus and write it to ``out_dir`` atomically.

    Args:
        passages: The corpus; ids must be unique.
        out_dir: Index folder to create (written in a temporary folder beside it, then
            renamed, so an interrupted build leaves nothing at ``out_dir``).
        kind: ``"bm25"``, ``"dense"`` or ``"hybrid"`` (a ``"sharded"`` index is built from
            precomputed vectors by :func:`~dynamicrag.retrieve.sharded.build_sharded_index`).
        show_progress: Show progress bars.
        overwrite: Replace an existing index at ``out_dir``.
        **options: Options of the kind's ``build``: for bm25 ``k1``, ``b``, ``method``,
            ``stemmer``; for dense ``encoder`` (None: the bundled all-MiniLM-L6-v2),
            ``faiss_index`` (``"flat"``, ``"hnsw"``, ``"ivf"``), ``batch_size``, ``pooling``,
            ``normalize``, ``max_length``, ``device``, ``hnsw_m``, ``ef_construction``,
            ``ef_search``, ``nlist``, ``nprobe``; for hybrid ``k_rrf``, ``pool``,
            ``bm25_options`` and the dense options.

    Returns:
        The built retriever (also cached, so ``load_index(out_dir)`` returns it without
        reading the files back).

    Raises:
        ValueError: An unknown kind, a kind not built from passages, an option the kind does
            not take, or a bad corpus.

    Example:
        >>> retriever = build_index(passages, "indexes/nq-bm25", kind="bm25")  # doctest: +SKIP
        >>> retriever.search(["who got the first nobel prize in physics"], k=5)  # doctest: +SKIP
    """
    cls = retriever_class(kind)
    build = getattr(cls, "build", None)
    if build is None:
        raise ValueError(f"a {kind} index ({cls.__name__}) is not built from passages")
    try:  # options the kind does not take fail now, before the (maybe hours-long) build
        inspect.signature(build).bind([], show_progress=show_progress, **options)
    except TypeError as err:
        raise ValueError(f"{kind} index: {err}; these options apply to other kinds, not {kind}") from None
    out = check_target(out_dir, overwrite=overwrite)
    corpus = check_corpus(passages)
    start = time.perf_counter()
    retriever = build(corpus, show_progress=show_progress, **options)
    retriever.save(out, overwrite=overwrite)
    logger.info("built %s index of %d passages at %s in %.1fs", kind, len(retriever), out, time.perf_counter() - start)
    with _CACHE_LOCK:
        _CACHE[out] = (_stamp(out), retriever)
    return retriever


def load_index(index_dir: str | Path) -> BaseRetriever:
    """Load an index written by :func:`build_index` or :func:`.build_sharded_index`.

    An index is read once per process: later calls share it.

    Args:
        index_dir: The index folder.

    Returns:
        The retriever. It is shared by every caller in the process, so treat it as read-only.

    Raises:
        NotAnIndexError: The folder is missing, or is not a complete index (the missing
            file is named). A subclass of FileNotFoundError.
        ValueError: meta.json names an unknown kind, or the files disagree.
    """
    path = Path(index_dir).expanduser().resolve()
    meta = read_meta(path)
    stamp = _stamp(path)
    with _CACHE_LOCK:
        cached = _CACHE.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        start = time.perf_counter()
        retriever = retriever_class(meta["kind"]).open(path, meta)
        logger.info(
            "loaded %s index of %d passages from %s in %.1fs",
            meta["kind"],
            len(retriever),
            path,
            time.perf_counter() - start,
        )
        _CACHE[path] = (stamp, retriever)
        return retriever


def clear_index_cache() -> None:
    """Forget every loaded index (the next ``load_index`` reads the files again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


__all__ = [
    "NotAnIndexError",
    "RETRIEVERS",
    "build_index",
    "clear_index_cache",
    "load_index",
    "retriever_class",
]
