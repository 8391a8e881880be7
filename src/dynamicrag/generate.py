"""The generator role: answer from the selected passages, in the order the reranker chose."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from dynamicrag.llm.base import Backend, Chat, SamplingParams, stream_text
from dynamicrag.prompts import PromptStyle, generator_chat, load_style
from dynamicrag.schema import Example, Selection


@dataclass
class Generator:
    """Answer each example from its selected passages (greedy, 200 new tokens as in the paper).

    The task line follows ``example.task`` (short phrase, FEVER labels, or a paragraph for
    ELI5); a ``None`` selection gives the no-passage prompt.
    """

    backend: Backend
    style: PromptStyle = field(default_factory=load_style)
    max_new_tokens: int = 200
    temperature: float = 0.0

    def chat(self, example: Example, selection: Selection) -> Chat:
        passages = [example.passages[i - 1] for i in selection.ids]
        return generator_chat(self.style, example.question, passages, example.task)

    def answer(self, examples: Sequence[Example], selections: Sequence[Selection]) -> list[str]:
        if not examples:
            return []
        chats = [self.chat(ex, sel) for ex, sel in zip(examples, selections)]
        return [c[0].text.strip() for c in self.backend.generate(chats, self.params())]

    def params(self) -> SamplingParams:
        """The decoding settings of every answer, streamed or not."""
        return SamplingParams(temperature=self.temperature, max_new_tokens=self.max_new_tokens)

    def stream(self, example: Example, selection: Selection) -> Iterator[str]:
        """Answer one example, yielding the text as the backend writes it (in one piece where the
        backend cannot stream); the pieces joined and stripped are what :meth:`answer` returns."""
        return stream_text(self.backend, self.chat(example, selection), self.params())
