"""Sizing a sharded index before it is built: its options, the IVF-PQ defaults, and the memory
and disk it will take (:func:`estimate`, printed by :func:`format_estimate`).

Example:
    >>> round(estimate(21_015_324, 768)["index_disk_bytes"] / 2**30, 2)
    2.09
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamicrag.retrieve.dense import DenseOptions, default_nlist

# Cap of the default training sample (3 GiB of 768-d float32): FAISS k-means uses at most 256
# points a cell anyway, and 64 train well.
MAX_DEFAULT_TRAIN = 2**20
DEFAULT_NPROBE = 64


@dataclass
class ShardedOptions(DenseOptions):
    """A dense index's options plus the IVF-PQ and build settings of a sharded one.

    Stored in meta.json. Of :class:`DenseOptions`, the encoder fields, ``nlist`` (None:
    about ``4 sqrt(n)``) and ``nprobe`` (None: 64; set ``retriever.config.nprobe`` to change it
    on a loaded index) apply; ``faiss_index`` is always ``"ivf"`` and the HNSW fields are unused.

    Args:
        pq_m: PQ sub-quantizers, a divisor of the dimension; None: :func:`default_pq_m`.
        pq_nbits: Bits per sub-quantizer code (8: 256 centroids each).
        train_size: Training vectors, a uniform sample; None: :func:`default_train_size`.
        shard_size: Vectors per shard (RAM while adding: ``shard_size * (pq_m + 8)`` bytes).
        chunk_size: Vectors converted to float32 and added per step.
        seed: Seed of the training sample.
    """

    faiss_index: str = "ivf"
    pq_m: int | None = None
    pq_nbits: int = 8
    train_size: int | None = None
    shard_size: int = 2_000_000
    chunk_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.faiss_index != "ivf":
            raise ValueError(f"a sharded index is always faiss_index='ivf', got {self.faiss_index!r}")
        for name in ("pq_m", "pq_nbits", "train_size", "shard_size", "chunk_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")



def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers: the largest divisor of ``dim`` not above ``dim / 8`` (96 for 768).

    At 8 bits each that is one byte per 8 dimensions, 32x smaller than float32.
    """
    return next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


def default_train_size(n: int, nlist: int, pq_nbits: int = 8) -> int:
    """Training vectors: 64 per IVF cell and 39 per PQ centroid (FAISS's minimum), at most
    :data:`MAX_DEFAULT_TRAIN` and ``n``."""
    return min(n, MAX_DEFAULT_TRAIN, max(64 * nlist, 39 * 2**pq_nbits))


def estimate(
    n: int,
    dim: int,
    options: ShardedOptions | None = None,
    *,
    id_bytes: int = 8,
    largest_file_bytes: int = 0,
    passage_file_bytes: int = 0,
) -> dict[str, Any]:
    """Memory and disk a sharded index of ``n`` vectors takes, to print before building it.

    Args:
        n: Vectors.
        dim: Their dimension.
        options: The index options (None: the defaults); unset ``nlist``, ``pq_m`` and
            ``train_size`` are resolved here.
        id_bytes: Bytes of the longest id (ids are kept as fixed-width bytes while building).
        largest_file_bytes: Size of the largest vector file, which is read whole (a pickle
            cannot be read in parts); 0 leaves it out.
        passage_file_bytes: Size of the uncompressed passage file (``passages.jsonl`` is about
            as big); 0 leaves it out.

    Returns:
        The resolved ``nlist``, ``pq_m``, ``pq_nbits``, ``train_size``, ``n_shards`` and
        ``factory`` (the FAISS index string), and in bytes: ``index_disk_bytes`` (lists and
        centroids), ``offsets_disk_bytes``, ``passages_disk_bytes``, ``shards_disk_bytes``
        (on disk while building only), ``train_bytes``, ``shard_bytes``, ``build_peak_bytes``,
        ``search_bytes`` (resident; the lists and passages are memory-mapped) and ``flat_bytes``
        (the float32 vectors, for comparison). FAISS's own buffers are not counted: allow ~10%.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"n and dim must be positive, got n={n}, dim={dim}")
    o = options or ShardedOptions()
    nlist = o.nlist or default_nlist(n)
    pq_m = o.pq_m or default_pq_m(dim)
    if dim % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the dimension {dim}")
    train = min(n, o.train_size or default_train_size(n, nlist, o.pq_nbits))
    entry = -(-pq_m * o.pq_nbits // 8) + 8  # PQ code + the int64 passage line, per vector
    centroids = (nlist + 2**o.pq_nbits) * dim * 4  # coarse centroids + PQ codebooks, float32
    lists = n * entry
    train_bytes = train * dim * 4
    # Pass 1 keeps a uniform sample of up to train_size vectors (2^20 by default: n is not
    # known yet), held until training.
    reservoir = min(n, o.train_size or MAX_DEFAULT_TRAIN) * dim * 4
    pq_sample = min(train, 256 * 2**o.pq_nbits) * dim * 4  # FAISS trains PQ on at most 256 a centroid
    chunk = min(n, o.chunk_size) * dim * 4
    shard = min(n, o.shard_size) * entry
    io = largest_file_bytes + chunk  # a vector file being read and its float32 chunk
    build_peak = max(
        n * id_bytes + reservoir + io,  # pass 1: ids, sample
        reservoir + n * (2 * id_bytes + 16),  # vector ids to passage lines: two id arrays, a sort, the lines
        reservoir + train_bytes + pq_sample + centroids,  # training: the sample, its residuals, PQ's subsample
        8 * n + io + shard + centroids,  # pass 2: the lines, one shard
    )
    return {
        "n": n,
        "dim": dim,
        "factory": f"IVF{nlist},PQ{pq_m}x{o.pq_nbits}",
        "nlist": nlist,
        "pq_m": pq_m,
        "pq_nbits": o.pq_nbits,
        "train_size": train,
        "n_shards": -(-n // o.shard_size),
        "index_disk_bytes": lists + centroids,
        "offsets_disk_bytes": 8 * (n + 1),
        "passages_disk_bytes": passage_file_bytes,
        "shards_disk_bytes": lists,
        "train_bytes": train_bytes,
        "reservoir_bytes": reservoir,
        "shard_bytes": shard,
        "build_peak_bytes": build_peak,
        "search_bytes": centroids,
        "flat_bytes": n * dim * 4,
    }


def format_estimate(est: dict[str, Any]) -> str:
    """:func:`estimate`'s figures as a few lines, sizes in GiB/MiB (for logs and the CLI)."""

    def size(b: float) -> str:
        return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"

    passages = est["passages_disk_bytes"]
    return "\n".join(
        [
            f"{est['factory']} index of {est['n']:,} x {est['dim']} vectors in {est['n_shards']} "
            f"shard(s), trained on {est['train_size']:,} vectors",
            f"  disk: index {size(est['index_disk_bytes'])} + passage offsets "
            f"{size(est['offsets_disk_bytes'])}"
            + (f" + passages.jsonl ~{size(passages)}" if passages else " + passages.jsonl")
            + f"; {size(est['shards_disk_bytes'])} more while building"
            f" (float32 vectors: {size(est['flat_bytes'])})",
            f"  build RAM peak: ~{size(est['build_peak_bytes'])} (training sample "
            f"{size(est['train_bytes'])} of {size(est['reservoir_bytes'])} drawn, shard {size(est['shard_bytes'])})",
            f"  search RAM: ~{size(est['search_bytes'])} of centroids; lists and passages are "
            "memory-mapped (page cache)",
        ]
    )

