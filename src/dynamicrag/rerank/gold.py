"""The gold ceiling: select exactly the passages the data marks as gold.

Not a method but an upper reference for the comparison tables: what the generator does when
it reads the annotated evidence and nothing else (NQ-open's gold passage, HotpotQA's
supporting paragraphs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dynamicrag.schema import Example, Selection

# Annotated gold, most trusted first. DPR's ``hasanswer`` is left out on purpose: it says that
# the answer string occurs in the passage, not that the passage answers the question.
GOLD_LABELS = ("isgold", "supporting")


@dataclass
class GoldReranker:
    """Select the passages labelled gold, in retrieval order.

    The label is the first of :data:`GOLD_LABELS` that some passage of the example carries;
    a passage without it is not gold. An example whose gold passages are known but not among
    its candidates (retrieval missed them) gets an empty selection: the generator answers
    without passages. An example with no gold labels at all gets an error: there is no
    ceiling to compute for it.
    """

    def select(self, examples: Sequence[Example]) -> list[Selection]:
        """One Selection per example: the 1-based positions of its gold passages."""
        out = []
        for ex in examples:
            label = next((f for f in GOLD_LABELS if any(f in p.extra for p in ex.passages)), None)
            if label is None:
                out.append(Selection(
                    well_formed=False,
                    error=f"no gold labels ({' / '.join(GOLD_LABELS)}) on the passages of example {ex.id!r}",
                ))
                continue
            out.append(Selection(ids=[i for i, p in enumerate(ex.passages, 1) if bool(p.extra.get(label))]))
        return out


__all__ = ["GOLD_LABELS", "GoldReranker"]
