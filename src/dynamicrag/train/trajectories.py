"""Expert trajectories for behaviour cloning, and the generator's SFT targets.

The expert lists the passages that are needed, best first, and stops: the relevant passages
(``extra["relevant"]``, see :mod:`dynamicrag.train.label`) ordered by teacher score, cut at
``max_k``; ``None`` when no passage is relevant. A teacher that writes its own order
(``Example.extra["expert"]``, 1-based positions, e.g. the utility teacher with its stop rule
and its near-ties broken toward retrieval order) is followed as written: its relevant
passages in its order first, then any other relevant passage (a rule that adds
answer-holding passages) by score. Training prompts are built with the same
functions as inference prompts (:func:`~dynamicrag.prompts.reranker_chat`,
:func:`~dynamicrag.prompts.generator_chat`), so the two cannot drift apart.

Deviations from the original code (GasolSun36/DynamicRAG):

- One target per prompt. The original builds bins k = 0..14 and, for each item, writes the
  relevant ids shuffled plus random irrelevant ids up to k, so one prompt gets several
  conflicting targets and k is never chosen per query. Here k is the number of relevant
  passages (at most ``max_k``) and the order is the teacher's.
- The generator sees its passages in the reranker target's order (what it sees at inference,
  where the reranker's order is kept), not in retrieval order, and up to
  ``max_generator_passages`` of them (15, as in the original).

Example:
    >>> sft, dpo = split_pools(labelled, sft_fraction=0.7, seed=0)  # doctest: +SKIP
    >>> records = build_sft_records(sft, "default", max_k=5, max_generator_passages=15)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from dynamicrag.prompts import PromptStyle, generator_chat, load_style, reranker_chat, reranker_target
from dynamicrag.schema import Example, Passage


def _relevant_order(example: Example) -> list[int]:
    """0-based indices of the relevant passages, by decreasing teacher score.

    Ties (and passages without a score, which go last) keep retrieval order.

    Raises:
        ValueError: A passage was never labelled.
    """
    for n, p in enumerate(example.passages, 1):
        if "relevant" not in p.extra:
            raise ValueError(
                f"example {example.id!r}, passage {n} ({p.id!r}): no 'relevant' label; "
                "label the examples first (dynamicrag.train.label)"
            )
    relevant = [i for i, p in enumerate(example.passages) if p.extra["relevant"]]

    def key(i: int) -> float:
        s = example.passages[i].score
        return math.inf if s is None or math.isnan(s) else -s

    expert = example.extra.get("expert")
    if expert is None:
        return sorted(relevant, key=key)  # stable: ties keep retrieval order
    if not isinstance(expert, list) or not all(
        isinstance(i, int) and 1 <= i <= len(example.passages) for i in expert
    ) or len(set(expert)) != len(expert):
        raise ValueError(
            f"example {example.id!r}: extra['expert'] must be distinct 1-based positions into its "
            f"{len(example.passages)} passages, got {expert!r}"
        )
    ordered = [i - 1 for i in expert if example.passages[i - 1].extra["relevant"]]
    return ordered + sorted((i for i in relevant if i not in set(ordered)), key=key)


def reranker_target_ids(example: Example, max_k: int) -> list[int]:
    """The expert's selection: 1-based positions of the relevant passages, best first.

    Args:
        example: A labelled example.
        max_k: Most ids in a target.

    Returns:
        Up to ``max_k`` positions ordered by teacher score; ``[]`` (the target ``None``) when
        no passage is relevant.
    """
    if max_k < 0:
        raise ValueError(f"max_k must be >= 0, got {max_k}")
    return [i + 1 for i in _relevant_order(example)[:max_k]]


def generator_passages(example: Example, max_passages: int = 15) -> tuple[list[Passage], str | None]:
    """The generator's SFT input passages and target.

    Args:
        example: A labelled example.
        max_passages: Most passages given to the generator (15 in the original).

    Returns:
        ``(passages, target)``: the relevant passages in the reranker target's order (the
        prompt renumbers them 1..k) and the first gold answer, or None when there is none.
    """
    if max_passages < 0:
        raise ValueError(f"max_passages must be >= 0, got {max_passages}")
    passages = [example.passages[i] for i in _relevant_order(example)[:max_passages]]
    target = next((a for a in example.answers if a.strip()), None)
    return passages, target


def split_pools(examples: Sequence[Example], sft_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``random.Random(seed)`` and split into the SFT and DPO pools.

    Args:
        examples: Labelled examples.
        sft_fraction: Share of examples for SFT (the original: the first 70,000 of the
            shuffled items, the rest to DPO).
        seed: Shuffle seed; the same seed gives the same split.

    Returns:
        ``(sft, dpo)``; ``sft`` has ``round(len(examples) * sft_fraction)`` examples.
    """
    if not 0.0 <= sft_fraction <= 1.0:
        raise ValueError(f"sft_fraction must be in [0, 1], got {sft_fraction}")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    n_sft = round(len(shuffled) * sft_fraction)
    return shuffled[:n_sft], shuffled[n_sft:]


def build_sft_records(
    examples: Sequence[Example],
    style: PromptStyle | str = "default",
    max_k: int = 5,
    max_generator_passages: int = 15,
    passage_words: int | None = None,
    oversample_not_top1: int = 1,
) -> list[dict[str, Any]]:
    """TRL conversational SFT records: one reranker record and one generator record per example.

    Args:
        examples: Labelled examples (the SFT pool).
        style: A :class:`~dynamicrag.prompts.PromptStyle`, a built-in style name or a YAML path.
        max_k: Most ids in a reranker target.
        max_generator_passages: Most passages in a generator prompt.
        passage_words: Words shown of each passage in the reranker prompt (None: all); the
            same cap must be used when sampling and at inference.
        oversample_not_top1: Copies of each reranker record whose target is anything but
            ``[1]`` (1: as labelled). Retriever-ordered labels are mostly ``[1]``, a prior a
            small model learns before it learns to judge passages.

    Returns:
        ``{"messages": [system, user, assistant], "role": "reranker" | "generator", "id": ...}``
        per record, example by example (reranker first, its copies next to it; the trainer
        shuffles). Examples without a gold answer get no generator record.
    """
    if oversample_not_top1 < 1:
        raise ValueError(f"oversample_not_top1 must be >= 1, got {oversample_not_top1}")
    style = load_style(style) if isinstance(style, str) else style
    records: list[dict[str, Any]] = []
    for ex in examples:
        ids = reranker_target_ids(ex, max_k)
        chat = reranker_chat(style, ex.question, ex.passages, passage_words)
        record = {"messages": [*chat, {"role": "assistant", "content": reranker_target(style, ids)}],
                  "role": "reranker", "id": ex.id}
        records.extend([record] * (1 if ids == [1] else oversample_not_top1))
        passages, answer = generator_passages(ex, max_generator_passages)
        if answer is None:
            continue
        chat = generator_chat(style, ex.question, passages, ex.task)
        records.append(
            {"messages": [*chat, {"role": "assistant", "content": answer}], "role": "generator", "id": ex.id}
        )
    return records


__all__ = ["build_sft_records", "generator_passages", "reranker_target_ids", "split_pools"]
