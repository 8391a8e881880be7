"""Benchmarks x rerankers in one harness with one generator: the paper's comparison tables.

A small YAML config names the benchmarks (file, task, metrics, own passages or a corpus to
retrieve from) and the rows: the dynamic reranker, the baselines (fixed k, pointwise,
listwise, the training-free dynamic-k cuts ``adaptive-k`` and ``threshold``) and the ceilings
(``gold``: the passages marked gold; ``oracle-k`` and ``oracle-single``, see
:mod:`dynamicrag.evaluate.ceilings`). ``backend``, ``model``, ``base_url``, ``backend_options``
and ``prompt_style`` describe both roles; a ``reranker:`` or ``generator:`` section gives one
role its own (:class:`~dynamicrag.build.RoleOptions`: backend, model, adapter, base_url,
backend_options, prompt_style), and a row may name its own reranker ``adapter`` (e.g. ``none``
for the base model next to the shipped adapter). Every row's pipeline is built by
:mod:`dynamicrag.build`, as ``infer`` builds it.

Every (benchmark, row) run is an ordinary ``infer`` output file, written resumably through the
CLI stages' runner, so an interrupted benchmark picks up where it stopped; generator answers
are cached across rows and reruns; the comparison table, its notes (oracle needs, generator
calls per row) and the plots are drawn from those files. Every row is compared with its
benchmark's best fixed k question by question (:mod:`dynamicrag.evaluate.compare`: the
difference with a paired bootstrap CI, a paired test's p, Holm-corrected; a forest plot).

Example:
    >>> config = load_config("benchmark.yaml")  # doctest: +SKIP
    >>> summary = run_benchmark(config, data_dir=Path("../shared/data"), out_dir=Path("runs/bench"))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynamicrag.build import (
    LLM_RERANKERS, NONE, PipelineConfig, RoleOptions, build_pipeline, generation_config, resolve_config, role_backend,
    role_configs, role_settings,
)
from dynamicrag.data import atomic_write_json, atomic_write_text, load_corpus, load_examples, read_jsonl
from dynamicrag.evaluate.answer_cache import AnswerCache, CachedGenerator, local_files
from dynamicrag.evaluate.ceilings import ORACLES, Oracle, oracle_summary
from dynamicrag.evaluate.compare import COMPARISON_STEM, MAIN, compare_runs, format_p, write_comparison
from dynamicrag.executors import run_resumable
from dynamicrag.generate import GenerationConfig, GenerationSpec
from dynamicrag.llm.base import Backend
from dynamicrag.pipeline import with_passages
from dynamicrag.prompts import load_style
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
    """One row of the comparison: a reranker (options as in ``make_reranker``) or an oracle.

    ``kind`` is a reranker of :data:`dynamicrag.rerank.RERANKERS` (``gold`` among them: the
    passages the data marks gold) or an oracle ceiling of
    :data:`dynamicrag.evaluate.ceilings.ORACLES` (``oracle-k``, ``oracle-single``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    k: int = 5
    window: int | None = None
    stride: int = 10
    constrained: bool | None = Field(None, description="Default: the reranker adapter's, else free")
    scorer: str = "embedding"
    max_new_tokens: int | None = None
    buffer: int = Field(0, ge=0, description="adaptive-k: extra passages below the largest score gap")
    threshold: float | None = Field(None, description="threshold: lowest score kept")
    max_drop: float | None = Field(None, ge=0, description="threshold: largest drop from the top score kept, as a share")
    own_passages: bool = Field(
        False, description="Read each example's own passages, not the retrieved ones (e.g. gold on a corpus benchmark)"
    )
    benchmarks: list[str] | None = Field(None, description="Run on these benchmarks only (default: all)")
    passage_words: int | None = Field(None, ge=0, description="Default: the reranker adapter's, else all (0)")
    adapter: str | None = Field(None, description="This row's reranker adapter (default: the reranker role's)")
    order_by: str | None = Field(
        None, description="dynamic: scorer that orders the candidates first (default: the adapter's, else none)"
    )
    continue_bias: float | None = Field(
        None, description="dynamic: logit bias on going on after an id (default: the adapter's calibrated value, else 0)"
    )

    def model_post_init(self, _context) -> None:
        if self.kind not in RERANKERS + ORACLES:
            raise ValueError(f"reranker {self.name!r}: kind {self.kind!r} is not one of {sorted(RERANKERS + ORACLES)}")
        if self.kind == "threshold" and self.threshold is None and self.max_drop is None:
            raise ValueError(f"reranker {self.name!r}: kind threshold needs threshold, max_drop or both")


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = "transformers"
    model: str | None = None
    base_url: str | None = None
    backend_options: dict = Field(default_factory=dict, description="Passed to the backend (batch_size, ...)")
    prompt_style: str | None = Field(None, description="Default: the reranker adapter's, else default")
    reranker: RoleOptions | None = Field(None, description="The reranker role's own model, adapter, backend")
    generator: RoleOptions | None = Field(None, description="The generator role's own model, adapter, backend")
    answer_max_tokens: int | None = Field(
        None, ge=1, description="Generator cap for every task (same as generation.max_new_tokens); default: the task's"
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="The generator's decoding")
    batch_size: int = Field(64, ge=1, description="Questions per model call and per write (see infer's --batch-size)")
    benchmarks: list[BenchmarkSpec]
    rerankers: list[RerankerSpec]

    def generation_config(self) -> GenerationConfig:
        """The generator's decoding settings this config asks for."""
        return self.generation.to_config(self.answer_max_tokens)

    def model_post_init(self, _context) -> None:
        names = {b.name for b in self.benchmarks}
        for spec in self.rerankers:
            unknown = sorted(set(spec.benchmarks or ()) - names)
            if unknown:
                raise ValueError(f"reranker {spec.name!r}: benchmarks {unknown} are not in the config ({sorted(names)})")

    def runs(self) -> list[tuple[BenchmarkSpec, RerankerSpec]]:
        """The (benchmark, row) pairs to run, in config order (a row's ``benchmarks`` filter applied)."""
        return [(b, r) for b in self.benchmarks for r in self.rerankers if r.benchmarks is None or b.name in r.benchmarks]

    def with_overrides(
        self, model: str | None = None, reranker_adapter: str | None = None, only: Sequence[str] = ()
    ) -> BenchmarkConfig:
        """This config with another model (both roles) or reranker adapter (``benchmark --model``,
        ``--reranker-adapter``), or with some of its benchmarks only (``--benchmark``: a long
        benchmark run in parts writes each part's comparison), every run's pipeline checked before
        the first run.

        Raises:
            ValueError: A run whose roles or options cannot be built (adapter, backend, option),
                or a name in ``only`` that is not one of the config's benchmarks.
            FileNotFoundError: An adapter folder that does not exist.
        """
        config = self
        if only:
            names = [b.name for b in self.benchmarks]
            if unknown := sorted(set(only) - set(names)):
                raise ValueError(f"benchmarks {unknown} are not in the config ({names})")
            # A row limited to benchmarks left out is dropped, not left naming a benchmark gone.
            rows = [r if r.benchmarks is None else r.model_copy(update={"benchmarks": [b for b in r.benchmarks if b in only]})
                    for r in self.rerankers if r.benchmarks is None or set(r.benchmarks) & set(only)]
            config = config.model_copy(update={"benchmarks": [b for b in self.benchmarks if b.name in only],
                                               "rerankers": rows})
        if model:
            config = config.model_copy(update={"model": model})
        if reranker_adapter:
            own = config.reranker or RoleOptions()
            config = config.model_copy(update={"reranker": own.model_copy(update={"adapter": reranker_adapter})})
        for bench, spec in config.runs():
            config.pipeline_config(spec, bench)
        return config

    def pipeline_config(self, spec: RerankerSpec, bench: BenchmarkSpec) -> PipelineConfig:
        """The pipeline of one (benchmark, row) run, resolved (adapters found and checked).

        An oracle row chooses its passages itself: only its generator role runs (its config
        says reranker kind ``none``).
        """
        reranker = self.reranker.model_dump(exclude_none=True) if self.reranker else {}
        if spec.adapter is not None:
            reranker["adapter"] = spec.adapter
        roles = role_configs(
            backend=self.backend, model=self.model, base_url=self.base_url, backend_options=self.backend_options,
            prompt_style=self.prompt_style, reranker=reranker, generator=self.generator,
        )
        config = PipelineConfig(
            **roles, kind=spec.kind if spec.kind in RERANKERS else "none", k=spec.k, window=spec.window,
            stride=spec.stride, scorer=spec.scorer, buffer=spec.buffer, threshold=spec.threshold,
            max_drop=spec.max_drop, constrained=spec.constrained, passage_words=spec.passage_words, order_by=spec.order_by,
            continue_bias=spec.continue_bias,
            reranker_max_tokens=spec.max_new_tokens, answer_max_tokens=self.answer_max_tokens,
            generation=self.generation, top_n=bench.top_n,
            # From a corpus, every example retrieves (its own gold passage, if any, marks the
            # retrieved ones); own_passages: the example's own passages instead (the gold row).
            retrieve=bench.passages == "corpus" and not spec.own_passages,
        )
        return resolve_config(config)


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


ANSWER_CACHE = "answer_cache.jsonl"


def _style_id(configured: str | None, resolved: str) -> dict:
    """A prompt style as run settings: its name as the config gives it, and its content (an
    edited prompt file is another style)."""
    style_text = json.dumps(dataclasses.asdict(load_style(resolved)), sort_keys=True, ensure_ascii=False)
    return {"name": configured, "sha256": hashlib.sha256(style_text.encode("utf-8")).hexdigest()[:16]}


def _run_settings(
    config: BenchmarkConfig, bench: BenchmarkSpec, spec: RerankerSpec, pipeline: PipelineConfig, generator: dict
) -> dict:
    """What decides a run's records; a run file written with other settings is not resumed.

    ``limit`` is left out (a longer run extends a shorter one: the ids check guards the
    order), and so are fields left at their defaults, so that a field added to the config
    later does not orphan the runs already written. ``generator`` is the answer cache's
    fingerprint of the generator role (backend, model, adapter, decoding); the prompt style
    counts by its content. A row whose reranker runs an LLM adds that role as resolved
    (backend, model, adapter and its files, prompt style, and the adapter manifest's
    constrained / passage_words / top_n where the row leaves them unset, and the dtype a
    transformers reranker computes in when not fp32, see :func:`_reranker_dtype`). The
    version, command line and threads are recorded beside them (not compared, see
    :mod:`dynamicrag.run_settings`).
    """
    from dynamicrag.run_settings import run_settings

    configured = (config.generator.prompt_style if config.generator else None) or config.prompt_style
    settings = {
        "benchmark": bench.model_dump(exclude_defaults=True, exclude={"limit"}),
        "reranker": spec.model_dump(exclude_defaults=True),
        "prompt_style": _style_id(configured, pipeline.generator.prompt_style),
        "generator": generator,
    }
    if spec.kind in LLM_RERANKERS:
        role = role_settings(pipeline)["reranker"]
        configured = (config.reranker.prompt_style if config.reranker else None) or config.prompt_style
        role.update(
            prompt_style=_style_id(configured, pipeline.reranker.prompt_style),
            options=dict(sorted(pipeline.reranker.backend_options.items())),
        )
        if role["adapter"]:
            role["adapter_files"] = local_files(role["adapter"])
        dtype = _reranker_dtype(pipeline)
        if dtype:
            role["dtype"] = dtype
        settings["reranker_role"] = role
    return {**run_settings(), **settings}


def _reranker_dtype(pipeline: PipelineConfig) -> str | None:
    """The dtype the reranker role's transformers backend will compute in, unless fp32 (left
    out, so that runs written before the dtype was recorded, all fp32 on CPU, stay valid);
    None for other backends. Found without loading: ``"auto"`` is bf16 on CPUs with native
    bf16 (transformers backend), so the configured name alone does not tell."""
    role = pipeline.reranker
    if role.backend != "transformers":
        return None
    from dynamicrag.llm.transformers_backend import choose_dtype

    options = role.backend_options
    dtype = str(choose_dtype(options.get("dtype", "auto"), options.get("device", "cpu"))[0]).removeprefix("torch.")
    return None if dtype == "float32" else dtype


def _batch_factory(
    spec: RerankerSpec, bench: BenchmarkSpec, pipeline: PipelineConfig, generator: CachedGenerator, retriever,
    backend: Backend | None,
) -> Callable[[], Callable[[list], list[dict]]]:
    """The run's batch function, built when its first batch comes (a finished run loads nothing)."""

    def build() -> Callable[[list], list[dict]]:
        if spec.kind in ORACLES:
            oracle = Oracle(spec.kind, generator)

            def answer(batch: list) -> list[dict]:
                return oracle.run(with_passages(batch, retriever, pipeline.top_n or bench.top_n, pipeline.retrieve))
        else:
            # The reranker role's backend is loaded once per process (load_backend): rows share it.
            answer = build_pipeline(pipeline, retriever, generator=generator, backend=backend).run

        def run_batch(batch: list) -> list[dict]:
            generator.take_log()  # what an earlier failed batch left
            records = answer(batch)
            made: dict[str, list[bool]] = defaultdict(list)
            for example_id, generated in generator.take_log():
                made[example_id].append(generated)
            for record in records:
                asked = made.get(record["id"], [])
                record.update(
                    benchmark=bench.name, reranker=spec.name, top_n=bench.top_n,
                    generator_calls=sum(asked), generator_reused=len(asked) - sum(asked),
                )
                if bench.metrics:
                    record["metrics"] = bench.metrics  # score_record reads it
            return records

        return run_batch

    return build


def run_benchmark(
    config: BenchmarkConfig,
    data_dir: Path,
    out_dir: Path,
    on_progress: Callable[[str, int, int], None] | None = None,
    backend: Backend | None = None,
) -> dict:
    """Run every (benchmark, reranker) pair, then evaluate and compare them.

    Every run goes through :func:`dynamicrag.executors.run_resumable`, the resume path of the
    CLI stages: an interrupted benchmark picks up where it stopped, and a run file written from
    other input or with other settings (kept in ``{run}.jsonl.settings.json``) is refused, never
    appended to. Generator answers go through one answer cache
    (``answer_cache.jsonl``, :mod:`dynamicrag.evaluate.answer_cache`), so a prompt any row
    already asked (top-k, oracle, gold rows share many) is never asked again, and a rerun
    costs nothing.

    Args:
        config: What to run.
        data_dir: Folder the benchmark files are relative to.
        out_dir: Receives ``runs/{benchmark}/{reranker}.jsonl`` (+ ``.settings.json``),
            ``indexes/``, ``answer_cache.jsonl``, the comparison (``comparison.md``,
            ``comparison.json``) and the plots.
        on_progress: Called with (run name, done, total) before the first batch and after each.
        backend: An LLM backend already loaded, used by both roles instead of the configured
            ones (a scripted one in tests).

    Returns:
        The comparison: ``{"runs": {run: evaluation}, "seconds": {run: wall seconds of this
        call}, "generator": {run: {"calls", "reused"}}, "ceilings": {run: oracle summary},
        "best_fixed_k": {benchmark: run}, "settings": {run: what plays each role},
        "plots": [...]}``.

    Raises:
        ResumeError: A run file holds records of other input or other settings.
    """
    from dynamicrag.evaluate.report import evaluate_records, plot_reports, to_markdown

    # Resolved up front: a bad adapter or option fails before the first run starts.
    pipelines = {(b.name, r.name): config.pipeline_config(r, b) for b, r in config.runs()}
    summary: dict[str, dict] = {}
    records_by_run: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    settings: dict[str, dict] = {}
    kinds: dict[str, str] = {}
    with AnswerCache(out_dir / ANSWER_CACHE) as cache:
        generators: dict[str, CachedGenerator] = {}  # one per generator role (all rows share one today)

        def generator_of(pipeline: PipelineConfig) -> CachedGenerator:
            role = pipeline.generator
            key = f"{role.model_dump_json()}|{pipeline.answer_max_tokens}|{pipeline.generation.model_dump_json()}"
            if key not in generators:
                options = {**role.backend_options, **({"base_url": role.base_url} if role.base_url else {})}
                generators[key] = CachedGenerator(
                    backend or role_backend(role), load_style(role.prompt_style),
                    generation_config(pipeline), cache=cache, backend_options=options,
                    adapter=None if role.adapter == NONE else role.adapter,
                )
            return generators[key]

        for bench in config.benchmarks:
            examples = load_examples(data_dir / bench.file, task=bench.task, limit=bench.limit, skip=bench.skip)
            retriever = _retriever(bench, data_dir, out_dir) if bench.passages == "corpus" else None
            for spec in config.rerankers:
                if (bench.name, spec.name) not in pipelines:  # the row's benchmarks leave this one out
                    continue
                run = f"{bench.name}/{spec.name}"
                kinds[run] = spec.kind
                pipeline = pipelines[(bench.name, spec.name)]
                generator = generator_of(pipeline)
                roles = role_settings(pipeline)
                settings[run] = roles if spec.kind not in ORACLES else {
                    "reranker": {"kind": spec.kind}, "generator": roles["generator"]}
                path = out_dir / "runs" / bench.name / f"{spec.name}.jsonl"
                start = time.perf_counter()
                run_resumable(
                    examples, path, config.batch_size,
                    _batch_factory(spec, bench, pipeline, generator, retriever, backend),
                    settings=_run_settings(config, bench, spec, pipeline, generator.fingerprint),
                    on_progress=(lambda done, total, run=run: on_progress(run, done, total)) if on_progress else None,
                )
                seconds[run] = time.perf_counter() - start
                records_by_run[run] = [r for _, r in read_jsonl(path)]
                summary[run] = evaluate_records(records_by_run[run])
                logger.info("%s: %d records in %.0f s", run, len(records_by_run[run]), seconds[run])

    costs = {run: generator_costs(records) for run, records in records_by_run.items()}
    ceilings = {run: oracle_summary(records) for run, records in records_by_run.items() if kinds[run] in ORACLES}
    best = best_fixed_k(summary, kinds)
    paired = paired_with_best_fixed_k(records_by_run, best)
    comparison = {
        "runs": summary, "seconds": seconds, "generator": costs, "ceilings": ceilings,
        "best_fixed_k": best, "paired": paired, "settings": settings,
        "generation": config.generation_config().to_dict(),  # the generator's decoding, per task
    }
    forest = [path for bench, result in paired.items()
              for path in write_comparison(result, out_dir, stem=f"{COMPARISON_STEM}_{bench}") if path.suffix == ".png"]
    atomic_write_json(out_dir / "comparison.json", comparison)
    markdown = to_markdown(summary, paired_columns(paired)) + paired_note(paired, forest)
    markdown += ceilings_markdown(ceilings, costs, kinds)
    atomic_write_text(out_dir / "comparison.md", markdown)
    comparison["plots"] = [str(p) for p in [*plot_reports(summary, records_by_run, out_dir), *forest]]
    return comparison


DELTA_COLUMN = "Δ vs best fixed k [95 % CI]"


def paired_with_best_fixed_k(records_by_run: dict[str, list[dict]], best: dict[str, str]) -> dict[str, dict]:
    """Per benchmark, every run compared with its best fixed-k run, question by question.

    Args:
        records_by_run: Run name (``benchmark/row``) -> its records.
        best: Benchmark -> its best fixed-k run (:func:`best_fixed_k`); a benchmark without
            one is not compared.

    Returns:
        Benchmark -> :func:`dynamicrag.evaluate.compare.compare_runs` on each record's headline
        metric (``main``: match for short-answer QA), p-values Holm-corrected across the
        benchmark's other runs (the best fixed k is the baseline, not one of the runs).
        A benchmark whose only run is its best fixed k is left out.
    """
    out = {}
    for bench, baseline in best.items():
        runs = {run: records for run, records in records_by_run.items()
                if run.split("/", 1)[0] == bench and run != baseline}
        if runs:
            out[bench] = compare_runs(records_by_run[baseline], runs, metrics=[MAIN], baseline_name=baseline)
    return out


def paired_columns(paired: dict[str, dict]) -> dict[str, dict[str, str]]:
    """The main table's columns of :func:`paired_with_best_fixed_k`: the difference with its
    interval, the p-value and its Holm correction, per run."""
    columns: dict[str, dict[str, str]] = {DELTA_COLUMN: {}, "p": {}, "p Holm": {}}
    for result in paired.values():
        columns[DELTA_COLUMN][result["baseline"]] = "(baseline)"
        for run, compared in result["runs"].items():
            stats = compared["metrics"][MAIN]
            low, high = stats["ci"]
            columns[DELTA_COLUMN][run] = f"{stats['diff']:+.3f} [{low:+.3f}, {high:+.3f}]"
            columns["p"][run] = format_p(stats["p"])
            columns["p Holm"][run] = format_p(stats["p_holm"])
    return columns


def paired_note(paired: dict[str, dict], plots: list[Path]) -> str:
    """What the paired columns of the main table mean, and where their forest plots are."""
    if not paired:
        return ""
    first = next(iter(paired.values()))
    baselines = ", ".join(f"`{r['baseline']}`" for r in paired.values())
    metric = "/".join(sorted({label for r in paired.values() for label in r["labels"].values()}))
    return (
        f"\n{DELTA_COLUMN}: the run's headline metric ({metric}) minus "
        f"that of its benchmark's best fixed-k run ({baselines}), on the same questions matched by id; CI: paired "
        f"bootstrap ({first['resamples']} resamples, seed {first['seed']}); p: exact McNemar for 0/1 scores, else a "
        "paired permutation test; p Holm: Holm-corrected across the benchmark's runs. Forest plots: "
        + ", ".join(f"`{p.name}`" for p in plots) + ".\n"
    )


def load_run_records(config: BenchmarkConfig, out_dir: Path) -> dict[str, list[dict]]:
    """The records of every run of ``config`` already written under ``out_dir`` (run name ->
    records, in config order); runs without a file are left out."""
    runs = {}
    for bench, spec in config.runs():
        path = Path(out_dir) / "runs" / bench.name / f"{spec.name}.jsonl"
        if path.exists():
            runs[f"{bench.name}/{spec.name}"] = [r for _, r in read_jsonl(path)]
    return runs


def generator_costs(records: list[dict]) -> dict[str, int]:
    """Generator prompts a run asked the backend (``calls``) and took from the cache
    (``reused``), summed over its records (records written before the cache count neither)."""
    return {
        "calls": sum(int(r.get("generator_calls") or 0) for r in records),
        "reused": sum(int(r.get("generator_reused") or 0) for r in records),
    }


def best_fixed_k(summary: dict[str, dict], kinds: dict[str, str]) -> dict[str, str]:
    """Per benchmark, the fixed-k run (``topk``) with the highest headline score (the first of
    equal ones): the baseline the other rows are compared with."""
    best: dict[str, str] = {}
    for run, evaluation in summary.items():
        bench = run.split("/", 1)[0]
        if kinds.get(run) == "topk" and (bench not in best or evaluation["main_score"] > summary[best[bench]]["main_score"]):
            best[bench] = run
    return best


def ceilings_markdown(ceilings: dict[str, dict], costs: dict[str, dict], kinds: dict[str, str]) -> str:
    """The table's notes: what each oracle row needed, and every row's generator cost."""
    out = ""
    if ceilings:
        out += "\n### Oracle ceilings\n\n"
        out += "| run | score | answered | unanswerable | k needed (k: questions) | or no passage |\n"
        out += "|---|---:|---:|---:|---|---:|\n"
        for run, c in ceilings.items():
            k_needed = ", ".join(f"{k}: {n}" for k, n in c["k_needed"].items()) or "-"
            no_passage = f"{c['or_no_passage']:.3f}" if "or_no_passage" in c else "-"
            out += f"| {run} | {c['score']:.3f} | {c['answered']} | {c['unanswerable']} | {k_needed} | {no_passage} |\n"
        out += (
            "\nOracles choose per question, knowing the answer, by the headline metric: oracle-k among the "
            "prefixes k = 0..N of the retrieved list (k needed: the smallest k that answers), oracle-single "
            "among the single passages (or no passage: the answer without passages may be chosen too).\n"
        )
    if costs:
        out += "\n### Generator calls (asked / reused from the answer cache)\n\n| run | kind | asked | reused |\n|---|---|---:|---:|\n"
        out += "".join(f"| {run} | {kinds[run]} | {c['calls']} | {c['reused']} |\n" for run, c in costs.items())
    return out
