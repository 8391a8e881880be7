"""Wikipedia-scale dense retrieval: an IVF-PQ index built in shards from precomputed vectors.

Wikipedia (21M DPR passages x 768-d Contriever vectors) is 60 GiB as float32, more than most
machines hold, and encoding it takes GPU-days. Contriever and Self-RAG publish the vectors
(``wikipedia_embeddings/passages_00``, ``passages_01``, ...: each a pickle of ``(ids,
vectors)``). :func:`build_sharded_index` indexes them with memory bounded by a chunk and a
shard, not by the corpus:

1. a first pass over the vector files counts them, collects their ids and draws a uniform
   training sample; :func:`estimate` then gives memory and disk, before anything is built;
2. the passages (``psgs_w100.tsv`` is streamed by the DPR loader) are copied to
   ``passages.jsonl`` and each vector id is mapped to its passage's line;
3. FAISS trains ``IVF{nlist},PQ{pq_m}x{pq_nbits}`` on the sample;
4. a second pass adds the vectors ``chunk_size`` at a time to a shard (a copy of the trained
   index) and writes the shard to disk when it holds ``shard_size`` vectors;
5. FAISS's ``merge_ondisk`` merges the shards' inverted lists into one ``index.ivfdata`` file,
   memory-mapped at search: RAM holds the centroids, the page cache the lists visited.

The result is a :class:`ShardedDenseRetriever` whose index and passages stay on disk:
``load_index`` opens it, ``search`` is the same as for every retriever.

Modules: :mod:`.sizing` (options and the memory and disk estimate), :mod:`.vectors` (the
Contriever vector files), :mod:`.build` (the two passes and the merge), :mod:`.search` (the
retriever); the passage file is :class:`~dynamicrag.retrieve.storage.PassageFile`.

Index folder::

    meta.json              kind "sharded", counts, options (ShardedOptions), build time
    passages.jsonl         the passages, in the order of the passage source
    sharded/index.faiss    the trained IVF-PQ (centroids, PQ codebooks); its lists are in
    sharded/index.ivfdata  each vector's PQ code and passage line (memory-mapped)
    sharded/offsets.npy    byte offset of each line of passages.jsonl, then the file size

Example:
    >>> from dynamicrag.retrieve.sharded import estimate, format_estimate
    >>> round(estimate(21_015_324, 768)["index_disk_bytes"] / 2**30, 2)
    2.09
    >>> build_sharded_index("wikipedia_embeddings", "indexes/wiki",  # doctest: +SKIP
    ...     passages="psgs_w100.tsv", encoder="facebook/contriever-msmarco")
    >>> load_index("indexes/wiki").search(["who wrote hamlet"], k=40)  # doctest: +SKIP

References:
    Jégou et al., "Product quantization for nearest neighbor search" (TPAMI 2011);
    Izacard et al., "Unsupervised Dense Information Retrieval with Contrastive Learning"
    (Contriever, 2022), whose embedding files this reads.
"""

from dynamicrag.retrieve.sharded.build import build_sharded_index, reservoir_add
from dynamicrag.retrieve.sharded.search import KIND, ShardedDenseRetriever
from dynamicrag.retrieve.sharded.sizing import (
    DEFAULT_NPROBE,
    ShardedOptions,
    default_pq_m,
    default_train_size,
    estimate,
    format_estimate,
)
from dynamicrag.retrieve.sharded.vectors import embedding_files, read_embedding_file

__all__ = [
    "DEFAULT_NPROBE",
    "KIND",
    "ShardedDenseRetriever",
    "ShardedOptions",
    "build_sharded_index",
    "default_pq_m",
    "default_train_size",
    "embedding_files",
    "estimate",
    "format_estimate",
    "read_embedding_file",
    "reservoir_add",
]
