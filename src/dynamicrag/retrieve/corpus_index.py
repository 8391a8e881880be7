"""The index of a folder of documents, built once and cached: what ``ask``, ``chat``,
``serve --corpus`` and :meth:`dynamicrag.DynamicRAG.from_documents` search.

The cache key is the corpus' path and the size and modification time of each of its files,
so editing a document builds a new index, and an unchanged corpus loads the one built before.

Example:
    >>> retriever, folder = corpus_index()  # the bundled docs  # doctest: +SKIP
    >>> retriever.search(["How does DynamicRAG choose k?"], k=3)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from dynamicrag.retrieve.base import BaseRetriever
from dynamicrag.retrieve.index import build_index, load_index

Loading = Callable[[str], contextlib.AbstractContextManager]


def default_corpus() -> Path:
    """The embedded default corpus: the project's documentation, shipped inside the package."""
    return Path(str(resources.files("dynamicrag").joinpath("corpus")))


def corpus_key(corpus: Path, kind: str) -> str:
    """Cache key of a corpus: its path, and the size and mtime of each of its files."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file()) if corpus.is_dir() else [corpus]
    h = hashlib.sha256(f"{corpus.resolve()}|{kind}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def corpus_index(
    corpus: str | Path | None = None, kind: str = "bm25", *, loading: Loading = lambda what: contextlib.nullcontext()
) -> tuple[BaseRetriever, Path]:
    """The index of ``corpus``, built once and cached under ``cache_dir()/indexes``.

    Args:
        corpus: A folder of ``.md``/``.txt`` files or a corpus file; None: the bundled docs.
        kind: The index kind (``bm25``, ``dense``, ``hybrid``).
        loading: Entered around loading or building with what happens (the CLI shows a
            status line with it).

    Returns:
        ``(retriever, index folder)``.

    Raises:
        FileNotFoundError: No such corpus.
        DataError: A corpus file that cannot be read (file and line named).
    """
    from dynamicrag.data import load_corpus
    from dynamicrag.llm.models import cache_dir

    name = str(corpus) if corpus else "the bundled docs"
    corpus = Path(corpus) if corpus else default_corpus()
    if not corpus.exists():
        raise FileNotFoundError(f"corpus not found: {corpus}")
    index_dir = cache_dir() / "indexes" / corpus_key(corpus, kind)
    if (index_dir / "meta.json").exists():
        with loading(f"loading the index of {name}"):
            return load_index(index_dir), index_dir
    passages = load_corpus(corpus)
    with loading(f"indexing {len(passages)} passages of {name} (once)"):
        return build_index(passages, index_dir, kind=kind, show_progress=False), index_dir


__all__ = ["corpus_index", "corpus_key", "default_corpus"]
