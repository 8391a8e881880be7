"""Trajectory sampling for DPO: n reranker id lists per question, and a greedy answer for each.

Stage two of DynamicRAG training (arXiv 2505.07233, section 3.3): the SFT model reranks the
first ``top_n`` candidates of each question ``n`` times at a temperature above zero; for every
id list, the same model answers greedily from the passages it chose. A reward stage scores the
answers and turns the best and worst lists into DPO pairs.

The prompts, the parser and constrained decoding are the inference ones
(:class:`~dynamicrag.rerank.DynamicReranker`, :class:`~dynamicrag.generate.Generator`), so the
trajectories are exactly what the model would produce when serving. Each question's ``n``
samples come from one backend request (``SamplingParams.n``): transformers and vLLM encode the
prompt once for all of them. Answers are generated in one batched call per batch of questions,
once per distinct id list of a question (samples that chose the same list share the answer).

Output record per question (one JSON line; the reward stage reads exactly this)::

    {**Example.model_dump(mode="json"),      # passages = the candidates the reranker saw
     "prompt_style": "default",
     "passage_words": null,                  # the reranker prompt's word cap per passage
     "samples": [{"ids": [3, 1], "raw": "[3], [1]", "well_formed": true, "error": null,
                  "answer": "..."}, ...]}    # n samples, in sampling order

``ids`` are 1-based positions into ``passages``; a sample whose output could not be read (or
whose example made the backend raise) has ``ids == []``, its ``error`` set and ``answer`` null
(kept, never dropped).

Example:
    >>> from dynamicrag.llm import load_backend
    >>> llm = load_backend("transformers", model="runs/sft_smollm2_lora/merged")
    >>> records = sample_trajectories(examples, llm, "default", SampleConfig(n=8))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynamicrag.generate import Generator
from dynamicrag.isolation import error_text, run_isolated
from dynamicrag.llm.base import Backend
from dynamicrag.prompts import PromptStyle, load_style
from dynamicrag.rerank.dynamic import DynamicReranker
from dynamicrag.schema import Example, Selection

logger = logging.getLogger(__name__)


@dataclass
class SampleConfig:
    """Settings of trajectory sampling; the defaults are the original code's.

    The original samples at temperature 0.4 (not 1.0), n = 8, with at most 100 new tokens for
    the id list, over the first 40 retrieved passages; answers are greedy with 200 new tokens.
    """

    n: int = field(default=8, metadata={"help": "Id lists sampled per question (original: 8)."})
    temperature: float = field(
        default=0.4,
        metadata={"help": "Reranker sampling temperature (original: 0.4); 0 makes all n lists identical."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass of the reranker (original: 1.0)."})
    rerank_max_new_tokens: int = field(
        default=100, metadata={"help": "Cap on the id list's length in tokens (original: 100)."}
    )
    answer_max_new_tokens: int | None = field(
        default=200,
        metadata={"help": "Cap on each greedy answer's length in tokens (original: 200); None: the task's default."},
    )
    top_n: int = field(
        default=40,
        metadata={"help": "Candidates shown to the reranker: the first top_n passages of each question (original: 40)."},
    )
    constrained: bool = field(
        default=False,
        metadata={"help": "Constrain the reranker to the id grammar, so every sample is well-formed (original: no)."},
    )
    seed: int | None = field(
        default=42, metadata={"help": "Sampling seed of each backend call; null leaves the backend's default."}
    )
    passage_words: int | None = field(
        default=None,
        metadata={"help": "Words of each passage shown to the reranker (null: all); a trained adapter's own cap."},
    )

    def __post_init__(self) -> None:
        positive = {
            "n": self.n,
            "rerank_max_new_tokens": self.rerank_max_new_tokens,
            "answer_max_new_tokens": self.answer_max_new_tokens,
            "top_n": self.top_n,
        }
        for name, value in positive.items():
            if name == "answer_max_new_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed: must be an integer or null, got {self.seed!r}")
        if self.passage_words is not None and (
            isinstance(self.passage_words, bool) or not isinstance(self.passage_words, int) or self.passage_words < 1
        ):
            raise ValueError(f"passage_words: must be a positive integer or null, got {self.passage_words!r}")


def _sample_record(sel: Selection, answer: str | None) -> dict[str, Any]:
    return {"ids": list(sel.ids), "raw": sel.raw, "well_formed": sel.well_formed, "error": sel.error, "answer": answer}


def sample_trajectories(
    examples: Sequence[Example],
    backend: Backend,
    style: PromptStyle | str = "default",
    config: SampleConfig | None = None,
    generator_backend: Backend | None = None,
) -> list[dict[str, Any]]:
    """Sample ``n`` id lists per example and answer each distinct list greedily.

    Args:
        examples: Questions with their retrieved passages (only the first ``top_n`` are shown).
        backend: The SFT model: the reranker, and the generator unless ``generator_backend`` is given.
        style: Prompt style, or its name / YAML path (the string is recorded as
            ``prompt_style`` so the reward stage can rebuild the same prompts).
        config: Sampling settings; None = the original's.
        generator_backend: The generator role's model when it is not ``backend`` (e.g. the base
            model while the reranker runs an adapter).

    Returns:
        One record per example, in input order (format in the module docstring). If the
        backend raises, the examples are retried one by one; an example that still fails
        gets ``n`` samples carrying the exception as their ``error`` (as ``infer`` does), so
        one bad example neither stops the stage nor blocks its resumption.
    """
    config = config or SampleConfig()
    style_name = style if isinstance(style, str) else style.name
    style = load_style(style) if isinstance(style, str) else style
    backends = (backend, generator_backend or backend)

    def failed(example: Example, err: Exception) -> dict[str, Any]:
        sample = _sample_record(Selection(well_formed=False, error=error_text(err)), None)
        return {**example.model_copy(update={"passages": example.passages[: config.top_n]}).model_dump(mode="json"),
                "prompt_style": style_name, "passage_words": config.passage_words,
                "samples": [dict(sample) for _ in range(config.n)]}

    return run_isolated(lambda batch: _sample_batch(batch, backends, style, style_name, config), examples, failed,
                        what="example", log=logger)


def _sample_batch(
    examples: Sequence[Example], backends: tuple[Backend, Backend], style: PromptStyle, style_name: str,
    config: SampleConfig,
) -> list[dict[str, Any]]:
    shown = [ex.model_copy(update={"passages": ex.passages[: config.top_n]}) for ex in examples]
    reranker_backend, generator_backend = backends

    reranker = DynamicReranker(
        reranker_backend,
        style,
        window=max(config.top_n, 2),  # every example fits one window: no top-N reduction
        max_new_tokens=config.rerank_max_new_tokens,
        temperature=config.temperature,
        constrained=config.constrained,
        passage_words=config.passage_words,
    )
    samples = reranker.sample(shown, config.n, top_p=config.top_p, seed=config.seed)  # (examples, n)

    # One answer per distinct usable id list of an example; unusable outputs get none.
    job_of: dict[tuple[int, tuple[int, ...]], int] = {}
    jobs: list[tuple[int, Selection]] = []
    for e, sels in enumerate(samples):
        for sel in sels:
            key = (e, tuple(sel.ids))
            if sel.error is None and key not in job_of:
                job_of[key] = len(jobs)
                jobs.append((e, sel))
    generator = Generator(generator_backend, style, max_new_tokens=config.answer_max_new_tokens, temperature=0.0)
    answers = generator.answer([shown[e] for e, _ in jobs], [sel for _, sel in jobs])

    records = []
    for e, (ex, sels) in enumerate(zip(shown, samples)):
        record = ex.model_dump(mode="json")
        record["prompt_style"] = style_name
        record["passage_words"] = config.passage_words  # the pairs stage rebuilds the same prompt
        record["samples"] = [
            _sample_record(sel, answers[job_of[(e, tuple(sel.ids))]] if sel.error is None else None) for sel in sels
        ]
        records.append(record)
    total = sum(len(s) for s in samples)
    failed = sum(sel.error is not None for sels in samples for sel in sels)
    malformed = sum(not sel.well_formed for sels in samples for sel in sels)
    logger.info(
        "sampled %d id lists for %d examples: %d distinct answered, %d malformed, %d unusable",
        total, len(examples), len(jobs), malformed, failed,
    )
    return records


def sample_batch_fn(roles: Any, index_dir: str | None, config: SampleConfig) -> Callable[[list[Example]], list[dict]]:
    """The batch function of ``dynamicrag sample`` (see :mod:`dynamicrag.executors`): each role's
    backend (``roles``: a resolved :class:`~dynamicrag.build.PipelineConfig`) and the index load
    here, once per worker; each batch gets its candidates and is sampled."""
    from dynamicrag.build import role_backend
    from dynamicrag.pipeline import with_passages
    from dynamicrag.retrieve import load_index

    reranker, generator = role_backend(roles.reranker), role_backend(roles.generator)
    retriever = load_index(index_dir) if index_dir else None
    return lambda batch: sample_trajectories(
        with_passages(batch, retriever, config.top_n), reranker, roles.reranker.prompt_style, config,
        generator_backend=generator,
    )


def sample_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a sample output holds: ``questions``, ``samples``, ``well_formed_share``, ``mean_k``
    (of the usable samples) and ``distinct_lists`` (distinct id lists per question)."""
    samples = [s for r in records for s in r["samples"]]
    usable = [s for s in samples if s["error"] is None]
    distinct = [len({tuple(s["ids"]) for s in r["samples"]}) for r in records]
    return {
        "questions": len(records),
        "samples": len(samples),
        "well_formed_share": sum(bool(s["well_formed"]) for s in samples) / max(len(samples), 1),
        "mean_k": sum(len(s["ids"]) for s in usable) / max(len(usable), 1),
        "distinct_lists": sum(distinct) / max(len(distinct), 1),
    }
