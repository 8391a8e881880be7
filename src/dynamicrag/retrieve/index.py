"""Build, save and load retrieval indexes by kind; a loaded index is cached per process."""

from __future__ import annotations

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
from dynamicrag.retrieve.storage import (
    META_FILE,
    PASSAGES_FILE,
    NotAnIndexError,
    check_files,
    check_target,
    read_meta,
    read_passages,
)
from dynamicrag.schema import Passage

logger = logging.getLogger(__name__)

RETRIEVERS: dict[str, type[BaseRetriever]] = {
    BM25Retriever.kind: BM25Retriever,
    DenseRetriever.kind: DenseRetriever,
    HybridRetriever.kind: HybridRetriever,
}

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
    encoder: str | None = None,
    faiss_index: str = "flat",
    batch_size: int = 32,
    show_progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> BaseRetriever:
    """Index a corpus and write it to ``out_dir`` atomically.

    Args:
        passages: The corpus; ids must be unique.
        out_dir: Index folder to create (written in a temporary folder beside it, then
            renamed, so an interrupted build leaves nothing at ``out_dir``).
        kind: ``"bm25"``, ``"dense"`` or ``"hybrid"``.
        encoder: Dense encoder, hub id or local path (dense, hybrid); None for the bundled
            all-MiniLM-L6-v2.
        faiss_index: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"`` (dense, hybrid).
        batch_size: Encoder batch size (dense, hybrid).
        show_progress: Show progress bars.
        overwrite: Replace an existing index at ``out_dir``.
        **options: Options of the kind's ``build``: for bm25 ``k1``, ``b``, ``method``,
            ``stemmer``; for dense ``pooling``, ``normalize``, ``max_length``, ``device``,
            ``hnsw_m``, ``ef_construction``, ``ef_search``, ``nlist``, ``nprobe``; for hybrid
            ``k_rrf``, ``pool``, ``bm25_options`` and the dense options.

    Returns:
        The built retriever (also cached, so ``load_index(out_dir)`` returns it without
        reading the files back).

    Example:
        >>> retriever = build_index(passages, "indexes/nq-bm25", kind="bm25")  # doctest: +SKIP
        >>> retriever.search(["who got the first nobel prize in physics"], k=5)  # doctest: +SKIP
    """
    cls = retriever_class(kind)
    out = check_target(out_dir, overwrite=overwrite)  # before the (maybe hours-long) build
    corpus = check_corpus(passages)
    start = time.perf_counter()
    if cls is BM25Retriever:
        if encoder is not None or faiss_index != "flat":
            raise ValueError("encoder and faiss_index apply to dense and hybrid indexes, not bm25")
        retriever: BaseRetriever = BM25Retriever.build(
            corpus, show_progress=show_progress, **options
        )
    else:
        retriever = cls.build(  # type: ignore[attr-defined]
            corpus,
            encoder=encoder,
            faiss_index=faiss_index,
            batch_size=batch_size,
            show_progress=show_progress,
            **options,
        )
    retriever.save(out, overwrite=overwrite)
    logger.info(
        "built %s index of %d passages at %s in %.1fs",
        kind,
        len(retriever),
        out,
        time.perf_counter() - start,
    )
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
        retriever: BaseRetriever
        if meta["kind"] == ShardedDenseRetriever.kind:
            # Built from precomputed vectors, not by build_index (so not in RETRIEVERS); its
            # passages stay on disk and are read by offset.
            retriever = ShardedDenseRetriever.load(path)
        else:
            cls = retriever_class(meta["kind"])
            check_files(path, cls.required_files(meta["options"]))
            passages = read_passages(path / PASSAGES_FILE)
            retriever = cls.read_files(path, passages, meta["options"])
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
