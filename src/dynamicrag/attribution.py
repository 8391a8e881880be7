"""Which of the chosen passages an answer draws on: a cheap, deterministic word-overlap test.

An answer is written from the passages the reranker chose; to show a reader where it came
from, each chosen passage is checked against the answer's words (lower case, split at spaces
and punctuation, so "retrieval-augmented" is two words; articles dropped):

1. The answer's *new* words are its content words that are not in the question (the question
   is in every retrieved passage's neighbourhood, so restating it proves nothing) and not
   stop words.
2. A passage supports the answer when it shares with the answer a run of at least
   ``min_run`` consecutive words that holds a new word (the answer copied a phrase), or when
   it holds at least ``min_share`` of the new words (the answer took its facts from it in
   other words). An answer with no new words (a refusal, a restated question) is attributed
   to no passage.

No model is run: this is a lexical test, so a paraphrase in other words is missed and a
passage that happens to share the answer's words is counted. It shows provenance, not truth.

Example:
    >>> from dynamicrag.schema import Passage
    >>> passages = [Passage(id="a", text="Paris is the capital of France."), Passage(id="b", text="Rome is in Italy.")]
    >>> [a.position for a in attribute("The capital is Paris.", passages, "What is the capital of France?")]
    [1]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dynamicrag.schema import Passage

# English function words plus the generic words of a refusal ("I cannot fully answer based on
# the available information. Please provide more details."), which say nothing about a source.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can cannot could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves
answer based available information please provide details fully question query retrieved content
""".split())


@dataclass(frozen=True)
class Attribution:
    """One passage the answer draws on.

    Args:
        position: 1-based position of the passage in the list that was checked.
        id: The passage's id.
        evidence: The longest word run shared with the answer (when long enough), else the
            answer's new words found in the passage, space-separated (lower-cased words).
    """

    position: int
    id: str
    evidence: str

    def to_json(self) -> dict:
        return {"position": self.position, "id": self.id, "evidence": self.evidence}


_WORD = re.compile(r"\w+")
_ARTICLES = frozenset({"a", "an", "the"})


def _words(text: str) -> list[str]:
    # Unlike SQuAD normalisation (which deletes punctuation), "Fixed-k" gives "fixed", "k".
    return [w for w in _WORD.findall(text.lower()) if w not in _ARTICLES]


def _longest_shared_run(answer: list[str], passage: list[str], new: set[str]) -> list[str]:
    """The longest run of consecutive words present in both, among runs holding a new word.

    Longest common substring over words by dynamic programming: O(len(answer) x len(passage)),
    a few thousand steps for an answer and a passage.
    """
    best: list[str] = []
    prev = [0] * (len(passage) + 1)
    for i, word in enumerate(answer, 1):
        cur = [0] * (len(passage) + 1)
        for j, other in enumerate(passage, 1):
            if word == other:
                cur[j] = prev[j - 1] + 1
                if cur[j] > len(best):
                    run = answer[i - cur[j]:i]
                    if new.intersection(run):
                        best = run
        prev = cur
    return best


def attribute(
    answer: str,
    passages: Sequence[Passage],
    question: str = "",
    *,
    min_run: int = 3,
    min_share: float = 0.5,
) -> list[Attribution]:
    """The passages among ``passages`` that ``answer`` draws on, in the given order.

    Args:
        answer: The generated answer.
        passages: The passages the generator saw (the chosen ones, in the chosen order).
        question: The question; its words are not evidence.
        min_run: Shortest shared run of words that counts as copying.
        min_share: Share of the answer's new words a passage must hold otherwise.

    Returns:
        One :class:`Attribution` per supporting passage; empty when the answer has no new
        words or no passage passes either test.
    """
    if min_run < 1 or not 0 < min_share <= 1:
        raise ValueError(f"need min_run >= 1 and 0 < min_share <= 1, got {min_run}, {min_share}")
    answer_words = _words(answer)
    asked = set(_words(question))
    new_words = list(dict.fromkeys(w for w in answer_words if w not in asked and w not in STOP_WORDS))
    if not new_words:
        return []
    new = set(new_words)
    found = []
    for position, passage in enumerate(passages, 1):
        passage_words = _words(f"{passage.title} {passage.text}")
        run = _longest_shared_run(answer_words, passage_words, new)
        present = set(passage_words)
        shared = [w for w in new_words if w in present]
        if len(run) >= min_run:
            found.append(Attribution(position, passage.id, " ".join(run)))
        elif shared and len(shared) / len(new_words) >= min_share:
            found.append(Attribution(position, passage.id, " ".join(shared)))
    return found


def attribute_record(record: dict) -> list[dict]:
    """The chosen passages the answer of an ``infer`` record draws on, as JSON: ``position`` is
    1-based into ``passages``, like ``selected`` (an empty list without an answer)."""
    if not record.get("answer"):
        return []
    chosen = [Passage(id=str(p["id"]), title=p.get("title", ""), text=p["text"])
              for p in (record["passages"][i - 1] for i in record["selected"])]
    found = attribute(record["answer"], chosen, record["question"])
    return [{**a.to_json(), "position": record["selected"][a.position - 1]} for a in found]
