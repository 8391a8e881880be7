"""Retrieval: BM25 (bm25s), dense (sentence-transformers + FAISS), their RRF hybrid, and a
sharded IVF-PQ index over precomputed vectors for Wikipedia-scale corpora.

Indexes live on disk (``meta.json``, ``passages.jsonl`` and the index files) and are written
atomically; :func:`load_index` reads one back once per process.

Example:
    >>> from dynamicrag.retrieve import build_index, load_index  # doctest: +SKIP
    >>> build_index(passages, "indexes/nq", kind="hybrid")  # doctest: +SKIP
    >>> load_index("indexes/nq").search(["who wrote hamlet"], k=40)  # doctest: +SKIP
"""

from dynamicrag.lazy import lazy_exports

_EXPORTS = {
    "BM25Retriever": "dynamicrag.retrieve.bm25",
    "BaseRetriever": "dynamicrag.retrieve.base",
    "DEFAULT_ENCODER": "dynamicrag.retrieve.dense",
    "DenseOptions": "dynamicrag.retrieve.dense",
    "DenseRetriever": "dynamicrag.retrieve.dense",
    "HybridRetriever": "dynamicrag.retrieve.hybrid",
    "NotAnIndexError": "dynamicrag.retrieve.storage",
    "RETRIEVERS": "dynamicrag.retrieve.index",
    "Retriever": "dynamicrag.retrieve.base",
    "ShardedDenseRetriever": "dynamicrag.retrieve.sharded",
    "build_index": "dynamicrag.retrieve.index",
    "build_sharded_index": "dynamicrag.retrieve.sharded",
    "clear_index_cache": "dynamicrag.retrieve.index",
    "default_encoder_path": "dynamicrag.retrieve.dense",
    "load_encoder": "dynamicrag.retrieve.dense",
    "load_index": "dynamicrag.retrieve.index",
    "passage_text": "dynamicrag.retrieve.base",
    "retriever_class": "dynamicrag.retrieve.index",
    "rrf_fuse": "dynamicrag.retrieve.hybrid",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
