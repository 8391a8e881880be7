"""RankGPT-style listwise baseline: the LLM writes a permutation of a window of passages.

Windows of ``window`` passages slide from the end of the candidate list to its start,
``stride`` at a time, as in RankGPT and castorini/rank_llm; each window is reordered by one
LLM call, so the most relevant passages bubble up to the front. One pass places the best
``window - stride`` passages correctly at the top; the top ``k`` are then kept.

Example:
    >>> reranker = ListwiseReranker(load_backend("transformers"), k=5)
    >>> [selection] = reranker.select([example])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dynamicrag.llm.base import Backend, Chat, SamplingParams
from dynamicrag.prompts import load_prompt
from dynamicrag.rerank.dynamic import RAW_SEPARATOR
from dynamicrag.schema import Example, Passage, Selection

logger = logging.getLogger(__name__)

# The prompt (prompts/listwise.yaml, RankGPT's wording) and its output grammar, checked at import.
PROMPT = load_prompt("listwise", {"system": set(), "user": {"num", "query", "passages"}, "passage": {"rank", "content"}})
ID_PATTERN = PROMPT["id_pattern"]
# The exact output grammar: "[2] > [1] > [3]".
PERMUTATION_PATTERN = rf"\s*{ID_PATTERN}(?:\s*>\s*{ID_PATTERN})*\s*"
MAX_PASSAGE_WORDS = 300  # RankGPT cuts each passage to its first 300 words


@dataclass
class Permutation:
    """A parsed permutation of a window of ``n`` passages.

    Args:
        order: 1-based ids, a full permutation of 1..n: the ids read from the output
            (duplicates and out-of-range ids dropped), then the missing ones in their
            original order.
        well_formed: True when the output was exactly ``[i] > [j] > ...`` naming every id
            of 1..n once.
        missing: Ids of 1..n the output did not name.
        invalid: Ids named more than once or out of range.
    """

    order: list[int]
    well_formed: bool
    missing: int = 0
    invalid: int = 0


def parse_permutation(raw: str, n: int) -> Permutation:
    """Read a window's permutation; never raises on model output.

    Args:
        raw: The model's text, e.g. ``"[2] > [1] > [3]"``.
        n: Passages in the window.

    Returns:
        A :class:`Permutation`; an output without any id keeps the original order and is
        counted as not well formed (unlike rank_llm, which keeps it silently).
    """
    found = [int(m) for m in re.findall(ID_PATTERN, raw)]
    order: list[int] = []
    for i in found:
        if 1 <= i <= n and i not in order:
            order.append(i)
    invalid = len(found) - len(order)
    missing = [i for i in range(1, n + 1) if i not in order]
    strict = re.fullmatch(PERMUTATION_PATTERN, raw) is not None
    return Permutation(order + missing, strict and not missing and not invalid, len(missing), invalid)


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows of one pass, back to front, as rank_llm walks them.

    The first window is ``[n - window, n)``; each next one starts ``stride`` earlier; the last
    is clipped at 0, and a window that would only repeat the front one is skipped
    (rank_llm's ``start_pos + stride != rank_start``). Fewer than 2 passages: no window.
    """
    if n < 2:
        return []  # nothing to order: no call
    window = min(window, n)
    out = []
    start, end = n - window, n
    while end > 0 and start + stride != 0:
        start = max(start, 0)
        out.append((start, end))
        start, end = start - stride, end - stride
    return out


def window_chat(query: str, passages: Sequence[Passage], max_words: int = MAX_PASSAGE_WORDS) -> Chat:
    """The chat for one window: the passages labelled ``[1]..[w]``, as RankGPT shows them."""
    lines = []
    for rank, p in enumerate(passages, 1):
        content = f"Title: {p.title} Content: {p.text}" if p.title else p.text
        content = " ".join(content.split()[:max_words])
        lines.append(PROMPT["passage"].format(rank=rank, content=content))
    user = PROMPT["user"].format(num=len(passages), query=query, passages="\n".join(lines))
    return [{"role": "system", "content": PROMPT["system"]}, {"role": "user", "content": user}]


@dataclass
class ListwiseReranker:
    """RankGPT listwise reranking with a sliding window, then the top ``k``.

    Args:
        backend: Any :class:`~dynamicrag.llm.base.Backend`.
        k: Passages kept per example.
        window: Passages per LLM call (20 in RankGPT).
        stride: Step between windows (10 in RankGPT); one pass sorts the top
            ``window - stride`` correctly.
        max_new_tokens: Cap on the permutation's length in tokens; None leaves room for a
            full permutation of the window (5 tokens per id, plus a margin).
        temperature: 0 (greedy) by default.
        max_passage_words: Words kept per passage in the prompt (300 in RankGPT).

    Returns from :meth:`select`: ``ids`` are the top ``k`` 1-based positions; ``raw`` joins
    every call's output with ``" || "``; ``well_formed`` is False when any window's output
    missed, repeated or invented ids; ``calls`` and token counts sum over the windows.

    References:
        Sun et al., Is ChatGPT Good at Search? Investigating Large Language Models as
        Re-Ranking Agents, EMNLP 2023 (RankGPT).
    """

    backend: Backend
    k: int = 5
    window: int = 20
    stride: int = 10
    max_new_tokens: int | None = None
    temperature: float = 0.0
    max_passage_words: int = MAX_PASSAGE_WORDS

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 passages, got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"stride must be in 1..window ({self.window}), got {self.stride}")
        if self.k > self.window - self.stride:
            logger.warning(
                "k=%d > window - stride = %d: one sliding pass only guarantees the top %d",
                self.k, self.window - self.stride, self.window - self.stride,
            )

    def select(self, examples: Sequence[Example]) -> list[Selection]:
        """Rerank each example's passages; one batched backend call per window step."""
        # order[e]: 0-based positions of example e's passages, current ranking
        orders = [list(range(len(ex.passages))) for ex in examples]
        plans = [sliding_windows(len(ex.passages), self.window, self.stride) for ex in examples]
        tallies = [Selection() for _ in examples]
        raws: list[list[str]] = [[] for _ in examples]
        bad_windows = 0
        # Windows of one example depend on the previous one; different examples do not, so
        # step t of every example goes to the backend together.
        for t in range(max((len(p) for p in plans), default=0)):
            active = [e for e, plan in enumerate(plans) if t < len(plan)]
            by_size: dict[int, list[int]] = {}
            for e in active:
                start, end = plans[e][t]
                by_size.setdefault(end - start, []).append(e)
            for size, members in by_size.items():
                params = SamplingParams(temperature=self.temperature, max_new_tokens=self.max_new_tokens or 5 * size + 10)
                chats = []
                for e in members:
                    start, end = plans[e][t]
                    shown = [examples[e].passages[g] for g in orders[e][start:end]]
                    chats.append(window_chat(examples[e].question, shown, self.max_passage_words))
                for e, completions in zip(members, self.backend.generate(chats, params)):
                    c = completions[0]
                    perm = parse_permutation(c.text, size)
                    start, end = plans[e][t]
                    current = orders[e][start:end]
                    orders[e][start:end] = [current[i - 1] for i in perm.order]  # window-local -> global
                    sel = tallies[e]
                    raws[e].append(c.text)
                    sel.well_formed = sel.well_formed and perm.well_formed
                    bad_windows += not perm.well_formed
                    sel.calls += 1
                    sel.prompt_tokens += c.prompt_tokens
                    sel.completion_tokens += c.completion_tokens
        if bad_windows:
            logger.warning("%d listwise window output(s) were not a clean permutation", bad_windows)
        for sel, order, raw in zip(tallies, orders, raws):
            sel.ids = [g + 1 for g in order[: self.k]]
            sel.raw = RAW_SEPARATOR.join(raw)
        return tallies


__all__ = [
    "PROMPT",
    "ListwiseReranker",
    "Permutation",
    "parse_permutation",
    "sliding_windows",
    "window_chat",
]
