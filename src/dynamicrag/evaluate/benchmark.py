"""Benchmarks x rerankers in one harness with one generator: the paper's comparison tables.

A small YAML config names the benchmarks (file, task, metrics, own passages or a corpus to
retrieve from) and the rerankers (the dynamic one and the baselines). Every (benchmark,
reranker) run is an ordinary ``infer`` output file, written resumably, so an interrupted
benchmark picks up where it stopped; the comparison table and plots are drawn from those files.

Example:
    >>> config = load_config("benchmark.yaml")  # doctest: +SKIP
    >>> summary = run_benchmark(config, data_dir=Path("../shared/data"), out_dir=Path("runs/bench"))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynamicrag.data import ResumableJsonlWriter, atomic_write_json, atomic_write_text, load_corpus, load_examples, read_jsonl
from dynamicrag.generate import GenerationConfig, Generator
from dynamicrag.llm import load_backend
from dynamicrag.pipeline import Pipeline
from dynamicrag.prompts import load_style
from dynamicrag.rerank import RERANKERS, make_reranker
from dynamicrag.retrieve import build_index, load_index

logger = logging.getLogger(__name__)


class BenchmarkSpec(BaseModel):
    """One data set of the comparison."""

    model_config = ConfigDict(extra="forbid")

    name: str
    file: str = Field(description="Examples file, relative to --data")
    task: str | None = Field(None, description="Task (decides prompts and metrics); default: detected")
    limit: int | None = Field(None, description="First N examples only (after skip)")
    skip: int = Field(0, ge=0, description="Leave out the first N examples (held-apart slices)")
    metrics: list[str] | None = Field(None, description="Answer metrics; default: the task's")
    passages: Literal["own", "corpus"] = Field("own", description="Each example's own passages, or retrieval")
    corpus: list[str] = Field(default_factory=list, description="Corpus files for passages: corpus")
    retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    top_n: int = Field(20, ge=1, description="Candidates the reranker sees")


class RerankerSpec(BaseModel):
    """One reranker of the comparison (options as in ``make_reranker``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    k: int = 5
    window: int | None = None
    stride: int = 10
    constrained: bool = False
    scorer: str = "embedding"
    max_new_tokens: int | None = None

    def model_post_init(self, _context) -> None:
        if self.kind not in RERANKERS:
            raise ValueError(f"reranker {self.name!r}: kind {self.kind!r} is not one of {sorted(RERANKERS)}")


class GenerationSpec(BaseModel):
    """The generator's decoding overrides (:class:`~dynamicrag.generate.GenerationConfig`);
    a field left out keeps each task's default."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(None, ge=1, description="Cap on every answer")
    no_repeat_ngram_size: int | None = Field(None, ge=0, description="Answer-only n-gram ban; 0: off")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Penalty per repeated answer token")
    stop: list[str] | None = Field(None, description="Strings that end an answer; []: none")
    constrain_labels: bool = Field(True, description="Label tasks (FEVER) answer with exactly one label")

    def to_config(self, answer_max_tokens: int | None = None) -> GenerationConfig:
        fields = self.model_dump()
        if fields["max_new_tokens"] is None:
            fields["max_new_tokens"] = answer_max_tokens
        if fields["stop"] is not None:
            fields["stop"] = tuple(fields["stop"])
        return GenerationConfig(**fields)


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = "transformers"
    model: str | None = None
    base_url: str | None = None
    backend_options: dict = Field(default_factory=dict, description="Passed to the backend (batch_size, ...)")
    prompt_style: str = "default"
    answer_max_tokens: int | None = Field(
        None, ge=1, description="Generator cap for every task (same as generation.max_new_tokens); default: the task's"
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="The generator's decoding")
    batch_size: int = Field(8, ge=1)
    benchmarks: list[BenchmarkSpec]
    rerankers: list[RerankerSpec]

    def generation_config(self) -> GenerationConfig:
        """The generator's decoding settings this config asks for."""
        return self.generation.to_config(self.answer_max_tokens)


def default_config_path() -> Path:
    """The shipped config: shared NQ (200 questions) and HotpotQA (100), every baseline."""
    return Path(str(resources.files("dynamicrag.evaluate").joinpath("benchmark_shared.yaml")))


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read and validate a YAML config; errors name the file and the field."""
    path = Path(path)
    try:
        config = BenchmarkConfig.model_validate(yaml.safe_load(path.read_text("utf-8")))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: field '{where}': {first['msg']}") from None
    try:
        config.generation_config()
    except ValueError as err:
        raise ValueError(f"{path}: field 'generation': {err}") from None
    return config


def _retriever(spec: BenchmarkSpec, data_dir: Path, out_dir: Path):
    index_dir = out_dir / "indexes" / spec.name
    if (index_dir / "meta.json").exists():
        return load_index(index_dir)
    passages = [p for f in spec.corpus for p in load_corpus(data_dir / f)]
    return build_index(passages, index_dir, kind=spec.retriever, show_progress=False)


def run_benchmark(
    config: BenchmarkConfig,
    data_dir: Path,
    out_dir: Path,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Run every (benchmark, reranker) pair, then evaluate and compare them.

    Args:
        config: What to run.
        data_dir: Folder the benchmark files are relative to.
        out_dir: Receives ``runs/{benchmark}/{reranker}.jsonl``, ``indexes/``, the comparison
            (``comparison.md``, ``comparison.json``) and the plots.
        on_progress: Called with (run name, done, total) after each batch.

    Returns:
        The comparison: ``{"runs": {run: evaluation}, "seconds": {run: wall seconds}}``.
    """
    from dynamicrag.evaluate.report import evaluate_records, plot_reports, to_markdown

    options = {**config.backend_options, **({"base_url": config.base_url} if config.base_url else {})}
    backend = load_backend(config.backend, model=config.model, **options)
    style = load_style(config.prompt_style)
    generator = Generator(backend, style, config.generation_config())
    summary: dict[str, dict] = {}
    records_by_run: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    for bench in config.benchmarks:
        examples = load_examples(data_dir / bench.file, task=bench.task, limit=bench.limit, skip=bench.skip)
        # From a corpus, every example retrieves; its own gold passage, if any, marks the retrieved ones.
        retrieve = bench.passages == "corpus"
        retriever = _retriever(bench, data_dir, out_dir) if retrieve else None
        for spec in config.rerankers:
            run = f"{bench.name}/{spec.name}"
            options = spec.model_dump(exclude={"name", "kind"})
            reranker = make_reranker(spec.kind, backend, style, **options)
            pipeline = Pipeline(reranker, generator, retriever, bench.top_n, retrieve=retrieve)
            path = out_dir / "runs" / bench.name / f"{spec.name}.jsonl"
            start = time.perf_counter()
            with ResumableJsonlWriter(path) as writer:
                for i in range(writer.done, len(examples), config.batch_size):
                    for record in pipeline.run(examples[i : i + config.batch_size]):
                        record.update(benchmark=bench.name, reranker=spec.name, top_n=bench.top_n)
                        if bench.metrics:
                            record["metrics"] = bench.metrics  # score_record reads it
                        writer.write(record)
                    if on_progress:
                        on_progress(run, writer.done, len(examples))
            seconds[run] = time.perf_counter() - start
            records = [r for _, r in read_jsonl(path)]
            records_by_run[run] = records
            summary[run] = evaluate_records(records)
            logger.info("%s: %d records in %.0f s", run, len(records), seconds[run])

    comparison = {"runs": summary, "seconds": seconds, "generation": generator.settings()}
    atomic_write_json(out_dir / "comparison.json", comparison)
    atomic_write_text(out_dir / "comparison.md", to_markdown(summary))
    comparison["plots"] = [str(p) for p in plot_reports(summary, records_by_run, out_dir)]
    return comparison
