"""The backend protocol: a batch of chat prompts plus sampling settings -> n completions each.

Every LLM role of the method (reranker, generator, later the judge) goes through this one
interface, so the same pipeline runs on transformers here, on a vLLM engine on a GPU machine,
or against any OpenAI-compatible server.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}
Chat = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every backend (mapped one-to-one where the engine allows).

    Args:
        temperature: 0 means greedy decoding (the method's default for reranking at
            inference and for generation; 0.4 for DPO trajectory sampling).
        top_p: Nucleus sampling mass.
        max_new_tokens: Cap on generated tokens (the original uses 100 for the reranker and
            200 for the generator).
        n: Completions per prompt.
        seed: Seed for sampling; None leaves the backend's default.
        stop: Strings that end a completion (not included in the text).
        id_list_max: When set, decoding is constrained to the reranker's id grammar
            (``None`` or ``[i], [j], ...`` with distinct ids in 1..id_list_max), so every
            output is well-formed by construction. Backends that cannot constrain raise.
        no_repeat_ngram_size: When set, no n-gram of this many tokens occurs twice in the
            completion. Only generated tokens count, never the prompt, so an answer may still
            copy a passage word for word (transformers' own ``no_repeat_ngram_size`` counts the
            prompt too). Exact on the transformers backend and on dynamicrag's own server;
            vLLM, llama.cpp and other OpenAI-compatible servers have no n-gram ban and get
            :func:`loop_frequency_penalty` instead.
        frequency_penalty: OpenAI's frequency penalty: each token's logit is lowered by this
            much per earlier occurrence in the completion (output tokens only, as on OpenAI
            and vLLM). 0 is off.
        choices: When set, the completion is exactly one of these strings (a label set such as
            FEVER's). Constrained on transformers (a token trie), vLLM and servers that accept a
            choice constraint; otherwise the free text is snapped to the first choice it names
            and the completion records ``extra["snapped_from"]`` (see :func:`snap_to_choice`).
        continue_bias: Added to the logit of every token that goes on to another id after one
            in an id list, the tokens whose text starts with ``],`` (:func:`continue_token_ids`;
            SmolLM2, like most BPE vocabularies, spells ``[1], [2]`` as ``[`` ``1`` ``],`` ...,
            so after ``[1`` the choice between ``],`` and ``]`` is the choice of reading on).
            Positive: the reranker reads more passages. A reranker adapter's manifest stores the
            value calibrated on its training prompts (``dynamicrag train calibrate-stop``).
            Exact on transformers, vLLM, llama.cpp and dynamicrag's own server (a logit bias on
            those tokens); other OpenAI-compatible servers raise (their token ids are unknown).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 200
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    id_list_max: int | None = None
    no_repeat_ngram_size: int | None = None
    frequency_penalty: float = 0.0
    choices: tuple[str, ...] | None = None
    continue_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.n < 1:
            raise ValueError("max_new_tokens and n must be >= 1")
        if self.id_list_max is not None and self.id_list_max < 1:
            raise ValueError(f"id_list_max must be >= 1, got {self.id_list_max}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 1:
            raise ValueError(f"no_repeat_ngram_size must be >= 1 or None, got {self.no_repeat_ngram_size}")
        if not -2 <= self.frequency_penalty <= 2:
            raise ValueError(f"frequency_penalty must be in [-2, 2] (as in OpenAI's API), got {self.frequency_penalty}")
        if self.choices is not None:
            if isinstance(self.choices, list):
                object.__setattr__(self, "choices", tuple(self.choices))  # frozen: hashable settings
            if isinstance(self.choices, str) or not self.choices or not all(c and isinstance(c, str) for c in self.choices):
                raise ValueError(f"choices must be a non-empty tuple of non-empty strings, got {self.choices!r}")
            if self.id_list_max is not None:
                raise ValueError("choices and id_list_max are two different constraints; set one")
        if not -100 <= self.continue_bias <= 100:
            raise ValueError(f"continue_bias must be in [-100, 100] (as OpenAI's logit_bias), got {self.continue_bias}")


@dataclass
class Completion:
    """One generated text with the token counts the cost benchmarks need."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    extra: dict = field(default_factory=dict)


# What a backend without an n-gram ban sends for ``no_repeat_ngram_size`` (see
# loop_frequency_penalty); chosen on the bundled model, see docs/decoding.md.
LOOP_FREQUENCY_PENALTY = 0.5


def loop_frequency_penalty(params: SamplingParams) -> float:
    """The ``frequency_penalty`` a backend without an n-gram ban sends for ``params``.

    vLLM, llama.cpp and most OpenAI-compatible servers cannot ban repeated n-grams, but all of
    them have OpenAI's ``frequency_penalty``, which also counts output tokens only. When
    ``no_repeat_ngram_size`` is set and no ``frequency_penalty`` was given, they use
    :data:`LOOP_FREQUENCY_PENALTY` instead. It is a softer, different control: it lowers every
    repeated *token* a little (common words too) rather than forbidding a repeated *n-gram*, so
    a loop is discouraged rather than made impossible, and outputs differ from the
    transformers backend's.

    Args:
        params: The backend-neutral settings.

    Returns:
        ``params.frequency_penalty`` when set, else the stand-in when an n-gram ban was asked
        for, else 0.
    """
    if params.frequency_penalty:
        return params.frequency_penalty
    return LOOP_FREQUENCY_PENALTY if params.no_repeat_ngram_size else 0.0


CONTINUE_PREFIX = "],"  # how an id list goes on after an id: "[1], [2]"


def continue_ids_in(vocabulary: Iterable[tuple[int, str]]) -> list[int]:
    """The tokens :attr:`SamplingParams.continue_bias` applies to, of a vocabulary given as
    (id, text) pairs: those whose text, leading space aside, starts with ``],``."""
    return [i for i, text in vocabulary if text.lstrip().startswith(CONTINUE_PREFIX)]


def continue_token_ids(tokenizer) -> list[int]:
    """The tokens :attr:`SamplingParams.continue_bias` applies to in a transformers tokenizer's
    vocabulary (SmolLM2: ``],``, ``],[`` and `` ],``); special tokens never.

    Args:
        tokenizer: A transformers tokenizer (``convert_ids_to_tokens`` and
            ``convert_tokens_to_string`` are all it needs).
    """
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(ids)]
    return continue_ids_in(zip(ids, texts))


def snap_to_choice(text: str, choices: Sequence[str]) -> str | None:
    """The choice a free-text answer names first (case-insensitive, whole words), or None.

    For backends that cannot constrain decoding to ``SamplingParams.choices``.

    Example:
        >>> snap_to_choice('The claim is "refutes".', ["SUPPORTS", "REFUTES", "NEI"])
        'REFUTES'
    """
    best: tuple[int, str] | None = None
    for choice in choices:
        found = re.search(rf"(?<!\w){re.escape(choice)}(?!\w)", text, flags=re.IGNORECASE)
        if found and (best is None or found.start() < best[0]):
            best = (found.start(), choice)
    return best[1] if best else None


def snapped_completion(completion: Completion, choices: Sequence[str]) -> Completion:
    """``completion`` with its text snapped to one of ``choices``, the raw text kept in ``extra``.

    The text is left as it was when it names no choice (``extra["snapped_from"]`` is still set,
    with ``extra["snapped"]`` False), so the answer is scored as the model wrote it.
    """
    choice = snap_to_choice(completion.text, choices)
    extra = {**completion.extra, "snapped_from": completion.text, "snapped": choice is not None}
    return dataclasses.replace(completion, text=choice if choice is not None else completion.text, extra=extra)


@runtime_checkable
class Backend(Protocol):
    """What every LLM backend provides."""

    name: str
    model: str

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[Completion]]:
        """Return ``params.n`` completions for each chat, in input order."""
        ...

    def count_tokens(self, chat: Chat) -> int:
        """Prompt tokens of ``chat`` after the chat template (used to fit windows)."""
        ...

    def describe(self) -> dict:
        """The settings that change this backend's outputs or speed (name, model, dtype,
        device, threads, batch size, ...), as plain JSON values; recorded in each run's
        settings (:mod:`dynamicrag.run_settings`)."""
        ...


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that can also hand out one completion's text while it is generated (optional:
    :func:`stream_text` falls back to :meth:`Backend.generate` for backends without it)."""

    def stream(self, chat: Chat, params: SamplingParams) -> Iterator[str]:
        """Yield the text of one completion of ``chat`` in pieces, as the model writes it.

        Closing the iterator early stops the generation.
        """
        ...


def stream_text(backend: Backend, chat: Chat, params: SamplingParams) -> Iterator[str]:
    """The text of one completion of ``chat``, in pieces as they come where ``backend`` streams
    (:class:`StreamingBackend`), else in one piece once it is done.

    Example:
        >>> for piece in stream_text(llm, [{"role": "user", "content": "Hi"}], SamplingParams()):
        ...     print(piece, end="", flush=True)
    """
    if params.n != 1:
        raise ValueError(f"streaming gives one completion; got n={params.n}")
    if isinstance(backend, StreamingBackend):
        yield from backend.stream(chat, params)
    else:
        yield backend.generate([chat], params)[0][0].text


def cut_at_stop(pieces: Iterable[str], stop: Sequence[str]) -> Iterator[str]:
    """Streamed ``pieces`` of a text up to its first stop string, which is not yielded: the
    same text a backend's completion keeps (``SamplingParams.stop``).

    The last ``len(longest stop) - 1`` characters are held back until it is known that no stop
    string starts in them, so nothing yielded is ever taken back.

    Example:
        >>> "".join(cut_at_stop(["Paris is", " the capital.", "\n", "\nIt is"], (".\n\n",)))
        'Paris is the capital'
    """
    if not stop:
        yield from pieces
        return
    hold = max(map(len, stop)) - 1
    buffer = ""
    for piece in pieces:
        buffer += piece
        cut = min((p for p in (buffer.find(s) for s in stop) if p >= 0), default=-1)
        if cut >= 0:
            if cut:
                yield buffer[:cut]
            return
        if len(buffer) > hold:
            yield buffer[:len(buffer) - hold]
            buffer = buffer[len(buffer) - hold:]
    if buffer:
        yield buffer
