"""Reading the reranker's output (``[3], [1]`` or ``None``) into a :class:`Selection`.

Never raises on model output. Fixes of the original parser (``re.findall(r"\\[(\\d+)\\]")``,
see docs/deviations.md): duplicates are dropped (first occurrence wins), ``[0]`` and ids past
the end are dropped instead of indexing from the end or crashing, bare numbers are read only
when the whole output is a list of numbers, and an output with no usable reading is an
explicit failed Selection with its raw text, to be counted, never hidden.
"""

from __future__ import annotations

import re

from dynamicrag.schema import Selection

# A whole output that is only numbers: "3, 1", "3 1", "3 and 1", "3." (unambiguous ids).
_BARE_IDS = re.compile(r"\d+(?:\s*(?:,|\band\b|\s)\s*\d+)*\.?")
_QUOTES = "\"'`*"


def parse_selection(
    raw: str, n_passages: int, id_pattern: str = r"\[(\d+)\]", none_word: str = "None"
) -> Selection:
    """Parse a reranker output over ``n_passages`` passages.

    Args:
        raw: The model's text.
        n_passages: How many passages the reranker saw (ids are 1..n_passages).
        id_pattern: Regex with one group for the id; the prompt style's ``id_pattern``.
        none_word: The word meaning "no passage needed".

    Returns:
        A Selection whose ``ids`` are distinct, in range and in output order.
        ``well_formed`` is True only when the output is exactly the grammar
        (``None`` or ``[i], [j]``) with every id distinct and in range.
        ``error`` is set when nothing usable could be read.
    """
    text = raw.strip()
    bare = text.strip(_QUOTES).rstrip(".").strip()
    if bare.lower() == none_word.lower():
        return Selection(ids=[], raw=raw, well_formed=text == none_word)

    found = [int(m) for m in re.findall(id_pattern, text)]
    strict = re.fullmatch(rf"(?:{id_pattern})(?:, (?:{id_pattern}))*", text) is not None
    if not found and _BARE_IDS.fullmatch(bare):
        found, strict = [int(m) for m in re.findall(r"\d+", bare)], False
    if not found:
        reason = "empty output" if not text else "no passage ids and no 'None' in the output"
        return Selection(ids=[], raw=raw, well_formed=False, error=f"unusable reranker output: {reason}")

    ids: list[int] = []
    for i in found:
        if 1 <= i <= n_passages and i not in ids:
            ids.append(i)
    well_formed = strict and len(ids) == len(found)
    if not ids:
        return Selection(
            ids=[], raw=raw, well_formed=False,
            error=f"unusable reranker output: no id within 1..{n_passages}",
        )
    return Selection(ids=ids, raw=raw, well_formed=well_formed)
