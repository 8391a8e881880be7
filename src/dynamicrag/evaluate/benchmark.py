"""Benchmarks x rerankers in one harness with one generator: the paper's comparison tables.

A small YAML config names the benchmarks (file, task, metrics, own passages or a corpus to
retrieve from) and the rerankers (the dynamic one and the baselines). ``backend``, ``model``,
``base_url``, ``backend_options`` and ``prompt_style`` describe both roles; a ``reranker:`` or
``generator:`` section gives one role its own (:class:`~dynamicrag.build.RoleOptions`: backend,
model, adapter, base_url, backend_options, prompt_style), and a reranker row may name its own
``adapter`` (e.g. ``none`` for the base model next to the shipped adapter). Every (benchmark,
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

from dynamicrag.build import PipelineConfig, RoleOptions, build_pipeline, resolve_config, role_configs
from dynamicrag.data import ResumableJsonlWriter, atomic_write_json, atomic_write_text, load_corpus, load_examples, read_jsonl
from dynamicrag.rerank import RERANKERS
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
    constrained: bool | None = Field(None, description="Default: the reranker adapter's, else free")
    scorer: str = "embedding"
    max_new_tokens: int | None = None
    passage_words: int | None = Field(None, ge=0, description="Default: the reranker adapter's, else all (0)")
    adapter: str | None = Field(None, description="This row's reranker adapter (default: the reranker role's)")

    def model_post_init(self, _context) -> None:
        if self.kind not in RERANKERS:
            raise ValueError(f"reranker {self.name!r}: kind {self.kind!r} is not one of {sorted(RERANKERS)}")


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = "transformers"
    model: str | None = None
    base_url: str | None = None
    backend_options: dict = Field(default_factory=dict, description="Passed to the backend (batch_size, ...)")
    prompt_style: str | None = Field(None, description="Default: the reranker adapter's, else default")
    reranker: RoleOptions | None = Field(None, description="The reranker role's own model, adapter, backend")
    generator: RoleOptions | None = Field(None, description="The generator role's own model, adapter, backend")
    answer_max_tokens: int = Field(200, ge=1, description="Generator cap (paper: 200)")
    batch_size: int = Field(8, ge=1)
    benchmarks: list[BenchmarkSpec]
    rerankers: list[RerankerSpec]

    def pipeline_config(self, spec: RerankerSpec, bench: BenchmarkSpec) -> PipelineConfig:
        """The pipeline of one (benchmark, reranker) run, resolved (adapters found and checked)."""
        reranker = self.reranker.model_dump(exclude_none=True) if self.reranker else {}
        if spec.adapter is not None:
            reranker["adapter"] = spec.adapter
        roles = role_configs(
            backend=self.backend, model=self.model, base_url=self.base_url, backend_options=self.backend_options,
            prompt_style=self.prompt_style, reranker=reranker, generator=self.generator,
        )
        config = PipelineConfig(
            **roles, kind=spec.kind, k=spec.k, window=spec.window, stride=spec.stride, scorer=spec.scorer,
            constrained=spec.constrained, passage_words=spec.passage_words, reranker_max_tokens=spec.max_new_tokens,
            answer_max_tokens=self.answer_max_tokens, top_n=bench.top_n, retrieve=bench.passages == "corpus",
        )
        return resolve_config(config)


def default_config_path() -> Path:
    """The shipped config: shared NQ (200 questions) and HotpotQA (100), every baseline."""
    return Path(str(resources.files("dynamicrag.evaluate").joinpath("benchmark_shared.yaml")))


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read and validate a YAML config; errors name the file and the field."""
    path = Path(path)
    try:
        return BenchmarkConfig.model_validate(yaml.safe_load(path.read_text("utf-8")))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: field '{where}': {first['msg']}") from None


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

    # Resolved up front: a bad adapter or option fails before the first run starts.
    pipelines = {(b.name, r.name): config.pipeline_config(r, b) for b in config.benchmarks for r in config.rerankers}
    summary: dict[str, dict] = {}
    records_by_run: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    settings: dict[str, dict] = {}
    for bench in config.benchmarks:
        examples = load_examples(data_dir / bench.file, task=bench.task, limit=bench.limit, skip=bench.skip)
        # From a corpus, every example retrieves; its own gold passage, if any, marks the retrieved ones.
        retrieve = bench.passages == "corpus"
        retriever = _retriever(bench, data_dir, out_dir) if retrieve else None
        for spec in config.rerankers:
            run = f"{bench.name}/{spec.name}"
            # Backends are loaded once per process (load_backend): rows share the loaded models.
            pipeline = build_pipeline(pipelines[(bench.name, spec.name)], retriever)
            settings[run] = pipeline.settings
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

    comparison = {"runs": summary, "seconds": seconds, "settings": settings}
    atomic_write_json(out_dir / "comparison.json", comparison)
    atomic_write_text(out_dir / "comparison.md", to_markdown(summary))
    comparison["plots"] = [str(p) for p in plot_reports(summary, records_by_run, out_dir)]
    return comparison
