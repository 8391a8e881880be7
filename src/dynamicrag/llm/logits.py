"""Decoding controls for the transformers backend that look at the completion only.

transformers' own ``no_repeat_ngram_size`` (``NoRepeatNGramLogitsProcessor``) and
``repetition_penalty`` (``RepetitionPenaltyLogitsProcessor``, which ``generate`` builds with
``prompt_ignore_length`` = the left padding only) both count the prompt's tokens too. For a
generator that must copy its answer out of the passages in its prompt that is the wrong way
round: a 4-gram ban would forbid writing "the Battle of Hastings" because the passage already
says it. The processors here count only the tokens generated after ``prompt_len`` (the padded
prompt length of the batch, so left padding is excluded as well; or each row's own, for a batch
whose rows joined it at different steps), which is also what OpenAI's and vLLM's
``frequency_penalty`` count.

The label constraint (:class:`ChoiceConstraint`) walks a token trie of the allowed answers, the
way the reranker's id grammar is enforced token by token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor


def row_start(prompt_len: int | Sequence[int], row: int) -> int:
    """Where ``row``'s completion starts: one prompt length for the batch, or each row's own."""
    return prompt_len if isinstance(prompt_len, int) else prompt_len[row]


def completion_start(prompt_len: int | Sequence[int], input_ids: torch.Tensor) -> tuple[int, torch.Tensor | None]:
    """``(first, later)``: the column where the earliest completion of the batch starts, and
    how many columns later each row's own starts (None when they all start together)."""
    if isinstance(prompt_len, int):
        return prompt_len, None
    starts = torch.as_tensor(prompt_len, device=input_ids.device)
    first = int(starts.min())
    return first, (starts - first if int(starts.max()) > first else None)


class CompletionNoRepeatNGram(LogitsProcessor):
    """Ban any token that would repeat an n-gram already generated in this completion.

    The prompt is not looked at, so a passage's n-grams may be copied once; only the model's
    own output may not repeat itself (the usual greedy loop of a small model).

    Args:
        ngram_size: Tokens per n-gram; no n-gram of the completion occurs twice.
        prompt_len: Length of the (left-padded) prompts; tokens from here on are the completion.
            A sequence gives each row its own (a batch whose rows joined at different steps).
    """

    def __init__(self, ngram_size: int, prompt_len: int | Sequence[int]) -> None:
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        self.ngram_size = ngram_size
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        first, later = completion_start(self.prompt_len, input_ids)
        generated = input_ids[:, first:]  # (batch, new so far, for the earliest-starting row)
        n = self.ngram_size
        if generated.shape[1] < n:  # no complete n-gram yet: nothing can be repeated
            return scores
        # The next token completes the n-gram (last n-1 tokens, next); every earlier window whose
        # first n-1 tokens equal that suffix bans its own last token (as the library one does).
        suffix = generated[:, generated.shape[1] - n + 1:]  # (batch, n-1)
        windows = generated.unfold(1, n, 1)  # (batch, windows, n)
        hits = (windows[..., :-1] == suffix.unsqueeze(1)).all(dim=-1)  # (batch, windows)
        if later is not None:  # a row that started later: its own windows only, none before n tokens
            starts = torch.arange(windows.shape[1], device=hits.device)
            hits &= (starts[None] >= later[:, None]) & (generated.shape[1] - later >= n)[:, None]
        vocab = scores.shape[-1]
        banned = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
        # Non-matching windows write into a spare column past the vocabulary.
        banned.scatter_(1, torch.where(hits, windows[..., -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], -float("inf"))


class CompletionFrequencyPenalty(LogitsProcessor):
    """OpenAI's ``frequency_penalty``: subtract ``penalty x count`` from each token's logit,
    counting the token's occurrences in the completion so far (not in the prompt).

    Written here so the transformers backend honours the same setting as the OpenAI-compatible
    and vLLM backends; transformers' ``repetition_penalty`` is a multiplicative presence penalty
    that also counts the prompt.

    Args:
        penalty: Subtracted per earlier occurrence (OpenAI allows -2..2).
        prompt_len: Length of the (left-padded) prompts, or one per row.
    """

    def __init__(self, penalty: float, prompt_len: int | Sequence[int]) -> None:
        self.penalty = penalty
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        first, later = completion_start(self.prompt_len, input_ids)
        generated = input_ids[:, first:]
        if generated.shape[1] == 0:
            return scores
        vocab = scores.shape[-1]
        counts = torch.zeros((scores.shape[0], vocab + 1), dtype=scores.dtype, device=scores.device)
        ones = torch.ones_like(generated, dtype=scores.dtype)
        if later is not None:  # a row that started later counts its own tokens only
            ones *= torch.arange(generated.shape[1], device=ones.device)[None] >= later[:, None]
        counts.scatter_add_(1, generated.clamp(max=vocab), ones)
        return scores - self.penalty * counts[:, :vocab]


class ChoiceConstraint:
    """Decode exactly one of a fixed set of answers (e.g. FEVER's labels), then stop.

    Each choice is tokenised as the start of a completion; a trie over those token sequences
    gives the tokens allowed after what was generated so far, and the stop tokens once a whole
    choice is written. transformers has no choice constraint of its own; its
    ``prefix_allowed_tokens_fn`` hook is what this plugs into.

    Args:
        tokenizer: The model's tokenizer.
        choices: The allowed answers.
        stop_ids: End-of-sequence tokens, allowed only after a complete choice.
    """

    def __init__(self, tokenizer: Any, choices: Sequence[str], stop_ids: Sequence[int]) -> None:
        if not choices:
            raise ValueError("choices must not be empty")
        self.choices = tuple(choices)
        self.stop_ids = sorted(set(stop_ids))
        self._trie: dict[tuple[int, ...], set[int]] = {}
        self._complete: set[tuple[int, ...]] = set()
        for choice in self.choices:
            tokens = tuple(tokenizer.encode(choice, add_special_tokens=False))
            if not tokens:
                raise ValueError(f"choice {choice!r} encodes to no tokens")
            for i in range(len(tokens)):
                self._trie.setdefault(tokens[:i], set()).add(tokens[i])
            self._complete.add(tokens)

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Tokens that may follow ``generated`` (completion tokens so far)."""
        key = tuple(generated)
        nxt = set(self._trie.get(key, ()))
        if key in self._complete:
            nxt.update(self.stop_ids)
        # Off the trie only if a caller forced a token: end rather than fail.
        return sorted(nxt) or list(self.stop_ids)

    def prefix_fn(self, prompt_len: int | Sequence[int], pad_id: int):
        """A ``prefix_allowed_tokens_fn`` for a batch whose padded prompts are ``prompt_len`` long
        (or, a sequence, each row's own)."""
        stops = set(self.stop_ids) | {pad_id}

        def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            generated = input_ids[row_start(prompt_len, batch_id):].tolist()
            if any(t in stops for t in generated):
                return [pad_id]  # finished row: generate fills it with padding anyway
            return self.allowed(generated)

        return fn
