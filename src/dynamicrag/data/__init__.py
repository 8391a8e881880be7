"""Loading outside data into :class:`~dynamicrag.schema.Example` / :class:`~dynamicrag.schema.Passage`,
and writing stage outputs that resume after a crash.

Example:
    >>> from dynamicrag.data import load_examples, load_corpus  # doctest: +SKIP
    >>> examples = load_examples("nq/nq-open-oracle.jsonl.gz")   # format and task detected
    >>> passages = load_corpus("psgs_w100.tsv")                  # streamed by iter_corpus
"""

from dynamicrag.data.detect import (
    CORPUS_FORMATS,
    EXAMPLE_FORMATS,
    detect_corpus_format,
    detect_example_format,
    guess_task,
    iter_corpus,
    iter_examples,
    load_corpus,
    load_examples,
)
from dynamicrag.data.errors import DataError
from dynamicrag.data.files import ResumableJsonlWriter, atomic_write_json, atomic_write_text, read_jsonl

__all__ = [
    "CORPUS_FORMATS",
    "EXAMPLE_FORMATS",
    "DataError",
    "ResumableJsonlWriter",
    "atomic_write_json",
    "atomic_write_text",
    "detect_corpus_format",
    "detect_example_format",
    "guess_task",
    "iter_corpus",
    "iter_examples",
    "load_corpus",
    "load_examples",
    "read_jsonl",
]
