"""Building a sharded IVF-PQ index from precomputed vectors with bounded memory (the steps are
in :mod:`dynamicrag.retrieve.sharded`)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dynamicrag.retrieve.dense import ENCODER_PRESETS, resolve_encoder
from dynamicrag.retrieve.sharded.search import INDEX_FILE, IVFDATA_FILE, KIND, OFFSETS_FILE, SUBDIR, ShardedDenseRetriever
from dynamicrag.retrieve.sharded.sizing import DEFAULT_NPROBE, MAX_DEFAULT_TRAIN, ShardedOptions, estimate, format_estimate
from dynamicrag.retrieve.sharded.vectors import Blocks, EmbeddingSource, first_duplicate, id_array, open_source
from dynamicrag.retrieve.storage import PASSAGES_FILE, check_target, index_folder, line_offsets, write_meta, write_passages
from dynamicrag.schema import Passage

logger = logging.getLogger(__name__)


def passage_lines(vector_ids: np.ndarray, passage_ids: np.ndarray, source: str) -> np.ndarray:
    """Line in passages.jsonl of each vector's passage, int64 (the FAISS id of the vector).

    Raises:
        ValueError: An id repeats, or a vector id has no passage (the first one is named).
    """
    for ids, where in ((vector_ids, "the embeddings"), (passage_ids, source)):
        dup = first_duplicate(np.sort(ids))
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



def write_corpus(passages: str | Path | Iterable[Passage], path: Path) -> tuple[np.ndarray, str]:
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
                id_parts.append(id_array(batch))
                batch.clear()
            yield p

    write_passages(checked(), path)  # type: ignore[arg-type]  # any iterable is written as it comes
    id_parts.append(id_array(batch))
    ids = np.concatenate(id_parts)
    if not len(ids):
        raise ValueError(f"no passages in {source}")
    return ids, source



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
    blocks, described, largest = open_source(embeddings)
    start = last = time.perf_counter()
    seconds: dict[str, float] = {}  # per build step, for meta.json

    def lap(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        seconds[step], last = round(now - last, 1), now

    n, dim, vector_ids, sample = scan(blocks, config)
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
        passage_ids, source = write_corpus(passages, tmp / PASSAGES_FILE)
        lines = passage_lines(vector_ids, passage_ids, source)
        del vector_ids, passage_ids
        offsets = line_offsets(tmp / PASSAGES_FILE)
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

        shard_files = add_in_shards(blocks, index, lines, config, tmp / SUBDIR / "shards", show_progress)
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


def scan(blocks: Blocks, config: ShardedOptions) -> tuple[int, int, np.ndarray, np.ndarray]:
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
        id_parts.append(id_array(ids))
        for i in range(0, len(vectors), config.chunk_size):
            chunk = np.asarray(vectors[i : i + config.chunk_size], dtype=np.float32)
            filled = reservoir_add(reservoir, filled, n + i, chunk, rng)
        n += len(vectors)
    if not n:
        raise ValueError("no vectors in the embedding source")
    return n, dim, np.concatenate(id_parts), reservoir[:filled]


def reservoir_add(
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


def add_in_shards(
    blocks: Blocks, trained: Any, lines: np.ndarray, config: ShardedOptions, shard_dir: Path, show_progress: bool
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

