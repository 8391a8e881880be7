"""The generator role: answer from the selected passages, in the order the reranker chose.

Its decoding settings live in one place, :class:`GenerationConfig`: per-task defaults
(:data:`TASK_GENERATION`) that suit greedy decoding with a small model, plus the overrides a
user gives on the command line (``--max-new-tokens``, ``--no-repeat-ngram``, ...) or in a
benchmark YAML (``generation:``). :meth:`GenerationConfig.to_dict` is what a run records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField

from dynamicrag.llm.base import Backend, Chat, Completion, SamplingParams, stream_text
from dynamicrag.prompts import PromptStyle, generator_chat, load_style
from dynamicrag.schema import Example, Selection

# The labels the FEVER task line asks for ("SUPPORTS", "REFUTES" or "NEI"). The metric
# (dynamicrag.evaluate.answer_metrics.fever_label) reads "NEI" as the data's NOT ENOUGH INFO.
FEVER_CHOICES = ("SUPPORTS", "REFUTES", "NEI")


@dataclass(frozen=True)
class TaskDecoding:
    """The generator's decoding settings for one kind of task (see :class:`SamplingParams`).

    Args:
        max_new_tokens: Cap on the answer.
        stop: Strings that end the answer.
        no_repeat_ngram_size: No token n-gram of this size occurs twice in the answer (the
            passages may still be copied); None is off.
        frequency_penalty: OpenAI-style penalty on repeated answer tokens; 0 is off.
        choices: The answer is exactly one of these (a label task); None is free text.
    """

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    no_repeat_ngram_size: int | None = None
    frequency_penalty: float = 0.0
    choices: tuple[str, ...] | None = None


# Stop strings of short answers: a paragraph break right after a sentence end. Measured on NQ
# (docs/decoding.md), every other rule cut answers: a bare newline stops after the passage title
# the small model often copies first ("Mapp v. Ohio\nDollree Mapp was ..."), "?" ends the
# question it restates before answering ("... in 2018?\n\nThe answer is: Roger Federer"), a
# single newline after "." also ends a title ("Manchester United F.C.\n"), and a sentence end
# would cut at "Dr." and lose answers in a second sentence. The stop string is not kept.
SENTENCE_PARAGRAPH_END = (".\n\n", "!\n\n")

# Greedy decoding with a 135M model: short answers are one or two sentences with the gold phrase
# early; what follows a finished paragraph is a restatement or a loop. The n-gram ban counts the
# answer only (the passages may be copied) and is long enough to let a copied title be
# repeated once ("Title\n\nTitle is ..."), short enough to end every exact loop after one turn.
# docs/decoding.md has the NQ measurements behind each value. Tasks not listed use "default".
TASK_GENERATION: dict[str, TaskDecoding] = {
    # Short-answer QA (NQ, TriviaQA, HotpotQA, ...).
    "default": TaskDecoding(max_new_tokens=64, stop=SENTENCE_PARAGRAPH_END, no_repeat_ngram_size=8),
    # A label: decoding is constrained to the label set, so a few tokens are enough.
    "fever": TaskDecoding(max_new_tokens=8, choices=FEVER_CHOICES),
    # Paragraph answers: the paper's 200 tokens, no stop.
    "eli5": TaskDecoding(max_new_tokens=200, no_repeat_ngram_size=8),
    "asqa": TaskDecoding(max_new_tokens=200, no_repeat_ngram_size=8),
}


@dataclass(frozen=True)
class GenerationConfig:
    """The generator's decoding: per-task defaults with overrides that apply to every task.

    Every override left at None keeps the task's default from :data:`TASK_GENERATION`. Built
    the same way from Python, the command line and a benchmark YAML (``generation:``).

    Args:
        max_new_tokens: Cap on every answer (defaults: 64 short answers, 8 labels, 200
            paragraphs; the paper uses 200 everywhere).
        no_repeat_ngram_size: Completion-only n-gram ban; 0 turns it off.
        frequency_penalty: OpenAI-style frequency penalty on answer tokens.
        stop: Strings that end an answer; an empty list turns the task's stop off.
        constrain_labels: Label tasks (FEVER) decode exactly one label; False lets them write
            free text, read by the metric as before.
        temperature: 0 is greedy (the method's setting for the generator).
        tasks: The per-task defaults (normally :data:`TASK_GENERATION`).
    """

    max_new_tokens: int | None = field(default=None, metadata={"help": "Cap on every answer; None: the task's"})
    no_repeat_ngram_size: int | None = field(default=None, metadata={"help": "n-gram ban over the answer; 0: off"})
    frequency_penalty: float | None = field(default=None, metadata={"help": "Penalty per repeated answer token"})
    stop: tuple[str, ...] | None = field(default=None, metadata={"help": "Stop strings; None: the task's"})
    constrain_labels: bool = field(default=True, metadata={"help": "Label tasks answer with one label"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy"})
    tasks: dict[str, TaskDecoding] = field(default_factory=lambda: dict(TASK_GENERATION), repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"generation max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0:
            raise ValueError(f"generation no_repeat_ngram_size must be >= 0 (0: off), got {self.no_repeat_ngram_size}")
        if "default" not in self.tasks:
            raise ValueError("generation tasks need a 'default' entry")
        for task in self.tasks:
            self.params(task)  # every combination must be valid now, not in the middle of a run

    def task_decoding(self, task: str) -> TaskDecoding:
        """The task's defaults with the overrides applied."""
        base = self.tasks.get(task.lower(), self.tasks["default"])
        updates: dict[str, Any] = {}
        if self.max_new_tokens is not None:
            updates["max_new_tokens"] = self.max_new_tokens
        if self.no_repeat_ngram_size is not None:
            updates["no_repeat_ngram_size"] = self.no_repeat_ngram_size or None
        if self.frequency_penalty is not None:
            updates["frequency_penalty"] = self.frequency_penalty
        if self.stop is not None:
            updates["stop"] = tuple(self.stop)
        if not self.constrain_labels:
            updates["choices"] = None
        return dataclasses.replace(base, **updates)

    def params(self, task: str) -> SamplingParams:
        """The backend settings for answering an example of ``task``."""
        d = self.task_decoding(task)
        return SamplingParams(
            temperature=self.temperature,
            max_new_tokens=d.max_new_tokens,
            stop=d.stop,
            no_repeat_ngram_size=d.no_repeat_ngram_size,
            frequency_penalty=d.frequency_penalty,
            choices=d.choices,
        )

    def to_dict(self) -> dict[str, Any]:
        """The overrides as given and the settings each task ends up with (JSON-ready), for a
        run's settings record."""
        overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tasks"}
        overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}
        resolved = {}
        for task in self.tasks:
            d = dataclasses.asdict(self.task_decoding(task))
            resolved[task] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return {"overrides": overrides, "tasks": resolved}


class GenerationSpec(BaseModel):
    """The generator's decoding overrides as a config record (:class:`GenerationConfig` fields; a
    field left out keeps each task's default): ``PipelineConfig.generation``, a benchmark YAML's
    ``generation:``, the command line's ``--no-repeat-ngram`` / ``--frequency-penalty`` /
    ``--answer-stop`` / ``--label-choices``."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = PydanticField(None, ge=1, description="Cap on every answer")
    no_repeat_ngram_size: int | None = PydanticField(
        None, ge=0, description="No token n-gram of this size repeats within an answer (the passages may still be "
        "copied); 0: off. Default: 8 (labels: off)")
    frequency_penalty: float | None = PydanticField(
        None, ge=-2, le=2, description="OpenAI-style penalty per repeated answer token (default 0)")
    stop: list[str] | None = PydanticField(
        None, description="Strings that end an answer ([]: none; on the command line, escapes like \\n work and "
        "'none' is no stop). Default for short answers: a paragraph break after . or !")
    constrain_labels: bool = PydanticField(
        True, description="Label tasks (FEVER) answer with exactly one label (constrained decoding)")

    def to_config(self, answer_max_tokens: int | None = None, temperature: float = 0.0) -> GenerationConfig:
        """The :class:`GenerationConfig`; ``answer_max_tokens`` is the cap when this spec sets none.

        Raises:
            ValueError: A setting no backend could run (checked for every task).
        """
        fields = self.model_dump()
        if fields["max_new_tokens"] is None:
            fields["max_new_tokens"] = answer_max_tokens
        if fields["stop"] is not None:
            fields["stop"] = tuple(fields["stop"])
        return GenerationConfig(**fields, temperature=temperature)


@dataclass
class Generator:
    """Answer each example from its selected passages, with its task's decoding settings.

    The task line follows ``example.task`` (short phrase, FEVER labels, or a paragraph for
    ELI5); a ``None`` selection gives the no-passage prompt. Examples of different tasks in one
    batch are sent to the backend per task, each with its own settings.

    Args:
        backend: The LLM.
        style: The prompt style.
        config: Decoding settings (:class:`GenerationConfig`).
        max_new_tokens: Shorthand for ``config.max_new_tokens`` (overrides it when given).
        temperature: Shorthand for ``config.temperature`` (overrides it when given).
    """

    backend: Backend
    style: PromptStyle = field(default_factory=load_style)
    config: GenerationConfig = field(default_factory=GenerationConfig)
    max_new_tokens: int | None = None
    temperature: float | None = None

    def __post_init__(self) -> None:
        updates = {k: v for k, v in (("max_new_tokens", self.max_new_tokens), ("temperature", self.temperature))
                   if v is not None}
        if updates:
            self.config = dataclasses.replace(self.config, **updates)

    def chat(self, example: Example, selection: Selection) -> Chat:
        passages = [example.passages[i - 1] for i in selection.ids]
        return generator_chat(self.style, example.question, passages, example.task)

    def settings(self) -> dict[str, Any]:
        """The decoding settings as a JSON-ready dict (for a run's settings record)."""
        return self.config.to_dict()

    def complete(self, examples: Sequence[Example], selections: Sequence[Selection]) -> list[Completion]:
        """One completion per example (text stripped), in input order.

        A completion snapped to a label by a backend that cannot constrain carries the model's
        own text in ``extra["snapped_from"]``.
        """
        out: list[Completion | None] = [None] * len(examples)
        by_params: dict[SamplingParams, list[int]] = {}
        for i, ex in enumerate(examples):
            by_params.setdefault(self.params(ex.task), []).append(i)
        for params, members in by_params.items():
            chats = [self.chat(examples[i], selections[i]) for i in members]
            for i, [completion] in zip(members, self.backend.generate(chats, params)):
                out[i] = dataclasses.replace(completion, text=completion.text.strip())
        return out  # type: ignore[return-value]  # every index was filled above

    def answer(self, examples: Sequence[Example], selections: Sequence[Selection]) -> list[str]:
        """The answer text of each example, in input order."""
        if not examples:
            return []
        return [c.text for c in self.complete(examples, selections)]

    def params(self, task: str = "default") -> SamplingParams:
        """The decoding settings of an answer to an example of ``task``, streamed or not."""
        return self.config.params(task)

    def stream(self, example: Example, selection: Selection) -> Iterator[str]:
        """Answer one example, yielding the text as the backend writes it (in one piece where the
        backend cannot stream), with the example's task's decoding settings; the pieces joined
        and stripped are what :meth:`answer` returns."""
        return stream_text(self.backend, self.chat(example, selection), self.params(example.task))
