"""Retrieval: BM25 (bm25s), dense (sentence-transformers + FAISS), their RRF hybrid, and a
sharded IVF-PQ index over precomputed vectors for Wikipedia-scale corpora.

Indexes live on disk (``meta.json``, ``passages.jsonl`` and the index files) and are written
atomically; :func:`load_index` reads one back once per process.

Example:
    >>> from dynamicrag.retrieve import build_index, load_index  # doctest: +SKIP
    >>> build_index(passages, "indexes/nq", kind="hybrid")  # doctest: +SKIP
    >>> load_index("indexes/nq").search(["who wrote hamlet"], k=40)  # doctest: +SKIP
"""

from dynamicrag.retrieve.base import BaseRetriever, Retriever, passage_text
from dynamicrag.retrieve.bm25 import BM25Retriever
from dynamicrag.retrieve.dense import (
    DEFAULT_ENCODER,
    DenseOptions,
    DenseRetriever,
    default_encoder_path,
    load_encoder,
)
from dynamicrag.retrieve.hybrid import HybridRetriever, rrf_fuse
from dynamicrag.retrieve.index import (
    RETRIEVERS,
    build_index,
    clear_index_cache,
    load_index,
    retriever_class,
)
from dynamicrag.retrieve.sharded import ShardedDenseRetriever, build_sharded_index
from dynamicrag.retrieve.storage import NotAnIndexError

__all__ = [
    "BM25Retriever",
    "BaseRetriever",
    "DEFAULT_ENCODER",
    "DenseOptions",
    "DenseRetriever",
    "HybridRetriever",
    "NotAnIndexError",
    "RETRIEVERS",
    "Retriever",
    "ShardedDenseRetriever",
    "build_index",
    "build_sharded_index",
    "clear_index_cache",
    "default_encoder_path",
    "load_encoder",
    "load_index",
    "passage_text",
    "retriever_class",
    "rrf_fuse",
]
