"""The dynamic reranker: one listwise LLM call that writes the needed passage ids, in order.

Beyond one window (N = 50..500 passages with a 40-passage window) the passages are split
into chunks of ``window``, each chunk is reranked, the survivors of all chunks are kept in
chunk order (each chunk's ids in the order the model wrote them), and this repeats until the
survivors fit one window; one final call then chooses among them. Chunk-local ids are mapped
back to global positions at every round: the original code indexed the global list with
chunk-local ids after the first chunk (docs/deviations.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dynamicrag.llm.base import Backend, SamplingParams
from dynamicrag.prompts import PromptStyle, load_style, reranker_chat
from dynamicrag.rerank.parse import parse_selection
from dynamicrag.run_settings import RECORDED_WHEN_SET
from dynamicrag.schema import Example, Passage, Selection

if TYPE_CHECKING:
    from dynamicrag.rerank.pointwise import Scorer

RAW_SEPARATOR = " || "  # joins the raw outputs of the calls of one top-N reduction


@dataclass
class DynamicReranker:
    """Select passages with an LLM writing ``[3], [1]`` or ``None``.

    Args:
        backend: Any :class:`~dynamicrag.llm.base.Backend`.
        style: Prompt style (``default`` or ``official`` for the released checkpoints).
        window: Most passages shown in one call (the paper uses 40 with an 8k context).
        max_new_tokens: Cap on the id list's length in tokens (100 in the original).
        temperature: 0 (greedy) by default: selections are deterministic.
        constrained: Constrain decoding to the id grammar, so outputs are well-formed by
            construction (worth it for models that were not trained on the format).
        passage_words: Show at most this many words of each passage (None: all); a trained
            reranker needs the cap it was trained with.
        order_by: A pointwise :class:`~dynamicrag.rerank.pointwise.Scorer` that orders each
            example's candidates before the reranker reads them (best first; ids still index
            ``example.passages``). None: the retriever's order, as in the paper.
        continue_bias: Added to the logit of going on after an id (``],``), at every id:
            positive reads more passages (:attr:`~dynamicrag.llm.base.SamplingParams.continue_bias`).
            A trained adapter's manifest stores the value calibrated on its training prompts.

    References:
        Sun et al., DynamicRAG: Leveraging Outputs of Large Language Model as Feedback for
        Dynamic Reranking in Retrieval-Augmented Generation, arXiv 2505.07233.
    """

    backend: Backend
    style: PromptStyle = field(default_factory=load_style)
    window: int = 40
    max_new_tokens: int = 100
    temperature: float = 0.0
    constrained: bool = False
    passage_words: int | None = None
    order_by: Scorer | None = None
    # Recorded in a run's settings only when set: runs written before the field existed resume.
    continue_bias: float = field(default=0.0, metadata={RECORDED_WHEN_SET: True})

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"window must be >= 2 passages, got {self.window}")

    def _call(self, jobs: Sequence[tuple[str, list[Passage]]]) -> list[Selection]:
        """One reranker call per (query, passages) job; batched through the backend."""
        return [sels[0] for sels in self._call_n(jobs, n=1)]

    def _call_n(
        self, jobs: Sequence[tuple[str, list[Passage]]], n: int, top_p: float = 1.0, seed: int | None = None
    ) -> list[list[Selection]]:
        """``n`` reranker outputs per (query, passages) job; batched through the backend.

        Jobs are grouped by passage count because the id grammar of constrained decoding
        depends on it; outputs come back in job order.
        """
        groups: dict[int, list[int]] = defaultdict(list)
        for j, (_, passages) in enumerate(jobs):
            groups[len(passages)].append(j)
        out: list[list[Selection] | None] = [None] * len(jobs)
        for size, members in groups.items():
            params = SamplingParams(
                temperature=self.temperature,
                top_p=top_p,
                max_new_tokens=self.max_new_tokens,
                n=n,
                seed=seed,
                id_list_max=size if self.constrained else None,
                continue_bias=self.continue_bias,
            )
            chats = [reranker_chat(self.style, jobs[j][0], jobs[j][1], self.passage_words) for j in members]
            for j, completions in zip(members, self.backend.generate(chats, params)):
                out[j] = []
                for c in completions:
                    sel = parse_selection(c.text, size, self.style.id_pattern, self.style.none_word)
                    sel.calls, sel.prompt_tokens, sel.completion_tokens = 1, c.prompt_tokens, c.completion_tokens
                    out[j].append(sel)
        return out  # type: ignore[return-value]

    def sample(
        self, examples: Sequence[Example], n: int, *, top_p: float = 1.0, seed: int | None = None
    ) -> list[list[Selection]]:
        """``n`` selections per example, for trajectory sampling (DPO) at ``self.temperature``.

        All ``n`` come from one backend request per example (``SamplingParams.n``), so backends
        that can (transformers, vLLM) encode each prompt once. One window only: there is no
        top-N reduction here, each sample is one call over all the example's passages.

        Args:
            examples: Examples with at most ``window`` passages each.
            n: Selections per example.
            top_p: Nucleus sampling mass.
            seed: Sampling seed (None: the backend's default).

        Returns:
            ``n`` Selections per example, in sample order; ``ids`` index ``example.passages``.
            An example without passages gets ``n`` empty selections and costs no call.

        Raises:
            ValueError: An example has more passages than one window.
        """
        too_long = [ex.id for ex in examples if len(ex.passages) > self.window]
        if too_long:
            raise ValueError(
                f"sample() shows one window of at most {self.window} passages; examples {too_long[:5]} have more"
            )
        todo = [e for e, ex in enumerate(examples) if ex.passages]
        out = [[Selection() for _ in range(n)] for _ in examples]
        orders = {e: self._order(examples[e]) for e in todo}
        jobs = [(examples[e].question, [examples[e].passages[g] for g in orders[e]]) for e in todo]
        for e, sels in zip(todo, self._call_n(jobs, n, top_p, seed)):
            for sel in sels:
                sel.ids = [orders[e][i - 1] + 1 for i in sel.ids]  # shown order -> example.passages
            out[e] = sels
        return out

    def _order(self, example: Example) -> list[int]:
        """0-based positions of the example's passages in the order the reranker reads them."""
        if self.order_by is None:
            return list(range(len(example.passages)))
        from dynamicrag.rerank.cutoff import score_order

        return score_order(self.order_by, example)[0]

    def select(self, examples: Sequence[Example]) -> list[Selection]:
        """Choose passages for each example; ``Selection.ids`` index ``example.passages``."""
        # candidates[e]: 0-based global positions still in the running for example e
        candidates = [self._order(ex) for ex in examples]
        # tallies[e] gathers raw outputs, well-formedness and usage over all calls of example e
        tallies = [Selection() for _ in examples]
        raws: list[list[str]] = [[] for _ in examples]

        def account(e: int, sel: Selection) -> None:
            raws[e].append(sel.raw)
            t = tallies[e]
            t.well_formed = t.well_formed and sel.well_formed
            t.calls += sel.calls
            t.prompt_tokens += sel.prompt_tokens
            t.completion_tokens += sel.completion_tokens

        def shown(e: int, positions: list[int]) -> tuple[str, list[Passage]]:
            return examples[e].question, [examples[e].passages[g] for g in positions]

        # Reduction rounds: every example with more candidates than a window is chunked.
        while True:
            jobs = [
                (e, cands[start : start + self.window])
                for e, cands in enumerate(candidates)
                if len(cands) > self.window
                for start in range(0, len(cands), self.window)
            ]
            if not jobs:
                break
            survivors: dict[int, list[int]] = defaultdict(list)
            for (e, chunk), sel in zip(jobs, self._call([shown(e, chunk) for e, chunk in jobs])):
                account(e, sel)
                survivors[e].extend(chunk[i - 1] for i in sel.ids)  # chunk-local -> global
            for e in {e for e, _ in jobs}:
                kept = survivors[e]
                if len(kept) >= len(candidates[e]):
                    # Every chunk kept every passage: cut to one window so the loop ends.
                    kept = kept[: self.window]
                candidates[e] = kept

        # The final call, for every example with survivors; the others select None.
        final = [e for e, cands in enumerate(candidates) if cands]
        for e, sel in zip(final, self._call([shown(e, candidates[e]) for e in final])):
            account(e, sel)
            tallies[e].ids = [candidates[e][i - 1] + 1 for i in sel.ids]  # window-local -> global
            tallies[e].error = sel.error
        for t, raw in zip(tallies, raws):
            t.raw = RAW_SEPARATOR.join(raw)
        return tallies
