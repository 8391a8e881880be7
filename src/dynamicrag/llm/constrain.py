"""Prefix checks for the reranker's id grammar, used for constrained decoding.

Grammar: ``None`` | ``[i]`` (``, [j]``)* with distinct ids in 1..max_id, then end of text.

Written by hand because it is a dozen lines of state, where a general regex/grammar engine
(outlines, lm-format-enforcer) would add a heavy dependency and still not express "ids in
range and distinct". Engines that take a regex or a GBNF grammar (vLLM, llama.cpp,
OpenAI-compatible servers) get :func:`id_list_regex` / :func:`id_list_gbnf`, which hold the ids
to 1..max_id and the list to at most max_id ids; distinct ids, which no compact regex
expresses, are then left to the parser.
"""

from __future__ import annotations

import re

_TAIL = re.compile(r"\[([1-9][0-9]*)?(\])?(,)?")


def _id_alternatives(max_id: int) -> list[str]:
    if max_id < 1:
        raise ValueError(f"max_id must be >= 1, got {max_id}")
    return [str(i) for i in range(max_id, 0, -1)]  # longest first: a backtracking regex tries 10 before 1


def id_list_regex(max_id: int) -> str:
    """A regex for ``None`` | ``[i]`` (``, [j]``)* with ids in 1..max_id and at most max_id of them."""
    one = r"\[(" + "|".join(_id_alternatives(max_id)) + r")\]"
    return f"(None|{one}(, {one}){{0,{max_id - 1}}})"


def id_list_gbnf(max_id: int) -> str:
    """The same language as :func:`id_list_regex` in GBNF, llama.cpp's grammar format."""
    ids = " | ".join(f'"{i}"' for i in _id_alternatives(max_id))
    return f'root ::= "None" | id (", " id){{0,{max_id - 1}}}\nid ::= "[" ({ids}) "]"'


def _ids_so_far(text: str) -> tuple[list[int], str] | None:
    """Split ``text`` into completed ids and the unfinished tail; None if off-grammar."""
    parts = text.split(", ")
    ids: list[int] = []
    for part in parts[:-1]:
        m = re.fullmatch(r"\[([1-9][0-9]*)\]", part)
        if not m:
            return None
        ids.append(int(m.group(1)))
    return ids, parts[-1]


def is_valid_prefix(text: str, max_id: int) -> bool:
    """True when ``text`` can still be extended into a complete id list over 1..max_id."""
    if "None".startswith(text):  # includes the empty text
        return True
    split = _ids_so_far(text)
    if split is None:
        return False
    ids, tail = split
    if len(set(ids)) != len(ids) or any(i > max_id for i in ids):
        return False
    if tail == "":  # just after ", ": another distinct id must exist
        return len(ids) < max_id
    m = _TAIL.fullmatch(tail)
    if m is None:
        return False
    digits, closed, comma = m.groups()
    if digits is None:  # "[" alone
        return closed is None and comma is None and len(ids) < max_id
    n = int(digits)
    if not closed:
        # an unfinished number: some extension of it must be a free id in range
        return comma is None and any(c not in ids for c in _completions(n, max_id))
    if n > max_id or n in ids:
        return False
    return comma is None or len(ids) + 1 < max_id


def _completions(prefix: int, max_id: int):
    """Ids in 1..max_id whose decimal form starts with ``prefix``'s digits."""
    lo = hi = prefix
    while lo <= max_id:
        yield from range(lo, min(hi, max_id) + 1)
        lo, hi = lo * 10, hi * 10 + 9


def is_complete(text: str, max_id: int) -> bool:
    """True when ``text`` is a whole, valid id list (or ``None``)."""
    if text == "None":
        return True
    split = _ids_so_far(text)
    if split is None:
        return False
    ids, tail = split
    m = re.fullmatch(r"\[([1-9][0-9]*)\]", tail)
    if not m:
        return False
    ids.append(int(m.group(1)))
    return len(set(ids)) == len(ids) and all(i <= max_id for i in ids)
