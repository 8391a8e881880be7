"""Plain documents: one ``.md``/``.txt`` file or a folder of them, cut into ~100-word passages.

Written by hand because the splitters we know (LangChain's, LlamaIndex's) count characters or
tokens and pull in large dependencies; the rule here is short: paragraphs (blank-line
separated) are packed into passages of about ``target_words`` words, a paragraph too long for
one passage is cut at sentence ends, a markdown heading starts a new passage and becomes its
title. Whitespace inside a passage is collapsed to single spaces, as in DPR's passages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from dynamicrag.data.errors import DataError
from dynamicrag.data.files import base_suffix, file_stem, open_text, reading
from dynamicrag.schema import Passage

SUFFIXES = (".md", ".markdown", ".txt")
TARGET_WORDS = 100
SLACK = 1.5  # a passage may grow to 1.5 x target to take a whole paragraph rather than cut it
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")  # ATX headings only
FENCE = re.compile(r"^ {0,3}(```|~~~)")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def sections(text: str, markdown: bool, default_title: str) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(title, paragraphs)`` per heading section; lines inside code fences are never headings."""
    title, paragraphs, lines, fenced = default_title, [], [], False

    def close_paragraph() -> None:
        joined = " ".join(" ".join(lines).split())
        if joined:
            paragraphs.append(joined)
        lines.clear()

    for line in text.splitlines():
        if markdown and FENCE.match(line):
            fenced = not fenced
            continue
        heading = HEADING.match(line) if markdown and not fenced else None
        if heading:
            close_paragraph()
            if paragraphs:
                yield title, paragraphs
            title, paragraphs = heading.group(2).strip() or default_title, []
        elif not line.strip() and not fenced:
            close_paragraph()
        else:
            lines.append(line)
    close_paragraph()
    if paragraphs:
        yield title, paragraphs


def _units(paragraph: str, target: int) -> Iterator[str]:
    """The paragraph whole if it fits one passage, else its sentences (over-long ones cut by words)."""
    if len(paragraph.split()) <= target * SLACK:
        yield paragraph
        return
    for sentence in SENTENCE_END.split(paragraph):
        words = sentence.split()
        if len(words) <= target * SLACK:
            yield sentence
        else:
            for i in range(0, len(words), target):
                yield " ".join(words[i : i + target])


def chunk(paragraphs: list[str], target: int = TARGET_WORDS) -> list[str]:
    """Pack paragraphs into passages of about ``target`` words (see the module docstring)."""
    out: list[str] = []
    buf: list[str] = []
    n = 0
    for paragraph in paragraphs:
        for unit in _units(paragraph, target):
            words = len(unit.split())
            if buf and (n >= target or n + words > target * SLACK):
                out.append(" ".join(buf))
                buf, n = [], 0
            buf.append(unit)
            n += words
    if buf:
        out.append(" ".join(buf))
    return out


def file_passages(path: Path, rel: str, target: int = TARGET_WORDS) -> Iterator[Passage]:
    """Passages of one file; ids ``"{rel}:{n}"`` (1-based), title the nearest heading or the file stem."""
    with reading(path), open_text(path) as f:
        text = f.read()
    markdown = base_suffix(path) in (".md", ".markdown")
    n = 0
    for title, paragraphs in sections(text, markdown, file_stem(path)):
        for body in chunk(paragraphs, target):
            n += 1
            yield Passage(id=f"{rel}:{n}", title=title, text=body)


def iter_corpus(path: str | Path, target: int = TARGET_WORDS) -> Iterator[Passage]:
    """Passages of a ``.md``/``.txt`` file (``.gz`` too) or of every such file under a folder.

    Files are read in sorted path order; hidden files and folders are skipped. Ids use the path
    relative to the folder (the file name for a single file).
    """
    root = Path(path)
    if not root.is_dir():
        yield from file_passages(root, root.name, target)
        return

    def hidden(p: Path) -> bool:
        return any(part.startswith(".") for part in p.relative_to(root).parts)

    files = sorted(p for p in root.rglob("*") if p.is_file() and base_suffix(p) in SUFFIXES and not hidden(p))
    if not files:
        raise DataError(f"no {'/'.join(SUFFIXES)} files in this folder", path=path)
    for p in files:
        yield from file_passages(p, p.relative_to(root).as_posix(), target)
