"""The backend protocol: a batch of chat prompts plus sampling settings -> n completions each.

Every LLM role of the method (reranker, generator, later the judge) goes through this one
interface, so the same pipeline runs on transformers here, on a vLLM engine on a GPU machine,
or against any OpenAI-compatible server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 200
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    id_list_max: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.n < 1:
            raise ValueError("max_new_tokens and n must be >= 1")
        if self.id_list_max is not None and self.id_list_max < 1:
            raise ValueError(f"id_list_max must be >= 1, got {self.id_list_max}")


@dataclass
class Completion:
    """One generated text with the token counts the cost benchmarks need."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    extra: dict = field(default_factory=dict)


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
