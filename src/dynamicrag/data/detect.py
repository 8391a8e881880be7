"""Format registries and auto-detection: ``load_examples(path)`` and ``load_corpus(path)``.

The format comes from the extension and, for JSON/JSONL, the keys of the first record;
``format=`` overrides. The task of an example is, first to last: the ``task`` argument, the
record's own ``task``/``dataset`` field, the format's task (FEVER, HotpotQA, ASQA with
``qa_pairs``), a known task named in the file or folder name, else ``qa``.

Detecting the format of a ``.json`` file parses it once more than loading does (JSONL only
reads its first line): pass ``format=`` for very large JSON files.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dynamicrag.data import dpr, dynamicrag_eval, fever, flashrag, hotpotqa, passages, text
from dynamicrag.data.errors import DataError
from dynamicrag.data.fields import task_from_name
from dynamicrag.data.files import base_suffix, file_stem, first_record
from dynamicrag.schema import Example, Passage

logger = logging.getLogger(__name__)

# name -> loader(path, fallback task) yielding examples in file order.
EXAMPLE_FORMATS: dict[str, Callable[[Path, str], Iterator[Example]]] = {
    "dynamicrag": dynamicrag_eval.iter_examples,  # DynamicRAG / Self-RAG eval, ASQA, NQ-open(-oracle)
    "fever": fever.iter_examples,
    "flashrag": flashrag.iter_examples,
    "hotpotqa": hotpotqa.iter_examples,  # native JSON (2WikiMultihopQA too)
}

# name -> loader(path) yielding passages in file order.
CORPUS_FORMATS: dict[str, Callable[[Path], Iterator[Passage]]] = {
    "passages": passages.iter_corpus,  # JSONL / JSON array of {id?, title?, text}
    "flashrag": flashrag.iter_corpus,  # {id, contents: '"Title"\ntext'}
    "hotpotqa": hotpotqa.iter_corpus,  # JSON object {title: [sentences]}
    "dpr": dpr.iter_corpus,  # psgs_w100.tsv, streamed
    "text": text.iter_corpus,  # a .md/.txt file or a folder of them
    "examples": lambda path: _passages_of_examples(path),  # the ctxs/docs/context of a QA file
}


# Fields that judge a passage against the question it came with: meaningless once the passage
# sits in a corpus that other questions retrieve from.
QUESTION_LABELS = ("isgold", "hasanswer", "supporting")


def _passages_of_examples(path: Path) -> Iterator[Passage]:
    """The candidate passages of an examples file, each (title, text) once: its own corpus.

    Labels relative to the source question (:data:`QUESTION_LABELS`, the retrieval score) are
    dropped: a passage retrieved for another question must not count as that one's gold.
    """
    seen: set[tuple[str, str]] = set()
    for example in iter_examples(path):
        for passage in example.passages:
            if (passage.title, passage.text) not in seen:
                seen.add((passage.title, passage.text))
                extra = {k: v for k, v in passage.extra.items() if k not in QUESTION_LABELS}
                yield passage.model_copy(update={"extra": extra, "score": None})

JSON_SUFFIXES = (".json", ".jsonl")


def _check(path: Path, registry: dict[str, Any], name: str, what: str) -> str:
    if name not in registry:
        raise DataError(f"unknown {what} format {name!r}; choose from {sorted(registry)}", path=path)
    return name


def _empty(path: Path, what: str = "records: the file is empty") -> DataError:
    # An input with nothing in it is a wrong path or a failed download far more often than
    # intended: say so rather than run a stage over zero examples or index zero passages.
    return DataError(f"no {what}", path=path)


def _non_empty(items: Iterator[Any], path: Path, what: str) -> Iterator[Any]:
    """``items`` unchanged, or a DataError at the end when there were none."""
    empty = True
    for item in items:
        empty = False
        yield item
    if empty:
        raise _empty(path, what)


def _first(path: Path, what: str) -> dict[str, Any] | None:
    if base_suffix(path) not in JSON_SUFFIXES:
        raise DataError(
            f"cannot tell the {what} format of a {base_suffix(path) or 'suffix-less'} file; "
            f"use .json/.jsonl{'/.tsv/.md/.txt or a folder' if what == 'corpus' else ''} "
            "(optionally .gz), or pass format=",
            path=path,
        )
    return first_record(path)


def detect_example_format(path: str | Path) -> str | None:
    """The examples format of ``path`` (a key of :data:`EXAMPLE_FORMATS`), None if it has no records."""
    path = Path(path)
    record = _first(path, "examples")
    if record is None:
        return None
    if "claim" in record:
        return "fever"
    if "supporting_facts" in record or isinstance(record.get("context"), list):
        return "hotpotqa"
    if "golden_answers" in record:
        return "flashrag"
    if "question" in record:
        return "dynamicrag"
    raise DataError(
        f"cannot detect the examples format from the keys {sorted(record)[:10]}; "
        f"pass format= one of {sorted(EXAMPLE_FORMATS)}",
        path=path,
    )


def detect_corpus_format(path: str | Path) -> str | None:
    """The corpus format of ``path`` (a key of :data:`CORPUS_FORMATS`), None if it has no records."""
    path = Path(path)
    suffix = base_suffix(path)
    if path.is_dir() or suffix in text.SUFFIXES:
        return "text"
    if suffix == ".tsv":
        return "dpr"
    record = _first(path, "corpus")
    if record is None:
        return None
    if "question" in record or "claim" in record:
        return "examples"
    if "contents" in record:
        return "flashrag"
    if "text" in record:
        return "passages"
    if any(isinstance(v, list) for v in record.values()):
        return "hotpotqa"  # {title: [sentences]}; its loader checks every value"
    raise DataError(
        f"cannot detect the corpus format from the keys {sorted(record)[:10]}; "
        f"pass format= one of {sorted(CORPUS_FORMATS)}",
        path=path,
    )


def guess_task(path: str | Path) -> str | None:
    """A known task named by the file name, else by its folder name (``nq/test.jsonl``), else None."""
    path = Path(path)
    return task_from_name(file_stem(path)) or task_from_name(path.parent.name)


def iter_examples(
    path: str | Path,
    *,
    format: str | None = None,
    task: str | None = None,
    limit: int | None = None,
    skip: int = 0,
) -> Iterator[Example]:
    """Stream the examples of a file in any supported format (see :data:`EXAMPLE_FORMATS`).

    Args:
        path: JSONL or JSON file, optionally gzipped.
        format: A key of :data:`EXAMPLE_FORMATS`; detected when None.
        task: Task of every example, overriding what the data or the file name say.
        limit: Stop after this many examples.
        skip: Leave out the first ``skip`` examples (held-apart slices: ``skip=1000, limit=300``).

    Returns:
        An iterator of :class:`~dynamicrag.schema.Example`, in file order.

    Raises:
        DataError: On an unknown format, an invalid record (naming file, line and field), a
            repeated example id (naming both lines), or a file without records.
    """
    path = Path(path)
    name = _check(path, EXAMPLE_FORMATS, format, "examples") if format else detect_example_format(path)
    if name is None:
        raise _empty(path)
    logger.debug("%s: examples format %s", path, name)
    examples = _non_empty(EXAMPLE_FORMATS[name](path, guess_task(path) or "qa"), path, "records: the file is empty")
    if task:
        examples = (ex.model_copy(update={"task": task}) for ex in examples)
    if skip < 0:
        raise ValueError(f"skip: must be >= 0, got {skip}")
    return itertools.islice(examples, skip, None if limit is None else skip + limit)


def load_examples(
    path: str | Path,
    *,
    format: str | None = None,
    task: str | None = None,
    limit: int | None = None,
    skip: int = 0,
) -> list[Example]:
    """All examples of a file as a list; same arguments as :func:`iter_examples`."""
    return list(iter_examples(path, format=format, task=task, limit=limit, skip=skip))


def iter_corpus(path: str | Path, *, format: str | None = None) -> Iterator[Passage]:
    """Stream the passages of a corpus in any supported format (see :data:`CORPUS_FORMATS`).

    Args:
        path: A JSON/JSONL/TSV file (optionally gzipped), a ``.md``/``.txt`` file, or a folder.
        format: A key of :data:`CORPUS_FORMATS`; detected when None.

    Returns:
        An iterator of :class:`~dynamicrag.schema.Passage`, in file order.

    Raises:
        DataError: On an unknown format, an invalid record (naming file, line and field), or a
            corpus without passages.
    """
    path = Path(path)
    name = _check(path, CORPUS_FORMATS, format, "corpus") if format else detect_corpus_format(path)
    if name is None:
        raise _empty(path)
    logger.debug("%s: corpus format %s", path, name)
    return _non_empty(CORPUS_FORMATS[name](path), path, "passages in this corpus")


def load_corpus(path: str | Path, *, format: str | None = None) -> list[Passage]:
    """All passages of a corpus as a list; same arguments as :func:`iter_corpus`."""
    return list(iter_corpus(path, format=format))
