"""The retriever protocol, and the base class the bundled retrievers share.

A retriever owns a corpus of :class:`~dynamicrag.schema.Passage` and answers a batch of
queries with the ``k`` best passages each. Every bundled retriever works on corpus *positions*
internally (``search_positions``), so fusion (:mod:`.hybrid`) never depends on ids, and turns
positions into scored passage copies in one place (:meth:`BaseRetriever.search`).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from dynamicrag.retrieve.storage import (
    PASSAGES_FILE,
    check_files,
    check_target,
    index_folder,
    read_passages,
    write_meta,
    write_passages,
)
from dynamicrag.schema import Passage

logger = logging.getLogger(__name__)

# (position in the corpus, score), best first, for one query.
Hits = list[tuple[int, float]]


@runtime_checkable
class Retriever(Protocol):
    """What every retriever provides.

    Attributes:
        kind: Registry name of the retriever (``"bm25"``, ``"dense"``, ``"hybrid"``).
    """

    kind: str

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Return, for each query, up to ``k`` passages best first.

        The passages are copies of the corpus passages with ``score`` set; fewer than ``k``
        come back only when the corpus has fewer passages.
        """
        ...

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write a complete index to ``out_dir`` (read back by ``load_index``)."""
        ...

    def __len__(self) -> int:
        """Number of passages in the corpus."""
        ...


def passage_text(passage: Passage) -> str:
    """The text a retriever indexes for one passage: ``"title\\ntext"`` (just the text if untitled).

    Why a newline and not ``"title. text"``: word-piece and BM25 tokenizers treat the newline as
    plain whitespace, so this is token-for-token Contriever's own ``title + " " + text`` (the
    original's retriever) and FlashRAG's ``contents`` layout, without inventing punctuation.
    """
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


def check_corpus(passages: Sequence[Passage]) -> list[Passage]:
    """Check a corpus before indexing: not empty, only Passages, ids unique.

    Args:
        passages: The corpus.

    Returns:
        The passages as a list.

    Raises:
        TypeError: An item is not a Passage (its position is named).
        ValueError: The corpus is empty, or an id occurs twice (the id and both positions).
    """
    corpus = list(passages)
    if not corpus:
        raise ValueError("cannot index an empty corpus: no passages were given")
    seen: dict[str, int] = {}
    for i, p in enumerate(corpus):
        if not isinstance(p, Passage):
            raise TypeError(f"corpus item {i} is a {type(p).__name__}, expected a Passage")
        if p.id in seen:
            raise ValueError(
                f"passage id {p.id!r} occurs twice in the corpus (items {seen[p.id]} and {i}); "
                "ids must be unique within a corpus"
            )
        seen[p.id] = i
    return corpus


def check_queries(queries: Sequence[str], k: int) -> list[str]:
    """Validate the arguments of ``search`` and return the queries as a list."""
    if isinstance(queries, str):
        # A bare string would otherwise be searched one character at a time.
        raise TypeError("search() takes a list of queries; wrap a single query as [query]")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, str):
            raise TypeError(f"query {i} is a {type(q).__name__}, expected a str")
    return out


class BaseRetriever(abc.ABC):
    """Shared behaviour: scored copies, corpus size, saving through the common index layout.

    Subclasses implement :meth:`search_positions`, :meth:`options`, :meth:`write_files` and
    :meth:`read_files`; the files they write go in a subfolder named after their kind, so a
    hybrid index holds ``bm25/`` and ``dense/`` beside one shared ``passages.jsonl``. A kind
    built from a corpus also has a ``build(passages, *, show_progress, **options)``
    classmethod (:func:`~dynamicrag.retrieve.build_index` calls it).

    Args:
        passages: The corpus, in index order.
        copy: Keep a list copy of ``passages`` (False keeps the sequence given, e.g. a
            :class:`~dynamicrag.retrieve.storage.PassageFile` that stays on disk).
    """

    kind: ClassVar[str]

    def __init__(self, passages: Sequence[Passage], *, copy: bool = True) -> None:
        self._passages = list(passages) if copy else passages

    @property
    def passages(self) -> Sequence[Passage]:
        """The corpus, in index order (do not modify: positions must stay aligned)."""
        return self._passages

    def __len__(self) -> int:
        return len(self._passages)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_passages={len(self)}, options={self.options()})"

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Return, for each query, the ``k`` best passages (all of them if the corpus is smaller).

        Args:
            queries: The queries, searched as one batch.
            k: Passages wanted per query.

        Returns:
            One list per query, best first, of copies of the corpus passages with ``score``
            set (the retriever's own score: BM25, inner product, or fused RRF score).
        """
        queries = check_queries(queries, k)
        if not queries:
            return []
        hits = self.search_positions(queries, min(k, len(self)))
        # Deep copies: a caller editing ``extra`` of a result must not edit the corpus.
        return [
            [self._passages[i].model_copy(update={"score": float(s)}, deep=True) for i, s in row]
            for row in hits
        ]

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write a complete index (meta.json, passages.jsonl, index files) atomically.

        Args:
            out_dir: Folder to create; must not exist unless ``overwrite``.
            overwrite: Replace an existing index at ``out_dir``.

        Returns:
            The resolved ``out_dir``.

        Raises:
            FileExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
        """
        out = check_target(out_dir, overwrite=overwrite)
        with index_folder(out, overwrite=overwrite) as tmp:
            write_passages(self.passages, tmp / PASSAGES_FILE)
            self.write_files(tmp)
            write_meta(tmp, self.kind, self.counts(), self.options())
        logger.info("wrote %s index of %d passages to %s", self.kind, len(self), out)
        return out

    @classmethod
    def open(cls, index_dir: Path, meta: dict[str, Any]) -> BaseRetriever:
        """The retriever of a complete index folder whose ``meta.json`` says ``meta``: its files
        checked, its passages read, then :meth:`read_files`."""
        check_files(index_dir, cls.required_files(meta["options"]))
        return cls.read_files(index_dir, read_passages(index_dir / PASSAGES_FILE), meta["options"])

    @abc.abstractmethod
    def search_positions(self, queries: list[str], k: int) -> list[Hits]:
        """Top ``k`` corpus positions with scores per query, best first (``k <= len(self)``)."""

    @abc.abstractmethod
    def options(self) -> dict[str, Any]:
        """JSON-serialisable options that :meth:`read_files` needs to rebuild this retriever."""

    def counts(self) -> dict[str, Any]:
        """Sizes recorded in meta.json (subclasses add vocabulary size, dimension...)."""
        return {"passages": len(self)}

    @abc.abstractmethod
    def write_files(self, index_dir: Path) -> None:
        """Write this retriever's own files under ``index_dir`` (not meta.json nor passages)."""

    @classmethod
    @abc.abstractmethod
    def read_files(
        cls, index_dir: Path, passages: list[Passage], options: dict[str, Any]
    ) -> BaseRetriever:
        """Rebuild a retriever from the files :meth:`write_files` wrote and its options."""

    @classmethod
    @abc.abstractmethod
    def required_files(cls, options: dict[str, Any]) -> list[str]:
        """Paths, relative to the index folder, that must exist for :meth:`read_files`."""
