"""DynamicRAG from Python: one object, :class:`DynamicRAG`, with the defaults of ``dynamicrag ask``.

Build it from documents, from an index, or from a :class:`~dynamicrag.build.PipelineConfig`,
then ask it questions; each answer is an :class:`Answer` (the text, the chosen passages with
their ids, titles and scores, k, the reranker's raw output, the error if any, timings, and the
chosen passages the answer draws on). It is built by :mod:`dynamicrag.build`, the one builder
of every command, with the defaults of ``ask``: the reranker adapter shipped for the base model
(when one ships), 10 retrieved candidates, and, without an adapter, decoding constrained to the
id grammar (the untrained base model writes no usable id list otherwise).

Example:
    >>> from dynamicrag import DynamicRAG
    >>> rag = DynamicRAG.from_documents("docs/")  # doctest: +SKIP
    >>> answer = rag.ask("How does DynamicRAG choose the number of passages?")  # doctest: +SKIP
    >>> answer.k, [p.id for p in answer.passages]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dynamicrag.attribution import Attribution, attribute_record
from dynamicrag.build import PipelineConfig, RoleOptions, build_pipeline, models_label, resolve_config, role_configs
from dynamicrag.pipeline import Outcome, Pipeline
from dynamicrag.schema import Example, Passage

ASK_DEFAULTS: dict[str, Any] = {"top_n": 10, "constrained": True}
"""The defaults of ``ask``, ``chat`` and :class:`DynamicRAG` for what neither the options nor
the reranker adapter's manifest set (:func:`~dynamicrag.build.resolve_config`): 10 candidates,
and constrained decoding, as the base model is not trained as a reranker."""

Loading = Callable[[str], contextlib.AbstractContextManager]
Role = str | dict[str, Any] | RoleOptions | None


def _quiet(what: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class ChosenPassage(BaseModel):
    """A passage the reranker chose, in its order."""

    model_config = ConfigDict(frozen=True)

    position: int = Field(description="1-based position among the candidates the reranker saw")
    id: str
    title: str = ""
    text: str
    score: float | None = Field(None, description="The retriever's score (None for given passages)")


class Timings(BaseModel):
    """Seconds each step took (the model calls of a batch are shared by its questions)."""

    model_config = ConfigDict(frozen=True)

    retrieve_s: float = 0.0
    rerank_s: float = 0.0
    generate_s: float = 0.0
    total_s: float = 0.0


class Answer(BaseModel):
    """One question, answered.

    Attributes:
        question: The question.
        text: The answer; None when none could be written (``error`` says why).
        passages: The chosen passages, in the reranker's order (k of them; none when it said
            ``None``).
        candidates: Every passage the reranker saw, in retrieval order.
        k: How many passages were chosen.
        reranker_output: The reranker's raw output (``[3], [1]`` or ``None``).
        well_formed: The output followed the id grammar exactly (None when the reranker did not run).
        error: Why there is no answer (an unusable reranker output, an exception), or None.
        timings: Where the time went.
        attribution: The chosen passages the answer draws on, by shared words
            (:mod:`dynamicrag.attribution`; positions as in ``passages``' ``position``).
        record: The output record ``dynamicrag infer`` writes for this question.
    """

    model_config = ConfigDict(frozen=True)

    question: str
    text: str | None
    passages: list[ChosenPassage]
    candidates: list[Passage] = Field(repr=False)
    k: int
    reranker_output: str | None
    well_formed: bool | None
    error: str | None
    timings: Timings
    attribution: list[Attribution] = Field(default_factory=list)
    record: dict[str, Any] = Field(repr=False)

    def __str__(self) -> str:
        return self.text if self.text is not None else f"(no answer: {self.error})"

    def to_json(self) -> dict[str, Any]:
        """What ``dynamicrag ask --json`` prints: the output record with its attribution."""
        return {**self.record, "attribution": [a.to_json() for a in self.attribution]}

    @classmethod
    def of(cls, outcome: Outcome, total_s: float, text: str | None = None) -> Answer:
        """The answer of one pipeline outcome (``text`` overrides the outcome's, for a stream)."""
        record = outcome.record()
        if text is not None:
            record["answer"] = text
        selection = outcome.selection
        ids = selection.ids if selection is not None else []
        chosen = [ChosenPassage(position=i, **outcome.example.passages[i - 1].model_dump(include={"id", "title", "text", "score"}))
                  for i in ids]
        t = outcome.timings
        return cls(
            question=outcome.example.question, text=record["answer"], passages=chosen,
            candidates=outcome.example.passages, k=len(ids), reranker_output=record["reranker_output"],
            well_formed=record["well_formed"], error=record["error"],
            timings=Timings(retrieve_s=t.get("retrieve", 0.0), rerank_s=t.get("rerank", 0.0),
                            generate_s=t.get("generate", 0.0), total_s=total_s),
            attribution=[Attribution(**a) for a in attribute_record(record)], record=record,
        )


class AnswerStream:
    """An answer being written: the passages are chosen; iterate to get the text as it comes.

    ``answer`` is the :class:`Answer` so far: its passages, k and reranker output at once, its
    text (and attribution) once the iteration has ended. Where the backend cannot stream, the
    text comes in one piece.
    """

    def __init__(self, outcome: Outcome, generator: Any, start: float) -> None:
        self._outcome, self._generator, self._start = outcome, generator, start
        self.answer = Answer.of(outcome, time.perf_counter() - start)

    def __iter__(self) -> Iterator[str]:
        outcome = self._outcome
        if outcome.selection is None or outcome.selection.error is not None:
            return
        started, pieces, begin = False, [], time.perf_counter()
        for piece in self._generator.stream(outcome.example, outcome.selection):
            if not started:
                piece = piece.lstrip()  # as a whole answer is stripped
                started = bool(piece)
            pieces.append(piece)
            yield piece
        outcome.timings = {**outcome.timings, "generate": time.perf_counter() - begin}
        self.answer = Answer.of(outcome, time.perf_counter() - self._start, text="".join(pieces).strip())


class DynamicRAG:
    """Retrieve, let the reranker choose the passages (which and how many), answer from them.

    Build one with :meth:`from_documents`, :meth:`load` or :meth:`from_config`; each loads the
    models once (roles on the same base model share it).

    Args:
        pipeline: The built pipeline (retriever, reranker, generator).
        config: The resolved config it was built from (None when built by hand).

    Example:
        >>> rag = DynamicRAG.load(index="runs/nq-index", reranker={"adapter": "runs/recipe/adapter"})  # doctest: +SKIP
        >>> [a.text for a in rag.run(["who wrote hamlet?", "capital of France?"])]  # doctest: +SKIP
    """

    def __init__(self, pipeline: Pipeline, config: PipelineConfig | None = None) -> None:
        self.pipeline = pipeline
        self.config = config

    def __repr__(self) -> str:
        models = models_label(self.config) if self.config is not None else "a pipeline built by hand"
        return f"DynamicRAG({models}, index={type(self.pipeline.retriever).__name__ if self.pipeline.retriever else None})"

    @classmethod
    def from_config(
        cls, config: PipelineConfig | None = None, index: Any = None, *, defaults: dict[str, Any] | None = None,
        loading: Loading = _quiet,
    ) -> DynamicRAG:
        """Build from a :class:`~dynamicrag.build.PipelineConfig`, as every command does.

        Args:
            config: The roles and the method's settings (None: every default).
            index: An index folder, a loaded retriever, or None (questions then need passages).
            defaults: What neither the config nor the reranker adapter's manifest sets
                (default :data:`ASK_DEFAULTS`).
            loading: Entered around each loading step with what loads.

        Raises:
            ValueError: A bad option (backend, adapter, prompt style, decoding).
            FileNotFoundError: An adapter or index folder that does not exist.
        """
        from dynamicrag.runtime import set_thread_env_defaults

        set_thread_env_defaults()  # OMP_WAIT_POLICY before torch loads (dynamicrag.runtime says why)
        config = resolve_config(config or PipelineConfig(), **(ASK_DEFAULTS if defaults is None else defaults))
        if isinstance(index, (str, Path)):
            from dynamicrag.retrieve import load_index

            with loading(f"loading the index {index}"):
                index = load_index(index)
        with loading(f"loading {models_label(config)}"):
            return cls(build_pipeline(config, index), config)

    @classmethod
    def load(
        cls,
        index: str | Path | Any = None,
        reranker: Role = None,
        generator: Role = None,
        *,
        model: str | None = None,
        backend: str = "transformers",
        base_url: str | None = None,
        backend_options: dict[str, Any] | None = None,
        prompt_style: str | None = None,
        loading: Loading = _quiet,
        **settings: Any,
    ) -> DynamicRAG:
        """Build from an index and the models of each role.

        Args:
            index: An index folder (``dynamicrag index``), a loaded retriever, or None.
            reranker: The reranker's model (a name or path), or its role options as a dict
                (``model``, ``adapter``: ``auto`` | ``none`` | a folder, ``backend``,
                ``base_url``, ``backend_options``, ``prompt_style``).
            generator: The generator's, likewise.
            model: Both roles' model, unless a role names its own (default: the bundled SmolLM2).
            backend: Both roles' backend (``transformers``, ``openai``, ``vllm``, ``llamacpp``).
            base_url: Both roles' OpenAI-compatible server.
            backend_options: Both roles' backend options (e.g. ``{"batch_size": 16}``).
            prompt_style: ``default``, ``official`` or a YAML path.
            loading: Entered around each loading step with what loads.
            **settings: Other :class:`~dynamicrag.build.PipelineConfig` fields, e.g. ``top_n``,
                ``constrained``, ``kind``, ``k``, ``passage_words``, ``answer_max_tokens``.
        """
        roles = role_configs(
            backend=backend, model=model, base_url=base_url, backend_options=backend_options,
            prompt_style=prompt_style, reranker=_role(reranker), generator=_role(generator),
        )
        return cls.from_config(PipelineConfig(**roles, **settings), index, loading=loading)

    @classmethod
    def from_documents(
        cls, documents: str | Path | Sequence[Passage] | None = None, *, retriever: str = "bm25",
        config: PipelineConfig | None = None, loading: Loading = _quiet, **options: Any,
    ) -> DynamicRAG:
        """Index documents (once: the index is cached by their paths, sizes and times) and load.

        Args:
            documents: A folder of ``.md``/``.txt`` files, a corpus file, a list of
                :class:`~dynamicrag.schema.Passage`, or None for the bundled docs.
            retriever: The index kind: ``bm25``, ``dense`` or ``hybrid``.
            config: The roles and settings as one config (as :meth:`from_config`), instead of
                ``options``.
            loading: Entered around each loading step with what loads.
            **options: As :meth:`load` takes them (models, roles, settings).

        Raises:
            FileNotFoundError: No such documents.
            DataError: A document file that cannot be read (file and line named).
        """
        from dynamicrag.retrieve import retriever_class
        from dynamicrag.retrieve.base import check_corpus
        from dynamicrag.retrieve.corpus_index import corpus_index

        if documents is None or isinstance(documents, (str, Path)):
            index, _ = corpus_index(documents, retriever, loading=loading)
        else:
            with loading(f"indexing {len(documents)} passages"):
                index = retriever_class(retriever).build(check_corpus(documents), show_progress=False)
        if config is not None:
            return cls.from_config(config, index, loading=loading)
        return cls.load(index, loading=loading, **options)

    @property
    def settings(self) -> dict[str, Any]:
        """What plays each role (:func:`~dynamicrag.build.role_settings`)."""
        return self.pipeline.settings

    def ask(self, question: str, *, task: str = "qa", passages: Sequence[Passage] | None = None) -> Answer:
        """Answer one question from the index (or from ``passages``).

        Args:
            question: The question.
            task: Decides the answer's form (``qa``: a short phrase; ``fever``: a label; ``eli5``:
                a paragraph).
            passages: The candidates, instead of searching the index.
        """
        return self.run([_example(question, task, passages, "ask")])[0]

    def run(self, examples: Iterable[Example | str]) -> list[Answer]:
        """Answer a batch together (one reranker and one generator call per batch).

        Args:
            examples: Questions, or :class:`~dynamicrag.schema.Example` records (with their
                own passages, gold answers and task).

        Returns:
            One :class:`Answer` per example, in order; a failed one has its ``error``.
        """
        batch = [ex if isinstance(ex, Example) else _example(ex, "qa", None, f"q{i}") for i, ex in enumerate(examples)]
        start = time.perf_counter()
        outcomes = self.pipeline.answer(batch)
        total = time.perf_counter() - start
        return [Answer.of(outcome, total) for outcome in outcomes]

    def stream(self, question: str, *, task: str = "qa", id: str = "ask") -> AnswerStream:
        """Choose the passages now; the answer is written as the stream is iterated.

        Example:
            >>> stream = rag.stream("How does DynamicRAG choose k?")  # doctest: +SKIP
            >>> stream.answer.k, "".join(stream), stream.answer.text  # doctest: +SKIP
        """
        start = time.perf_counter()
        [outcome] = self.pipeline.answer([_example(question, task, None, id)], generate=False)
        return AnswerStream(outcome, self.pipeline.generator, start)


def _example(question: str, task: str, passages: Sequence[Passage] | None, id: str) -> Example:
    return Example(id=id, question=question, task=task, passages=list(passages or []))


def _role(role: Role) -> RoleOptions | dict[str, Any] | None:
    return {"model": role} if isinstance(role, str) else role


__all__ = ["ASK_DEFAULTS", "Answer", "AnswerStream", "ChosenPassage", "DynamicRAG", "Timings"]
