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

The result is a :class:`~dynamicrag.retrieve.dense.DenseRetriever` whose index and passages
stay on disk: ``load_index`` opens it, ``search`` is the same as for every retriever.

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

from __future__ import annotations

import glob
import logging
import mmap
import pickle
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, overload

import numpy as np
from tqdm.auto import tqdm

from dynamicrag.retrieve.dense import (
    ENCODER_PRESETS,
    DenseOptions,
    DenseRetriever,
    _default_nlist,
    resolve_encoder,
)
from dynamicrag.retrieve.storage import (
    META_FILE,
    PASSAGES_FILE,
    check_files,
    check_target,
    index_folder,
    read_meta,
    write_meta,
    write_passages,
)
from dynamicrag.schema import Passage

logger = logging.getLogger(__name__)

KIND = "sharded"
SUBDIR = "sharded"
INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"
OFFSETS_FILE = "offsets.npy"
# Cap of the default training sample (3 GiB of 768-d float32): FAISS k-means uses at most 256
# points a cell anyway, and 64 train well.
MAX_DEFAULT_TRAIN = 2**20
DEFAULT_NPROBE = 64
# A vectors' source: a Contriever folder or glob, a list of files, or a callable giving a fresh
# iterable of (ids, vectors) blocks on every call.
EmbeddingSource = str | Path | Sequence[str | Path] | Callable[[], Iterable[tuple[Sequence[Any], np.ndarray]]]
_Blocks = Callable[[], Iterator[tuple[str, Sequence[Any], np.ndarray]]]


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


# ----------------------------------------------------------------------------- estimates


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
    nlist = o.nlist or _default_nlist(n)
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


# ----------------------------------------------------------------------------- vector files


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


def _open_source(source: EmbeddingSource) -> tuple[_Blocks, str, int]:
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


# ----------------------------------------------------------------------------- ids


def _id_array(ids: Iterable[Any]) -> np.ndarray:
    # Fixed-width UTF-8 bytes: 21M ids take ~200 MB as one array, several GB as a Python set or
    # dict, so ids are matched by sorting and searchsorted rather than by check_corpus's dict.
    return np.array([str(i).encode("utf-8") for i in ids], dtype=np.bytes_)


def _first_duplicate(sorted_ids: np.ndarray) -> str | None:
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    return sorted_ids[dup[0]].decode("utf-8") if len(dup) else None


def _passage_lines(vector_ids: np.ndarray, passage_ids: np.ndarray, source: str) -> np.ndarray:
    """Line in passages.jsonl of each vector's passage, int64 (the FAISS id of the vector).

    Raises:
        ValueError: An id repeats, or a vector id has no passage (the first one is named).
    """
    for ids, where in ((vector_ids, "the embeddings"), (passage_ids, source)):
        dup = _first_duplicate(np.sort(ids))
        if dup is not None:
            raise ValueError(f"id {dup!r} occurs more than once in {where}; ids must be unique")
    order = np.argsort(passage_ids)
    pos = np.minimum(np.searchsorted(passage_ids[order], vector_ids), len(order) - 1)
    missing = np.flatnonzero(passage_ids[order[pos]] != vector_ids)
    if len(missing):
        raise ValueError(
            f"{len(missing)} vector id(s) have no passage in {source}, e.g. "
            f"{vector_ids[missing[0]].decode('utf-8')!r} (vector {int(missing[0])}): are the vectors "
            "and the passages from the same corpus?"
        )
    if len(passage_ids) > len(vector_ids):
        logger.warning(
            "%d passages of %s have no vector and cannot be retrieved",
            len(passage_ids) - len(vector_ids),
            source,
        )
    return order[pos].astype(np.int64)


# ----------------------------------------------------------------------------- passages


def _write_corpus(passages: str | Path | Iterable[Passage], path: Path) -> tuple[np.ndarray, str]:
    """Stream the passages into ``passages.jsonl``; return their ids and a name for errors."""
    if isinstance(passages, (str, Path)):
        from dynamicrag.data import iter_corpus

        source, stream = str(passages), iter_corpus(passages)  # psgs_w100.tsv: streamed by rows
    else:
        source, stream = "the passages", iter(passages)
    id_parts: list[np.ndarray] = []
    batch: list[str] = []

    def checked() -> Iterator[Passage]:
        for i, p in enumerate(stream):
            if not isinstance(p, Passage):
                raise TypeError(f"passage {i} of {source} is a {type(p).__name__}, expected a Passage")
            batch.append(p.id)
            if len(batch) == 1_000_000:  # ids as compact arrays, not 21M Python strings
                id_parts.append(_id_array(batch))
                batch.clear()
            yield p

    write_passages(checked(), path)  # type: ignore[arg-type]  # any iterable is written as it comes
    id_parts.append(_id_array(batch))
    ids = np.concatenate(id_parts)
    if not len(ids):
        raise ValueError(f"no passages in {source}")
    return ids, source


def _line_offsets(path: Path) -> np.ndarray:
    """Byte offset where each line of ``path`` starts, then the file size: (n_lines + 1,)."""
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
        path: The passages file (one JSON passage a line, as ``write_passages`` writes).
        offsets: Byte offset of each line, then the file size (:data:`OFFSETS_FILE`).
    """

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.path = path
        self._offsets = offsets
        size = path.stat().st_size
        if int(offsets[-1]) != size:
            raise ValueError(
                f"{path} has {size} bytes but {OFFSETS_FILE} expects {int(offsets[-1])}: "
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


# ----------------------------------------------------------------------------- build


def build_sharded_index(
    embeddings: EmbeddingSource,
    out_dir: str | Path,
    *,
    passages: str | Path | Iterable[Passage],
    encoder: str | None,
    overwrite: bool = False,
    on_estimate: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = True,
    **options: Any,
) -> ShardedDenseRetriever:
    """Index precomputed passage vectors in shards with bounded memory; write the index folder.

    Args:
        embeddings: The vectors: a Contriever-layout folder or glob (``passages_00``, ...,
            pickles of ``(ids, vectors)``), a list of such files, or a callable returning a
            fresh iterable of ``(ids, vectors)`` blocks, the same on each of its two calls.
        out_dir: Index folder to create (built beside it in a temporary folder, then renamed).
        passages: What the ids refer to: a corpus file (``psgs_w100.tsv`` is streamed by the
            DPR loader; the other corpus formats work too) or an iterable of :class:`Passage`.
            Every vector id must be a passage id; passages without a vector are kept but
            never retrieved.
        encoder: The query encoder the vectors were made with, e.g.
            ``"facebook/contriever-msmarco"`` for Contriever's Wikipedia files; None names the
            bundled all-MiniLM-L6-v2. Required, so a mismatch is never a silent default. It is
            not loaded here (the first search loads it).
        overwrite: Replace an existing index at ``out_dir``.
        on_estimate: Called with :func:`estimate`'s dict once the vectors are counted, before
            anything is built (:func:`format_estimate` renders it).
        show_progress: Show a progress bar while adding vectors.
        **options: Fields of :class:`ShardedOptions`: ``nlist``, ``pq_m``, ``pq_nbits``,
            ``train_size``, ``shard_size``, ``chunk_size``, ``nprobe``, ``seed``, and the query
            encoder's ``pooling``, ``normalize`` (for known encoders the preset), ``max_length``,
            ``batch_size``.

    Returns:
        The retriever, opened from the written folder.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ValueError: Vectors that disagree on the dimension, repeated ids, a vector id without
            a passage (the first is named), too few vectors to train, bad options.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    out = check_target(out_dir, overwrite=overwrite)
    unknown = set(options) - {f.name for f in fields(ShardedOptions)}
    if unknown:
        raise TypeError(f"unknown sharded index option(s): {sorted(unknown)}")
    name, _, _ = resolve_encoder(encoder)
    preset = ENCODER_PRESETS.get(name, {})
    options.setdefault("pooling", preset.get("pooling"))
    options.setdefault("normalize", preset.get("normalize", True))
    config = ShardedOptions(encoder=name, **options)
    blocks, described, largest = _open_source(embeddings)
    start = last = time.perf_counter()
    seconds: dict[str, float] = {}  # per build step, for meta.json

    def lap(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        seconds[step], last = round(now - last, 1), now

    n, dim, vector_ids, sample = _scan(blocks, config)
    # An uncompressed passage file's size is about that of passages.jsonl (unknown otherwise).
    plain = isinstance(passages, (str, Path)) and Path(passages).suffix in (".tsv", ".jsonl")
    est = estimate(
        n,
        dim,
        config,
        id_bytes=vector_ids.itemsize,
        largest_file_bytes=largest,
        passage_file_bytes=Path(passages).stat().st_size if plain else 0,  # type: ignore[arg-type]
    )
    config.nlist, config.pq_m = est["nlist"], est["pq_m"]
    config.train_size = min(est["train_size"], len(sample))  # the sample holds min(n, cap) vectors
    config.nprobe = min(config.nprobe or DEFAULT_NPROBE, config.nlist)
    need = max(config.nlist, 2**config.pq_nbits)  # k-means needs a point per centroid
    if config.train_size < need:
        raise ValueError(
            f"{config.train_size} training vectors for {config.nlist} IVF cells and "
            f"{2**config.pq_nbits} PQ centroids: need at least {need} (lower nlist or pq_nbits)"
        )
    logger.info("indexing %d vectors of %s:\n%s", n, described, format_estimate(est))
    if on_estimate is not None:
        on_estimate(est)
    lap("scan")

    with index_folder(out, overwrite=overwrite) as tmp:
        (tmp / SUBDIR).mkdir()
        passage_ids, source = _write_corpus(passages, tmp / PASSAGES_FILE)
        lines = _passage_lines(vector_ids, passage_ids, source)
        del vector_ids, passage_ids
        offsets = _line_offsets(tmp / PASSAGES_FILE)
        np.save(tmp / SUBDIR / OFFSETS_FILE, offsets)
        lap("passages")

        # Shuffled in place (no second copy), the sample's first train_size rows are a uniform
        # subset of it, so a uniform sample of all the vectors.
        np.random.default_rng(config.seed).shuffle(sample)
        train = sample[: config.train_size]
        index = faiss.index_factory(dim, est["factory"], faiss.METRIC_INNER_PRODUCT)
        # index_factory turns on polysemous training, a slow reordering of the codes that only
        # Hamming-distance search uses (10x the PQ training time); inner-product search never does.
        faiss.downcast_index(index).do_polysemous_training = False
        index.train(train)
        del train, sample
        lap("train")
        logger.info("%s trained on %d vectors in %.1fs", est["factory"], config.train_size, seconds["train"])

        shard_files = _add_in_shards(blocks, index, lines, config, tmp / SUBDIR / "shards", show_progress)
        lap("add")
        # The shards' lists are read memory-mapped and appended to one file, never all in RAM.
        # (merge_ondisk keeps the shard files mapped until the process exits: their disk space
        # returns then.)
        merge_ondisk(index, [str(f) for f in shard_files], str(tmp / SUBDIR / IVFDATA_FILE))
        faiss.write_index(index, str(tmp / SUBDIR / INDEX_FILE))
        del index
        shutil.rmtree(tmp / SUBDIR / "shards")
        lap("merge")
        counts = {"passages": len(offsets) - 1, "vectors": n, "dim": dim}
        build = {"seconds": round(time.perf_counter() - start, 1), "shards": len(shard_files), "steps": seconds}
        write_meta(tmp, KIND, counts, asdict(config), build=build)
    logger.info("sharded index of %d vectors written to %s in %.1fs", n, out, build["seconds"])
    return ShardedDenseRetriever.load(out)


def _scan(blocks: _Blocks, config: ShardedOptions) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Pass 1: count the vectors, check their dimension, collect ids, sample for training.

    Returns:
        ``(n, dim, ids, sample)``: the sample is uniform over all ``n`` vectors, float32.
    """
    n, dim = 0, 0
    id_parts: list[np.ndarray] = []
    rng = np.random.default_rng(config.seed)
    # The sample size depends on n, unknown yet: reserve the cap (pages are only committed as
    # rows are written) and draw the final sample from it later.
    reservoir = np.empty(0, dtype=np.float32)
    filled = 0
    for where, ids, vectors in blocks():
        if not dim:
            dim = vectors.shape[1]
            reservoir = np.empty((config.train_size or MAX_DEFAULT_TRAIN, dim), dtype=np.float32)
        elif vectors.shape[1] != dim:
            raise ValueError(f"{where}: vectors of dimension {vectors.shape[1]}, earlier ones have {dim}")
        id_parts.append(_id_array(ids))
        for i in range(0, len(vectors), config.chunk_size):
            chunk = np.asarray(vectors[i : i + config.chunk_size], dtype=np.float32)
            filled = _reservoir_add(reservoir, filled, n + i, chunk, rng)
        n += len(vectors)
    if not n:
        raise ValueError("no vectors in the embedding source")
    return n, dim, np.concatenate(id_parts), reservoir[:filled]


def _reservoir_add(
    reservoir: np.ndarray, filled: int, seen: int, chunk: np.ndarray, rng: np.random.Generator
) -> int:
    """Algorithm R (Vitter 1985) over a chunk: row t (0-based, overall) replaces a random slot
    with probability cap / (t + 1). By hand: numpy has no streaming sampler. Returns the
    number of filled slots."""
    cap = len(reservoir)
    take = min(cap - filled, len(chunk))
    reservoir[filled : filled + take] = chunk[:take]
    rest = chunk[take:]
    if len(rest):
        t = seen + take + np.arange(len(rest))  # overall positions of the remaining rows
        slots = (rng.random(len(rest)) * (t + 1)).astype(np.int64)  # uniform in [0, t]
        rows = np.flatnonzero(slots < cap)
        # When rows draw the same slot the last one wins, as in the sequential algorithm.
        last = len(rows) - 1 - np.unique(slots[rows][::-1], return_index=True)[1]
        reservoir[slots[rows[last]]] = rest[rows[last]]
    return filled + take


def _add_in_shards(
    blocks: _Blocks, trained: Any, lines: np.ndarray, config: ShardedOptions, shard_dir: Path, show_progress: bool
) -> list[Path]:
    """Pass 2: add the vectors a chunk at a time to a copy of ``trained``, with their passage
    line as id, writing it to ``shard_dir`` whenever it holds ``shard_size`` vectors."""
    import faiss

    shard_dir.mkdir()
    files: list[Path] = []
    shard = faiss.clone_index(trained)
    added = 0

    def flush() -> None:
        nonlocal shard
        files.append(shard_dir / f"{len(files):05d}.faiss")
        faiss.write_index(shard, str(files[-1]))
        shard = faiss.clone_index(trained)

    with tqdm(total=len(lines), desc="Adding vectors", unit="vector", disable=not show_progress) as bar:
        for _, _, vectors in blocks():
            for i in range(0, len(vectors), config.chunk_size):
                chunk = np.ascontiguousarray(vectors[i : i + config.chunk_size], dtype=np.float32)
                if added + len(chunk) > len(lines):
                    raise ValueError(f"the embedding source gave more than {len(lines)} vectors on its second pass")
                while len(chunk):
                    room = config.shard_size - shard.ntotal
                    piece, chunk = chunk[:room], chunk[room:]
                    shard.add_with_ids(piece, lines[added : added + len(piece)])
                    added += len(piece)
                    bar.update(len(piece))
                    if shard.ntotal == config.shard_size:
                        flush()
    if shard.ntotal:
        flush()
    if added != len(lines):
        raise ValueError(f"the embedding source gave {len(lines)} vectors on its first pass, {added} on its second")
    return files


# ----------------------------------------------------------------------------- search


class ShardedDenseRetriever(DenseRetriever):
    """A :class:`DenseRetriever` over an on-disk IVF-PQ index and an on-disk corpus.

    Built with :func:`build_sharded_index`, opened with :func:`dynamicrag.retrieve.load_index`
    (or :meth:`load`). ``search`` encodes the queries with the index's encoder and returns
    passages like every retriever; ``search_vectors`` takes query vectors made elsewhere.
    ``config.nprobe`` (IVF cells visited per query) can be changed on a loaded index.

    Args:
        index_dir: The index folder (its passages are read from there by offset).
        index: The IVF-PQ index, its lists memory-mapped.
        offsets: Byte offsets of the lines of ``passages.jsonl``, then its size.
        config: The options stored in meta.json.
        device: Torch device for query encoding; None lets sentence-transformers choose.
    """

    kind = KIND

    def __init__(
        self,
        index_dir: Path,
        index: Any,
        offsets: np.ndarray,
        config: ShardedOptions,
        *,
        device: str | None = None,
    ) -> None:
        # Not DenseRetriever.__init__: it copies the passages into a list; these stay on disk.
        self._passages = PassageFile(index_dir / PASSAGES_FILE, offsets)  # type: ignore[assignment]
        if index.ntotal > len(self._passages):
            raise ValueError(
                f"{index_dir}: the index holds {index.ntotal} vectors for {len(self._passages)} passages"
            )
        self.index_dir = index_dir
        self.index = index
        self.config = config
        self.device = device

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str | None = None) -> ShardedDenseRetriever:
        """Open an index folder written by :func:`build_sharded_index`.

        Raises:
            NotAnIndexError: Missing folder, meta.json or index file (named).
            ValueError: meta.json is of another kind, or the files disagree.
        """
        path = Path(index_dir).expanduser().resolve()
        meta = read_meta(path)
        if meta["kind"] != KIND:
            raise ValueError(f"{path / META_FILE}: kind {meta['kind']!r}, expected {KIND!r}")
        retriever = cls.read_files(path, [], meta["options"])
        retriever.device = device
        return retriever

    @classmethod
    def read_files(cls, index_dir: Path, passages: list[Passage], options: dict[str, Any]) -> ShardedDenseRetriever:
        """Open the files of ``index_dir``; ``passages`` is ignored (they are read by offset)."""
        import faiss

        check_files(index_dir, cls.required_files(options))
        # The lists file is found beside index.faiss, wherever the folder was moved since.
        index = faiss.read_index(str(index_dir / SUBDIR / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR)
        offsets = np.load(index_dir / SUBDIR / OFFSETS_FILE, mmap_mode="r")
        return cls(index_dir, index, offsets, ShardedOptions.from_dict(options))

    @classmethod
    def required_files(cls, options: dict[str, Any]) -> list[str]:
        return [f"{SUBDIR}/{name}" for name in (INDEX_FILE, IVFDATA_FILE, OFFSETS_FILE)]

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> DenseRetriever:
        """Not available: a sharded index is built on disk by :func:`build_sharded_index`."""
        raise TypeError("a sharded index is built from precomputed vectors: use build_sharded_index()")

    def counts(self) -> dict[str, Any]:
        return {"passages": len(self), "vectors": int(self.index.ntotal), "dim": int(self.index.d)}

    def embeddings(self) -> np.ndarray:
        """Not available: the index keeps PQ codes, not the vectors (read the embedding files)."""
        raise NotImplementedError("a sharded index keeps PQ codes, not vectors; read its embedding files")

    def write_files(self, index_dir: Path) -> None:
        """Copy the index files (``save`` has written ``passages.jsonl`` already)."""
        (index_dir / SUBDIR).mkdir(parents=True, exist_ok=True)
        for name in (INDEX_FILE, IVFDATA_FILE):
            shutil.copyfile(self.index_dir / SUBDIR / name, index_dir / SUBDIR / name)
        np.save(index_dir / SUBDIR / OFFSETS_FILE, _line_offsets(index_dir / PASSAGES_FILE))


__all__ = [
    "DEFAULT_NPROBE",
    "KIND",
    "PassageFile",
    "ShardedDenseRetriever",
    "ShardedOptions",
    "build_sharded_index",
    "default_pq_m",
    "default_train_size",
    "embedding_files",
    "estimate",
    "format_estimate",
    "read_embedding_file",
]
