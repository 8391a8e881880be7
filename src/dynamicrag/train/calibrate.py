"""Calibrate a trained reranker's stop: the continue bias its own training prompts support.

A 135M reranker trained by behaviour cloning learns which questions need more than one passage
(its odds of going on after the first id rank HotpotQA's multi-hop questions above NQ's, AUC
0.96 on the held-apart questions), yet almost never puts enough mass on going on to win the
greedy argmax: it writes ``[1]`` everywhere (experiments/utility_reranker, variants H and K).
Behaviour cloning on a mix where 60 % of the targets stop at one id leaves the decision below
the threshold; a bias on the continue token (:attr:`~dynamicrag.llm.base.SamplingParams.continue_bias`)
moves the threshold without another training run.

The rule, set on the training prompts alone (no held-apart question chooses it): **the largest
bias under which every training prompt whose target stops after its first id still stops**
(greedy decoding, the target's first id forced). With m = the highest continue-token logit minus
the highest other logit after the prompt and the target's first ``[i``, the bias is
``-max(m)`` over those prompts, at least 0.005 below it and rounded down to 0.01; a prompt whose
target goes on continues when its m plus the bias is above 0 (the report gives how many do).
Logits, not log-odds of two tokens, because greedy decoding compares the continue tokens with
every other token. The same bias applies after every id, so a list goes on while its margin stays
above minus the bias: it fits a reranker whose lists end on their own (experiments: K's targets
of at most 3 ids ended; J's of up to 5 ran past the 9th id).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dynamicrag.llm.base import Chat, continue_token_ids

# bf16 logits are coarse (steps of 0.125-0.25 at SmolLM2's logit sizes): a held-apart prompt may tie
# the highest training margin exactly, and the bias must leave such a tie stopping, not resolved by
# token order.
_MARGIN = 0.005
_ANY_ID = 10_000  # the targets were written for their prompts: any id in range is accepted


@dataclass
class StopCalibration:
    """The calibrated continue bias and what it does on the training prompts.

    Attributes:
        continue_bias: The bias (``-max`` margin of the stopping prompts, at least 0.005 below it,
            rounded down to 0.01).
        stopping: Training prompts whose target stops after its first id.
        going_on: Training prompts whose target goes on after its first id.
        going_on_read_on: How many of ``going_on`` go on under the bias (greedy, first id forced).
        stopping_margin_max: The highest margin among ``stopping`` (the bias is minus this).
        stopping_margin_mean: The mean margin of ``stopping`` (before the bias).
        going_on_margin_mean: The mean margin of ``going_on`` (before the bias).
    """

    continue_bias: float
    stopping: int
    going_on: int
    going_on_read_on: int
    stopping_margin_max: float
    stopping_margin_mean: float
    going_on_margin_mean: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def continue_margins(backend: Any, chats: Sequence[Chat], first_ids: Sequence[int]) -> list[float]:
    """Per chat: the greedy margin of going on after ``[first_id``, under the backend's adapter.

    Computed as decoding computes it: the prompt in one forward pass, then ``[`` and the id's
    digits one token at a time on its KV cache, so the backend's decoding path (int8 decoding
    weights, when on) gives the logits the decision is made from.

    Args:
        backend: A :class:`~dynamicrag.llm.transformers_backend.TransformersBackend` (its adapter,
            if any, is switched on for these passes, as for its own calls).
        chats: Reranker prompts (system and user turns).
        first_ids: The id each target starts with (1-based), one per chat.

    Returns:
        The highest continue-token logit minus the highest other logit, per chat: greedy
        decoding goes on when this plus the continue bias is above 0.
    """
    import torch
    from tqdm import tqdm

    from dynamicrag.llm.lora import adapter_active
    from dynamicrag.llm.transformers_backend import _cache_kwarg

    if len(chats) != len(first_ids):
        raise ValueError(f"{len(chats)} chats but {len(first_ids)} first ids")
    tok = backend.tokenizer
    cache = _cache_kwarg(backend.lm)  # the KV cache's name in this transformers version
    going_on = torch.tensor(continue_token_ids(tok))
    margins = []
    with torch.inference_mode(), adapter_active(backend.lm, backend.adapter_name):
        for chat, first in tqdm(list(zip(chats, first_ids)), desc="continue margins", disable=len(chats) < 20):
            out = backend.lm(input_ids=torch.tensor([backend.encode(chat)]), use_cache=True, logits_to_keep=1)
            for token in tok.encode(f"[{first}", add_special_tokens=False):
                out = backend.lm(input_ids=torch.tensor([[token]]), use_cache=True, **{cache: getattr(out, cache)})
            logits = out.logits[0, -1].float()
            best_on = logits[going_on].max()
            logits[going_on] = -math.inf
            margins.append(float(best_on - logits.max()))
    return margins


def calibrate_continue_bias(backend: Any, chats: Sequence[Chat], targets: Sequence[Sequence[int]]) -> StopCalibration:
    """The continue bias by the rule of the module docstring, and what it does on ``chats``.

    Args:
        backend: The reranker's backend, with its adapter, in the dtype inference uses.
        chats: The training reranker prompts (as trained: same order, passage cap, style).
        targets: Each prompt's target ids; empty targets (``None``) are left out (they never
            start an id).

    Raises:
        ValueError: No training target stops after one id (nothing to calibrate on).
    """
    kept = [(chat, list(t)) for chat, t in zip(chats, targets) if t]
    margins = continue_margins(backend, [c for c, _ in kept], [t[0] for _, t in kept])
    stop = [m for m, (_, t) in zip(margins, kept) if len(t) == 1]
    on = [m for m, (_, t) in zip(margins, kept) if len(t) > 1]
    if not stop:
        raise ValueError("no training target stops after one id: the stop cannot be calibrated")
    bias = math.floor((-max(stop) - _MARGIN) * 100) / 100
    return StopCalibration(
        continue_bias=bias, stopping=len(stop), going_on=len(on),
        going_on_read_on=sum(m + bias > 0 for m in on), stopping_margin_max=max(stop),
        stopping_margin_mean=sum(stop) / len(stop), going_on_margin_mean=sum(on) / len(on) if on else None,
    )


def sft_reranker_prompts(path: Any) -> tuple[list[Chat], list[list[int]]]:
    """The reranker prompts and target ids of a recipe's ``prepare/sft.jsonl`` (oversampled
    copies once), read with the pipeline's own parser.

    Raises:
        ValueError: A reranker record whose target does not parse (names the file and line).
    """
    from dynamicrag.data import read_jsonl
    from dynamicrag.rerank.parse import parse_selection

    chats, targets, seen = [], [], set()
    for line, r in read_jsonl(path):
        if r.get("role") != "reranker" or r["id"] in seen:
            continue
        seen.add(r["id"])
        prompt, answer = r["messages"][:-1], r["messages"][-1]["content"]
        target = parse_selection(answer, _ANY_ID)
        if target.error is not None:
            raise ValueError(f"{path}, line {line}: field 'messages': the reranker target {answer!r} does not parse "
                             f"({target.error})")
        chats.append(prompt)
        targets.append(target.ids)
    return chats, targets
