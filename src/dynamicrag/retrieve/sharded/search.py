"""Searching a sharded index: its IVF-PQ lists and its passages stay on disk."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dynamicrag.retrieve.base import BaseRetriever
from dynamicrag.retrieve.dense import DenseSearch, DenseSearching
from dynamicrag.retrieve.sharded.sizing import ShardedOptions
from dynamicrag.retrieve.storage import (
    META_FILE,
    PASSAGES_FILE,
    PassageFile,
    check_files,
    line_offsets,
    read_meta,
)
from dynamicrag.schema import Passage

KIND = "sharded"
SUBDIR = "sharded"
INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"
OFFSETS_FILE = "offsets.npy"


class ShardedDenseRetriever(DenseSearching, BaseRetriever):
    """Dense retrieval over an on-disk IVF-PQ index and an on-disk corpus.

    Built with :func:`~dynamicrag.retrieve.sharded.build_sharded_index`, opened with
    :func:`dynamicrag.retrieve.load_index` (or :meth:`load`). It holds a
    :class:`~dynamicrag.retrieve.dense.DenseSearch` as the in-memory
    :class:`~dynamicrag.retrieve.dense.DenseRetriever` does, over a
    :class:`~dynamicrag.retrieve.storage.PassageFile`: ``search`` encodes the queries with the
    index's encoder and returns passages like every retriever; ``search_vectors`` takes query
    vectors made elsewhere. ``config.nprobe`` (IVF cells visited per query) can be changed on a
    loaded index. It has no ``build``: the vectors come precomputed.

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
        super().__init__(PassageFile(index_dir / PASSAGES_FILE, offsets), copy=False)  # read by offset
        if index.ntotal > len(self):
            raise ValueError(f"{index_dir}: the index holds {index.ntotal} vectors for {len(self)} passages")
        self.index_dir = index_dir
        self.dense = DenseSearch(index, config, device)

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str | None = None) -> ShardedDenseRetriever:
        """Open an index folder written by :func:`~dynamicrag.retrieve.sharded.build_sharded_index`.

        Raises:
            NotAnIndexError: Missing folder, meta.json or index file (named).
            ValueError: meta.json is of another kind, or the files disagree.
        """
        path = Path(index_dir).expanduser().resolve()
        meta = read_meta(path)
        if meta["kind"] != KIND:
            raise ValueError(f"{path / META_FILE}: kind {meta['kind']!r}, expected {KIND!r}")
        retriever = cls.open(path, meta)
        retriever.dense.device = device
        return retriever

    @classmethod
    def open(cls, index_dir: Path, meta: dict[str, Any]) -> ShardedDenseRetriever:
        """The index of ``index_dir``; its passages stay on disk (not read, unlike other kinds)."""
        return cls.read_files(index_dir, [], meta["options"])

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

    def options(self) -> dict[str, Any]:
        return asdict(self.config)

    def counts(self) -> dict[str, Any]:
        return {"passages": len(self), "vectors": int(self.index.ntotal), "dim": int(self.index.d)}

    def write_files(self, index_dir: Path) -> None:
        """Copy the index files (``save`` has written ``passages.jsonl`` already)."""
        (index_dir / SUBDIR).mkdir(parents=True, exist_ok=True)
        for name in (INDEX_FILE, IVFDATA_FILE):
            shutil.copyfile(self.index_dir / SUBDIR / name, index_dir / SUBDIR / name)
        np.save(index_dir / SUBDIR / OFFSETS_FILE, line_offsets(index_dir / PASSAGES_FILE))
