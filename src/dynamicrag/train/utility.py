"""A teacher that knows the generator: what each passage does for the gold answer's likelihood.

For a question q with gold answers A and candidates p_1..p_n, the generator (the model that
will answer, under the project's generator prompt) scores, by teacher forcing and without any
decoding::

    LL(S)  = log sum_{a in A} P(a | generator prompt of q over the passages S)
    u_i    = LL([p_i]) - LL([])                  # the utility of passage i, in nats

- **Several gold answers** combine by log-sum-exp of their likelihoods: LL(S) is the log of
  the probability that the reply starts with *some* gold answer, which is what ``match``
  rewards (any gold answer counts). A max over answers would also work; the sum does not let
  one unlikely alias decide, and is the same as the max when one alias dominates. At most
  ``max_answers`` answers are scored (NQ has 1.7 on average, up to 13), after whitespace
  normalisation and case-insensitive de-duplication, in the data set's order.
- **Surface form** (``answer_form``): ``phrase`` (default) scores the gold answer alone as the
  start of the reply, which is what the generator prompt asks for ("answer the question with
  a short phrase"); ``sentence`` scores ``"The answer is {answer}."``.

The expert list (:func:`build_expert` / :class:`ExpertSearch`): passages in order of utility,
best first; near-ties (utilities within ``tie_margin``) go to the passage retrieved first, so
the reranker is not taught the noise of a few hundredths of a nat. The list is ``None`` (empty)
when the best passage does not beat no passage by more than ``margin``. Otherwise it grows
one passage at a time, in that order, while the next passage raises the likelihood of the
gold answer given the passages so far (in the list's order, as the generator will see them)
by more than ``margin``, up to ``max_k`` passages.

The ``prefix`` expert rule (``expert="prefix"``) keeps the order the candidates are shown in
(retrieval order, or a scorer's order when the label stage orders them first: ``order_by``)
and chooses only how many to keep: the k in 0..max_k that maximises ``LL(p_1..p_k) - margin * k``
(the smallest such k on ties), so each passage of the prefix must pay for itself in the gold
answer's likelihood, passages that only dilute it are cut, and a prefix may pass through a
passage that does not help on its own to reach one that does. It teaches the stopping decision
(the method's dynamic k) over an order that is already good, where the best-first rule asks a
reranker to reorder, which a 135M reranker did not learn (experiments/utility_reranker/).

Why these defaults (NQ training questions 200-223, BM25 top-10 over the 3.6k-passage corpus,
the bundled SmolLM2 as generator, 2026-12-02):

- ``phrase`` over ``sentence``: within a question, a passage holding a gold answer scored
  above one that does not in 99.1 % of the 221 such pairs with ``phrase``, 95.9 % with
  ``sentence``, which also costs 5 % more tokens.
- ``margin`` 1.0 nats: the 25 passages holding an answer have a median utility of 8.1 nats,
  the 215 others -1.3 (90th percentile 1.5). The stop rule's second passages gained between
  -2.8 and +0.75; the only two positive gains (0.73, 0.75) came from passages without the
  answer, which a margin of 1.0 leaves out while keeping every answer-holding best passage
  with a positive utility (the lowest was 1.1). Two questions whose answer-holding passage
  lowers the generator's likelihood of the answer (utility -0.4, -0.3) get ``None``, as does
  the one question with no answer in its top 10. 8 of the 24 lists differ from ``[1]``.

Cost per question with n candidates and g scored answers: ``(n + 1) * g`` sequences of one
passage (or none) in the first pass, then ``g`` sequences per passage tried beyond the first
(at most ``max_k - 1``, usually one: the try that stops the list). One question's prompts
share a batch and the encoding of their common prefix. Measured on those 24 questions
(``max_answers`` 3, margin 0 so every list tried a second passage): 21.8 sequences,
12.9 forward passes and 3.6k tokens run per question (seconds depend on the machine: ``label``
prints them). :class:`UtilityTeacher` records each question's sequences, forward passes and
tokens in ``Example.extra["utility"]["cost"]``.

Example:
    >>> from dynamicrag.llm import load_backend
    >>> teacher = UtilityTeacher(load_backend("transformers"))  # the bundled SmolLM2 as generator
    >>> [result] = teacher.label([example])  # doctest: +SKIP
    >>> result.expert  # 0-based positions, best first; [] means None
    [2]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynamicrag.llm.base import Chat
from dynamicrag.prompts import PromptStyle, generator_chat, load_prompt, load_style
from dynamicrag.schema import Example

logger = logging.getLogger(__name__)

_FORMS = ("phrase", "sentence")
ANSWER_FORMS: dict[str, str] = {
    form: template for form, template in load_prompt("utility", dict.fromkeys(_FORMS, {"answer"})).items() if form in _FORMS
}
"""Surface form of a gold answer scored as the start of the generator's reply (prompts/utility.yaml)."""

DEFAULT_MARGIN = 1.0
"""Nats a passage must add (alone over no passage, or over the passages before it)."""
EXPERT_RULES = ("best-first", "prefix")
"""How the expert list is built: by utility, best first; or as a prefix of the shown order."""
DEFAULT_TIE_MARGIN = 0.1
"""Utilities closer than this are a tie, broken toward retrieval order."""


def tie_order(scores: Sequence[float], tie_margin: float) -> list[int]:
    """Indices by decreasing score; candidates within ``tie_margin`` of the best left go by index.

    At each step the earliest index among those scoring at least ``best - tie_margin`` is
    taken, so a passage retrieved earlier beats a later one that is better by noise only.
    NaN scores go last, in index order.

    Args:
        scores: One score per candidate (higher is better), in retrieval order.
        tie_margin: Scores closer than this count as equal (0: strict order, ties by index).

    Returns:
        A permutation of ``range(len(scores))``.
    """
    if tie_margin < 0:
        raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
    left = [i for i, s in enumerate(scores) if not math.isnan(s)]
    order: list[int] = []
    while left:
        best = max(scores[i] for i in left)
        pick = next(i for i in left if scores[i] >= best - tie_margin)  # `left` stays in index order
        order.append(pick)
        left.remove(pick)
    return order + [i for i, s in enumerate(scores) if math.isnan(s)]


class ExpertSearch:
    """The expert list of one question, built step by step from log-likelihoods fed in.

    Stepwise, so that a teacher can run the next step of many questions in one batch:
    :attr:`pending` is the passage list whose log-likelihood is needed next (None when the
    list is final), :meth:`feed` gives it.

    Args:
        none_ll: LL of the gold answer with no passage.
        single_ll: LL with each passage alone, in retrieval order.
        margin: Nats the first passage must add over no passage, and each next one over the
            list before it.
        tie_margin: See :func:`tie_order`.
        max_k: Most passages in the list (0: no cap).
    """

    def __init__(
        self, none_ll: float, single_ll: Sequence[float], *, margin: float = DEFAULT_MARGIN,
        tie_margin: float = DEFAULT_TIE_MARGIN, max_k: int = 0,
    ) -> None:
        if margin < 0 or max_k < 0:
            raise ValueError(f"margin and max_k must be >= 0, got {margin}, {max_k}")
        self.none_ll = none_ll
        self.utilities = [ll - none_ll for ll in single_ll]
        self.order = tie_order(self.utilities, tie_margin)
        self.margin, self.max_k = margin, max_k
        self.steps: list[dict[str, Any]] = []  # (tried passage, gain, kept) per step beyond the first
        if not self.order or not self.utilities[self.order[0]] > margin:
            self.expert: list[int] = []
            self.ll = none_ll
            self._next = len(self.order)
        else:
            self.expert = [self.order[0]]
            self.ll = single_ll[self.order[0]]
            self._next = 1

    @property
    def pending(self) -> list[int] | None:
        """The passages (0-based, in order) whose LL is needed next, or None when done."""
        full = self.max_k and len(self.expert) >= self.max_k
        if self._next >= len(self.order) or full:
            return None
        return [*self.expert, self.order[self._next]]

    def feed(self, ll: float) -> None:
        """The LL of :attr:`pending`: keep its last passage if it adds more than ``margin``."""
        candidate = self.pending
        if candidate is None:
            raise RuntimeError("the expert list is already final")
        gain = ll - self.ll
        kept = gain > self.margin
        self.steps.append({"passage": candidate[-1] + 1, "gain": gain, "kept": kept})
        if kept:
            self.expert.append(candidate[-1])
            self.ll = ll
            self._next += 1
        else:
            self._next = len(self.order)  # the next passage no longer helps: stop


def build_expert(
    none_ll: float, single_ll: Sequence[float], joint_ll: Callable[[list[int]], float], **options: Any
) -> list[int]:
    """The expert list of one question (0-based positions, best first; [] means ``None``).

    Args:
        none_ll: LL of the gold answer without passages.
        single_ll: LL with each passage alone, in retrieval order.
        joint_ll: LL given a list of passages (0-based, in the order the generator sees them).
        **options: ``margin``, ``tie_margin``, ``max_k`` of :class:`ExpertSearch`.
    """
    search = ExpertSearch(none_ll, single_ll, **options)
    while (step := search.pending) is not None:
        search.feed(joint_ll(step))
    return search.expert


def prefix_expert(none_ll: float, prefix_ll: Sequence[float], margin: float = DEFAULT_MARGIN) -> int:
    """How many of the shown passages the ``prefix`` rule keeps.

    Args:
        none_ll: LL of the gold answer without passages.
        prefix_ll: LL given the first 1, 2, ... passages, in the order shown.
        margin: Nats each kept passage costs.

    Returns:
        The k in ``0..len(prefix_ll)`` maximising ``LL_k - margin * k``; the smallest on ties.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    values = [none_ll, *prefix_ll]
    return max(range(len(values)), key=lambda k: (values[k] - margin * k, -k))


def answer_texts(answers: Sequence[str], form: str = "phrase", max_answers: int = 3) -> list[str]:
    """The gold answers to score: whitespace-normalised, de-duplicated (case-insensitively), capped.

    Raises:
        ValueError: Unknown form, or no non-blank answer.
    """
    if form not in ANSWER_FORMS:
        raise ValueError(f"answer_form: unknown form {form!r}; use one of {sorted(ANSWER_FORMS)}")
    seen: dict[str, str] = {}
    for a in answers:
        text = " ".join(str(a).split())  # NQ answers carry non-breaking spaces
        if text and text.lower() not in seen:
            seen[text.lower()] = text
    if not seen:
        raise ValueError("no gold answer: the utility teacher scores the gold answer's likelihood")
    return [ANSWER_FORMS[form].format(answer=a) for a in list(seen.values())[:max_answers]]


@dataclass
class UtilityResult:
    """What the teacher found for one question."""

    utilities: list[float]  # per passage, in retrieval order (nats)
    expert: list[int]  # 0-based positions, best first; [] = None
    none_ll: float
    expert_ll: float  # LL given the expert list (none_ll when it is None)
    answers: list[str]  # the texts scored
    steps: list[dict[str, Any]] = field(default_factory=list)  # the stop rule's tries beyond the first passage
    cost: dict[str, float] = field(default_factory=dict)
    """``sequences`` scored (prompt + answer), and this question's share of the ``forward_passes``
    and ``tokens`` run through the model (after prefix sharing)."""


class UtilityTeacher:
    """Label passages by what they do for the generator's likelihood of the gold answer.

    Args:
        backend: The generator: a backend with ``loglikelihood(chats, continuations)`` and
            ``count_tokens(chat)`` (the transformers backend).
        style: Prompt style whose generator prompt is scored (the one used at inference).
        margin: See :class:`ExpertSearch`.
        tie_margin: See :func:`tie_order`.
        max_k: Most passages in an expert list (0: no cap).
        answer_form: ``phrase`` or ``sentence`` (see the module docstring).
        max_answers: Most gold answers scored per question.
        expert: ``best-first`` (the passages by utility, growing while each adds ``margin``)
            or ``prefix`` (the shown order kept, k chosen by :func:`prefix_expert`).
        batch_size: Sequences per forward pass; one question's prompts share a batch and the
            encoding of their common prefix (system prompt, task line, query). On this CPU 4 ran
            faster than 1, 2, 6 or 8 (larger batches pad more and attend over a repeated prefix).
    """

    def __init__(
        self, backend: Any, style: PromptStyle | str = "default", *, margin: float = DEFAULT_MARGIN,
        tie_margin: float = DEFAULT_TIE_MARGIN, max_k: int = 5, answer_form: str = "phrase", max_answers: int = 3,
        expert: str = "best-first", batch_size: int = 4,
    ) -> None:
        if not hasattr(backend, "loglikelihood"):
            raise ValueError(
                f"the utility teacher needs a backend that scores continuations (transformers); "
                f"{getattr(backend, 'name', type(backend).__name__)!r} cannot"
            )
        if answer_form not in ANSWER_FORMS:
            raise ValueError(f"answer_form: unknown form {answer_form!r}; use one of {sorted(ANSWER_FORMS)}")
        if max_answers < 1:
            raise ValueError(f"max_answers must be >= 1, got {max_answers}")
        if expert not in EXPERT_RULES:
            raise ValueError(f"expert: unknown rule {expert!r}; use one of {list(EXPERT_RULES)}")
        self.backend = backend
        self.expert = expert
        self.style = load_style(style) if isinstance(style, str) else style
        self.options = {"margin": margin, "tie_margin": tie_margin, "max_k": max_k}
        ExpertSearch(0.0, [], **self.options)  # checks the options now, not at the first example
        self.answer_form, self.max_answers, self.batch_size = answer_form, max_answers, batch_size

    def _joint(self, jobs: Sequence[tuple[int, list[int]]], examples: Sequence[Example],
               answers: Sequence[list[str]], cost: list[dict[str, float]]) -> list[float]:
        """LL of the gold answers of each (example, passage list) job, in one batched call."""
        chats: list[Chat] = []
        conts: list[str] = []
        owner: list[int] = []
        group: list[int] = []
        for j, (e, idx) in enumerate(jobs):
            ex = examples[e]
            chat = generator_chat(self.style, ex.question, [ex.passages[i] for i in idx], ex.task)
            for a in answers[e]:
                chats.append(chat)
                conts.append(a)
                owner.append(j)
                group.append(e)
            cost[e]["sequences"] += len(answers[e])
        stats: dict[str, int] = {}
        lls = self.backend.loglikelihood(chats, conts, batch_size=self.batch_size, groups=group, stats=stats)
        # The model's work is shared between the questions of the call (common prefixes are
        # encoded once), so each question is charged its share.
        questions = {e for e, _ in jobs}
        for e in questions:
            cost[e]["forward_passes"] += stats.get("forward_passes", 0) / len(questions)
            cost[e]["tokens"] += stats.get("tokens", 0) / len(questions)
        per_job: list[list[float]] = [[] for _ in jobs]
        for j, ll in zip(owner, lls):
            per_job[j].append(ll)
        return [_logsumexp(v) for v in per_job]

    def label(self, examples: Sequence[Example]) -> list[UtilityResult]:
        """Utilities and expert lists of a batch of questions (their passages in retrieval order).

        Raises:
            ValueError: An example without a gold answer (naming it).
        """
        answers = []
        for ex in examples:
            try:
                answers.append(answer_texts(ex.answers, self.answer_form, self.max_answers))
            except ValueError as err:
                raise ValueError(f"example {ex.id!r}: {err}") from None
        cost = [{"sequences": 0, "forward_passes": 0.0, "tokens": 0.0} for _ in examples]
        # Pass 1: every passage alone, and no passage, for every question of the batch.
        jobs = [(e, idx) for e, ex in enumerate(examples) for idx in ([], *([i] for i in range(len(ex.passages))))]
        lls = self._joint(jobs, examples, answers, cost)
        searches, at = [], 0
        for ex in examples:
            n = len(ex.passages)
            searches.append(ExpertSearch(lls[at], lls[at + 1: at + 1 + n], **self.options))
            at += 1 + n
        if self.expert == "prefix":
            return self._prefix_results(examples, searches, answers, cost)
        # Then one step of every unfinished list per batched call.
        while todo := [(e, s.pending) for e, s in enumerate(searches) if s.pending is not None]:
            for (e, _), ll in zip(todo, self._joint(todo, examples, answers, cost)):
                searches[e].feed(ll)
        return [
            UtilityResult(
                utilities=s.utilities, expert=list(s.expert), none_ll=s.none_ll, expert_ll=s.ll,
                answers=answers[e], steps=s.steps, cost=cost[e],
            )
            for e, s in enumerate(searches)
        ]

    def _prefix_results(self, examples: Sequence[Example], searches: Sequence[ExpertSearch],
                        answers: Sequence[list[str]], cost: list[dict[str, float]]) -> list[UtilityResult]:
        """The ``prefix`` rule's lists: every prefix of 2..max_k shown passages scored in one
        batched call (the prefix of 1 is pass 1's first passage alone)."""
        limits = [min(len(ex.passages), self.options["max_k"] or len(ex.passages)) for ex in examples]
        jobs = [(e, list(range(k))) for e, top in enumerate(limits) for k in range(2, top + 1)]
        lls = iter(self._joint(jobs, examples, answers, cost) if jobs else [])
        results = []
        for e, (s, top) in enumerate(zip(searches, limits)):
            values = [s.none_ll] + ([s.none_ll + s.utilities[0]] if top else []) + [next(lls) for _ in range(2, top + 1)]
            k = prefix_expert(values[0], values[1:], self.options["margin"])
            steps = [{"passage": j, "gain": values[j] - values[j - 1], "kept": j <= k} for j in range(1, top + 1)]
            results.append(UtilityResult(
                utilities=s.utilities, expert=list(range(k)), none_ll=s.none_ll, expert_ll=values[k],
                answers=answers[e], steps=steps, cost=cost[e],
            ))
        return results


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


__all__ = [
    "ANSWER_FORMS",
    "DEFAULT_MARGIN",
    "DEFAULT_TIE_MARGIN",
    "EXPERT_RULES",
    "ExpertSearch",
    "UtilityResult",
    "UtilityTeacher",
    "answer_texts",
    "build_expert",
    "prefix_expert",
    "tie_order",
]
