"""The ``dynamicrag`` command line: thin wrappers that parse options, call a stage, print a summary."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterator
from enum import Enum
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dynamicrag.runtime import set_thread_env_defaults

# Before anything loads torch: OpenMP reads OMP_WAIT_POLICY once (PASSIVE unless set; see
# dynamicrag.runtime and benchmarks/speed_work.py for why).
try:
    set_thread_env_defaults()
except ValueError:
    pass  # a bad $DYNAMICRAG_THREADS: the --threads option (its envvar) reports it

app = typer.Typer(
    help="DynamicRAG: retrieve, let an LLM reranker choose the passages (order and number), answer.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


class RetrieverKind(str, Enum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"


class RerankerKind(str, Enum):
    dynamic = "dynamic"
    none = "none"
    topk = "topk"
    pointwise = "pointwise"
    listwise = "listwise"
    adaptive_k = "adaptive-k"  # training-free dynamic k: the largest score gap (dynamicrag.rerank.cutoff)
    threshold = "threshold"  # training-free dynamic k: a score threshold / drop from the top score
    gold = "gold"  # the passages the data marks gold: a ceiling


class ExecutorKind(str, Enum):  # dynamicrag.executors.EXECUTORS
    local = "local"
    ray = "ray"


# Options shared by the commands that run models. In the commands with two roles (infer, ask,
# chat, serve, sample) they describe both the reranker and the generator, unless a role names its
# own backend (the role options below; dynamicrag.build.role_configs).
BackendOpt = typer.Option("transformers", "--backend", help="transformers | openai | vllm | llamacpp")
ModelOpt = typer.Option(None, "--model", help="HF id or path; default: the bundled SmolLM2-135M-Instruct")
BaseUrlOpt = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
BackendOptionsOpt = typer.Option(
    None, "--backend-option", help="KEY=VALUE passed to the backend, repeatable (e.g. batch_size=16, guided_decoding=grammar)"
)
# Each role's own model, adapter and backend (dynamicrag.build.PipelineConfig).
RerankerModelOpt = typer.Option(None, "--reranker-model", help="The reranker's model (default: --model)")
RerankerAdapterOpt = typer.Option(
    None, "--reranker-adapter",
    help="auto (default): the reranker adapter shipped for this base model, if one ships | none: the untrained "
    "base model | a LoRA adapter folder | a shipped adapter's name",
)
RerankerBackendOpt = typer.Option(None, "--reranker-backend", help="The reranker's backend (default: --backend)")
RerankerBaseUrlOpt = typer.Option(None, "--reranker-base-url", help="OpenAI-compatible server for the reranker")
GeneratorModelOpt = typer.Option(None, "--generator-model", help="The generator's model (default: --model)")
GeneratorAdapterOpt = typer.Option(
    None, "--generator-adapter", help="none (default): the base model | auto | a LoRA adapter folder | a shipped adapter's name"
)
GeneratorBackendOpt = typer.Option(
    None, "--generator-backend", help="The generator's backend (default: --backend), e.g. openai while the reranker runs here"
)
GeneratorBaseUrlOpt = typer.Option(None, "--generator-base-url", help="OpenAI-compatible server for the generator")
RoleStyleOpt = typer.Option(
    None, "--prompt-style", help="default | official (released checkpoints) | a YAML path (default: the reranker adapter's, else default)"
)
PassageWordsOpt = typer.Option(
    None, "--passage-words", min=0, help="Words of each passage shown to the reranker, 0: all (default: the reranker adapter's, else all)"
)
LimitOpt = typer.Option(None, "--limit", help="Only N examples (the first N after --skip)")
SkipOpt = typer.Option(0, "--skip", min=0, help="Leave out the first N examples (e.g. a held-apart slice)")
RetrieveOpt = typer.Option(
    False, "--retrieve", help="Retrieve from --index even for examples with their own passages (their gold marks the retrieved ones)"
)
StyleOpt = typer.Option("default", "--prompt-style", help="default | official (released checkpoints) | a YAML path")
RerankTokensOpt = typer.Option(
    None, "--reranker-max-tokens", help="Cap on an LLM reranker's output (default: dynamic 100 as in the paper; listwise: a full permutation)"
)
AnswerTokensOpt = typer.Option(200, "--max-new-tokens", help="Cap on the generator's answer (paper: 200)")
# The generator's decoding (dynamicrag.generate.GenerationConfig): unset options keep each task's default.
GenTokensOpt = typer.Option(
    None, "--max-new-tokens", min=1, help="Cap on every answer (default per task: 64 short answers, 8 labels, 200 paragraphs; paper: 200)"
)
NoRepeatOpt = typer.Option(
    None, "--no-repeat-ngram", min=0,
    help="No token n-gram of this size repeats within an answer (the passages may still be copied); 0: off. Default: 8 (labels: off)",
)
FrequencyPenaltyOpt = typer.Option(
    None, "--frequency-penalty", min=-2.0, max=2.0, help="OpenAI-style penalty per repeated answer token (default 0)"
)
AnswerStopOpt = typer.Option(
    None, "--answer-stop", help="String that ends an answer, repeatable; escapes like \\n work; 'none': no stop. Default for short answers: a paragraph break after . or !"
)
LabelsOpt = typer.Option(
    True, "--label-choices/--free-labels", help="Label tasks (FEVER) answer with exactly one label (constrained decoding)"
)
ConstrainedOpt = typer.Option(
    None, "--constrained/--free",
    help="Constrain reranker decoding to the id grammar ([i], [j] or None) (default: the reranker adapter's, else free)",
)
# The reranker prompt's word cap per passage in training data: the same in prepare, sample and inference.
TrainPassageWordsOpt = typer.Option(
    None, "--passage-words", min=1, help="Words shown of each passage in the reranker prompt (default: all); use the same cap in sample and at inference"
)
# Where the batches of infer, label, sample and reward run (dynamicrag.executors).
ExecutorOpt = typer.Option(
    ExecutorKind.local, "--executor", help="local: batches run in this process | ray: spread over Ray workers, one model copy each"
)
RayAddressOpt = typer.Option(
    None, "--ray-address", help="Ray cluster to join (auto | HOST:6379 | ray://HOST:10001); default: $RAY_ADDRESS or `ray start` here, else a new local Ray"
)
WorkersOpt = typer.Option(1, "--workers", min=1, help="Ray workers (--executor ray); each loads its own model and index")
WorkerGpusOpt = typer.Option(
    0.0, "--worker-gpus", min=0.0, help="GPUs Ray reserves per worker (--executor ray), e.g. 1 to give each model a GPU"
)


@app.callback()
def main(
    threads: Optional[int] = typer.Option(
        None, "--threads", envvar="DYNAMICRAG_THREADS", min=1,
        help="CPU threads for torch and OpenMP (default: one per core); OMP_WAIT_POLICY is PASSIVE unless set",
    ),
) -> None:
    """DynamicRAG: retrieve, let an LLM reranker choose the passages (order and number), answer."""
    if threads is not None:
        set_thread_env_defaults(threads)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress display is enough


class _StatusRelay(logging.Handler):
    """Shows the package's INFO log lines in :func:`_loading`'s status line (e.g. "Converting
    ... into a transformers checkpoint (once)"), so a long first run says what it is doing."""

    def __init__(self, show, print_warnings: bool) -> None:
        super().__init__(logging.INFO)
        self.show, self.print_warnings = show, print_warnings

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            self.show(record.getMessage())
        elif self.print_warnings:  # the package does not propagate to the root handler meanwhile
            console.print(f"[yellow]{record.levelname.lower()}:[/yellow] {record.getMessage()}")


@contextlib.contextmanager
def _loading(what: str) -> Iterator[None]:
    """A live status line (spinner, elapsed seconds) while ``what`` runs, then a line saying how
    long it took; the package's INFO log lines meanwhile show in the status line (see
    :class:`_StatusRelay`). Used while the model loads and the index loads or builds."""
    start = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(what, total=None)
        package = logging.getLogger("dynamicrag")
        quiet = package.getEffectiveLevel() > logging.INFO  # without --verbose: INFO only in the status line
        saved = package.level, package.propagate
        relay = _StatusRelay(lambda message: progress.update(task, description=f"{what}: {message[:100]}"), quiet)
        package.addHandler(relay)
        if quiet:
            package.setLevel(logging.INFO)
            package.propagate = False
        try:
            yield
        finally:
            package.removeHandler(relay)
            package.setLevel(saved[0])
            package.propagate = saved[1]
    console.print(f"[green]✓[/green] {what} ({time.perf_counter() - start:.1f} s)")


def _backend_spec(name: str, model: str | None, base_url: str | None, options: list[str] | None = None) -> dict:
    """``load_backend``'s arguments, checked here so that a bad option fails at once, before any
    model loads, wherever the stage then runs (this process or Ray workers)."""
    import inspect

    from dynamicrag.llm import backend_class

    kwargs: dict = {"base_url": base_url} if base_url else {}
    kwargs.update(_backend_options(options))
    try:
        inspect.signature(backend_class(name)).bind_partial(**kwargs)
    except (TypeError, ValueError) as err:
        _fail(f"backend {name!r}: {err}")
    if model and Path(model).exists():
        model = str(Path(model).resolve())  # a Ray worker may not share this working directory
    spec = {"name": name, "model": model, **kwargs}
    _announce_backend(spec)
    return spec


def _dtype_reason(spec: dict, what: str) -> str | None:
    """What a transformers backend of ``spec`` will run in, e.g. "bf16 (CPU has avx512_bf16)"
    (the choice the backend makes when it loads); None for other backends."""
    if spec["name"] != "transformers":
        return None
    from dynamicrag.llm.transformers_backend import choose_dtype

    try:
        return choose_dtype(spec.get("dtype", "auto"), spec.get("device", "cpu"))[1]
    except ValueError as err:
        _fail(f"{what} 'transformers': {err}")


def _announce_backend(spec: dict) -> None:
    """Print "transformers backend: <dtype and why>" for one backend spec."""
    reason = _dtype_reason(spec, "backend")
    if reason:
        console.print(f"transformers backend: {reason}")


def _announce_roles(config) -> None:
    """Print what the roles' transformers backends run in: once when both say the same, else per role."""
    from dynamicrag.build import LLM_RERANKERS

    reasons = {}
    for role in ("reranker", "generator"):
        section = getattr(config, role)
        if role == "reranker" and config.kind not in LLM_RERANKERS:
            continue  # no reranker LLM loads
        reason = _dtype_reason({"name": section.backend, **section.backend_options}, f"{role} backend")
        if reason:
            reasons[role] = reason
    if len(set(reasons.values())) == 1:
        console.print(f"transformers backend: {next(iter(reasons.values()))}")
    else:
        for role, reason in reasons.items():
            console.print(f"{role}: transformers backend: {reason}")


def _index_path(index_dir: Path | None) -> str | None:
    """The index folder, checked here and made absolute; the stage loads it where it runs."""
    if index_dir is None:
        return None
    from dynamicrag.retrieve.storage import read_meta

    try:
        read_meta(index_dir.resolve())
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    return str(index_dir.resolve())


def _backend_options(options: list[str] | None) -> dict:
    """``--backend-option KEY=VALUE`` pairs as a dict (16 -> int, true -> bool, text stays text)."""
    import yaml

    kwargs: dict = {}
    for option in options or []:
        key, sep, value = option.partition("=")
        if not sep or not key:
            _fail(f"--backend-option takes KEY=VALUE, got {option!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    return kwargs


def _pipeline_config(
    *, backend: str, model, base_url, backend_options, prompt_style, reranker_model=None, reranker_adapter=None,
    reranker_backend=None, reranker_base_url=None, generator_model=None, generator_adapter=None,
    generator_backend=None, generator_base_url=None, fallbacks: dict | None = None, **method,
):
    """The commands' role and method options as one resolved :class:`~dynamicrag.build.PipelineConfig`.

    Checked here, before any model loads (adapter folders, manifests, backend options), so a bad
    option fails at once wherever the stage then runs; ``fallbacks`` are the command's defaults
    for what neither the options nor the reranker adapter's manifest set.
    """
    from dynamicrag.build import PipelineConfig, resolve_config, role_configs

    roles = role_configs(
        backend=backend, model=model, base_url=base_url, backend_options=_backend_options(backend_options),
        prompt_style=prompt_style,
        reranker={"model": reranker_model, "adapter": reranker_adapter, "backend": reranker_backend,
                  "base_url": reranker_base_url},
        generator={"model": generator_model, "adapter": generator_adapter, "backend": generator_backend,
                   "base_url": generator_base_url},
    )
    try:
        config = resolve_config(PipelineConfig(**roles, **method), **(fallbacks or {}))
    except (FileNotFoundError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        _fail(str(err))
    for role in ("reranker", "generator"):
        adapter = getattr(config, role).adapter
        if adapter != "none":
            console.print(f"{role}: adapter {adapter}")
    _announce_roles(config)
    return config


def _generation_spec(no_repeat: int | None, frequency_penalty: float | None, stop: list[str] | None, labels: bool):
    """The generator's decoding overrides from the command line (``PipelineConfig.generation``);
    the answer cap goes to ``answer_max_tokens``. Checked with :func:`_pipeline_config`."""
    import codecs

    from dynamicrag.generate import GenerationSpec

    stops = None
    if stop is not None:
        stops = [] if [s.lower() for s in stop] == ["none"] else [codecs.decode(s, "unicode_escape") for s in stop]
        if any(not s for s in stops):
            _fail("--answer-stop takes non-empty strings (or 'none')")
    return GenerationSpec(no_repeat_ngram_size=no_repeat, frequency_penalty=frequency_penalty, stop=stops,
                          constrain_labels=labels)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _print_table(table: Table) -> None:
    """Every summary table goes through here: rich where it fits, else markdown (never cut)."""
    from dynamicrag.console_tables import print_table

    print_table(table, console)


def _executor(kind: ExecutorKind, address: str | None, workers: int, worker_gpus: float):
    from dynamicrag.executors import make_executor

    if kind is ExecutorKind.local:
        if address is not None or workers != 1 or worker_gpus:
            _fail("--ray-address, --workers and --worker-gpus need --executor ray")
        return make_executor("local")
    return make_executor("ray", address=address, num_workers=workers, num_gpus_per_worker=worker_gpus)


def _run_resumable(
    stage: str, items: list, output: Path, batch_size: int, fn_factory, executor, settings=None
) -> int:
    """:func:`dynamicrag.executors.run_resumable` with a progress bar; an output of other
    input, or of settings that decide the records differently, is an error. ``settings``: the
    run's settings, or a callable returning them (called only when there is work to do: it may
    load the models), kept in ``<output>.settings.json``. Returns how many items this run
    processed."""
    from dynamicrag.executors import ResumeError, run_resumable

    with Progress(TextColumn(stage), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as progress:
        bar = None

        def show(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                if done:
                    progress.console.print(f"resuming: {done} of {total} records already in {output}")
                bar = progress.add_task(stage, total=total, completed=done)
            progress.update(bar, completed=done)

        try:
            return run_resumable(items, output, batch_size, fn_factory, executor, settings=settings, on_progress=show)
        except ResumeError as err:
            progress.stop()
            _fail(str(err))


def _stage_settings(roles, local: bool, fn_factory=None, **sections) -> dict:
    """A stage's run settings (see :mod:`dynamicrag.run_settings`): each role's backend's
    ``describe()`` where the batches run in this process (loaded here once: ``load_backend``
    and ``load_index`` hand the same objects to the batches), with the reranker's and the
    generator's own settings when ``fn_factory()`` returns a pipeline's ``run``; on Ray, each
    role's backend spec (the workers load it). ``roles`` is the resolved pipeline config."""
    from dynamicrag.build import LLM_RERANKERS, role_backend, role_settings
    from dynamicrag.run_settings import run_settings

    specs = {}
    for role in ("reranker", "generator"):
        config = getattr(roles, role)
        specs[role] = {"name": config.backend, "model": config.model, "base_url": config.base_url,
                       "adapter": None if config.adapter == "none" else config.adapter, **config.backend_options}
    llm_reranker = roles.kind in LLM_RERANKERS
    if not llm_reranker:
        del specs["reranker"]  # no reranker LLM runs (top-k, pointwise, ...): nothing to describe
    sections = {"roles": role_settings(roles), **sections}
    if not local:
        return run_settings(backends={role: {**spec, "described": "no (loaded on the Ray workers)"}
                                      for role, spec in specs.items()}, **sections)
    try:
        backends = {role: role_backend(getattr(roles, role)) for role in specs}
        pipeline = getattr(fn_factory(), "__self__", None) if fn_factory is not None else None
    except (TypeError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    if pipeline is not None:
        sections = {"reranker": pipeline.reranker, "generator": pipeline.generator, **sections}
    return run_settings(backends=backends, **sections)


# The stages' batch functions are built by these factories where the batches run: in this
# process (--executor local) or once on each Ray worker. They are pickled to the workers, so
# they take only small arguments (names, paths, configs) and load models and indexes when
# called; load_backend and load_index keep one copy per process.


def _infer_fn(config, index_dir: str | None):
    from dynamicrag.build import build_pipeline
    from dynamicrag.retrieve import load_index

    retriever = load_index(index_dir) if index_dir else None
    return build_pipeline(config, retriever).run


def _retrieve_fn(index_dir: str, top_n: int):
    from dynamicrag.pipeline import with_passages
    from dynamicrag.retrieve import load_index

    retriever = load_index(index_dir)
    return lambda batch: [ex.model_dump(mode="json") for ex in with_passages(batch, retriever, top_n, retrieve=True)]


def _label_fn(config, index_dir: str | None, retrieve: bool):
    from dynamicrag.pipeline import with_passages
    from dynamicrag.retrieve import load_index
    from dynamicrag.train.label import label_examples, make_teacher

    teacher = make_teacher(config)
    retriever = load_index(index_dir) if index_dir else None

    def label_batch(batch):
        labelled = label_examples(with_passages(batch, retriever, config.top_n, retrieve), teacher, config)
        return [ex.model_dump(mode="json") for ex in labelled]

    return label_batch


def _sample_fn(roles, index_dir: str | None, config):
    from dynamicrag.build import role_backend
    from dynamicrag.pipeline import with_passages
    from dynamicrag.retrieve import load_index
    from dynamicrag.train.sample import sample_trajectories

    reranker, generator = role_backend(roles.reranker), role_backend(roles.generator)
    retriever = load_index(index_dir) if index_dir else None
    return lambda batch: sample_trajectories(
        with_passages(batch, retriever, config.top_n), reranker, roles.reranker.prompt_style, config,
        generator_backend=generator,
    )


def _reward_fn(config, judge: dict | None):
    from dynamicrag.llm import load_backend
    from dynamicrag.train.reward import make_semantic_scorer, score_samples

    judge_llm = load_backend(**judge) if judge else None
    scorer = make_semantic_scorer(config.semantic, config.semantic_batch_size)
    return lambda batch: score_samples(batch, config, judge_llm, semantic_scorer=scorer)


@app.command()
def index(
    corpus: list[Path] = typer.Argument(
        ..., help="Corpus files (JSONL, JSON, FlashRAG, DPR tsv, or a QA file's own passages) or folders of .md/.txt"
    ),
    out: Path = typer.Option(..., "--out", help="Index directory to write"),
    retriever: RetrieverKind = typer.Option(RetrieverKind.bm25, "--retriever"),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Dense encoder (HF id or path); default: bundled all-MiniLM-L6-v2"),
    faiss_index: str = typer.Option("flat", "--faiss-index", help="flat (exact) | hnsw | ivf (approximate)"),
    embeddings: Optional[str] = typer.Option(
        None, "--embeddings",
        help="Precomputed passage vectors (Contriever layout: a folder or glob of pickled (ids, vectors) "
        "shards, e.g. wikipedia_embeddings/passages_*): build a sharded IVF-PQ index of them, no encoding. "
        "CORPUS is then the one passage file they index (psgs_w100.tsv is streamed); --encoder names "
        "the query encoder they were made with",
    ),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="IVF cells (ivf and --embeddings); default about 4 sqrt(n)"),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF cells searched per query (ivf and --embeddings)"),
    pq_m: Optional[int] = typer.Option(None, "--pq-m", help="--embeddings: PQ sub-quantizers, a divisor of the dimension"),
    shard_size: int = typer.Option(2_000_000, "--shard-size", help="--embeddings: vectors per shard (bounds RAM while adding)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index at --out"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build a persistent retrieval index over one or more CORPUS files."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_corpus
    from dynamicrag.retrieve import build_index

    start = time.perf_counter()
    ivf = {k: v for k, v in {"nlist": nlist, "nprobe": nprobe}.items() if v is not None}
    if embeddings is not None:
        if len(corpus) != 1:
            _fail(f"--embeddings indexes one passage file; got {len(corpus)} CORPUS arguments")
        from dynamicrag.retrieve.sharded import build_sharded_index, format_estimate

        def show_estimate(est: dict) -> None:
            console.print(format_estimate(est))

        try:
            built = build_sharded_index(
                embeddings, out, passages=corpus[0], encoder=encoder, overwrite=overwrite,
                on_estimate=show_estimate, pq_m=pq_m, shard_size=shard_size, **ivf,
            )
        except (DataError, FileNotFoundError, FileExistsError, ValueError) as err:
            _fail(str(err))
        console.print(f"indexed {len(built)} passages (sharded IVF-PQ of {built.counts()['vectors']} vectors) "
                      f"into {out} in {time.perf_counter() - start:.1f} s")
        return
    try:
        passages = [p for path in corpus for p in load_corpus(path)]
    except (DataError, FileNotFoundError) as err:
        _fail(str(err))
    options = {"encoder": encoder, "faiss_index": faiss_index, **ivf} if retriever is not RetrieverKind.bm25 else {}
    try:
        built = build_index(passages, out, kind=retriever.value, overwrite=overwrite, **options)
    except (FileExistsError, ValueError) as err:
        _fail(str(err))
    console.print(
        f"indexed {len(built)} passages ({retriever.value}) into {out} in {time.perf_counter() - start:.1f} s"
    )


@app.command()
def retrieve(
    input: Path = typer.Option(..., "--input", help="Questions: any supported examples format"),
    output: Path = typer.Option(..., "--output", help="Examples with their retrieved passages, JSONL (resumed if it exists)"),
    index_dir: Path = typer.Option(..., "--index", help="Index to search"),
    top_n: int = typer.Option(50, "--top-n", min=1, help="Passages kept per question (the paper retrieves 50-500)"),
    task: Optional[str] = typer.Option(None, "--task", help="Task of every example (default: detected)"),
    limit: Optional[int] = LimitOpt,
    skip: int = SkipOpt,
    batch_size: int = typer.Option(64, "--batch-size", help="Questions per search batch and write"),
    executor: ExecutorKind = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
    workers: int = WorkersOpt,
    worker_gpus: float = WorkerGpusOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Retrieve the top-N passages of every question of INPUT once, for later stages.

    The output is an examples file whose records carry their passages, so `label`, `sample`
    and `infer` read it without an index; a question's own gold passages (NQ-open oracle)
    mark the retrieved passages that match them `isgold`.
    """
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_examples

    try:
        examples = load_examples(input, task=task, limit=limit, skip=skip)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    start = time.perf_counter()
    ran = _run_resumable(
        "retrieve", examples, output, batch_size, partial(_retrieve_fn, _index_path(index_dir), top_n),
        _executor(executor, ray_address, workers, worker_gpus),
    )
    elapsed = time.perf_counter() - start
    console.print(f"retrieved top {top_n} for {ran} questions into {output} in {elapsed:.1f} s"
                  + (f" ({ran / elapsed:.1f} questions/s)" if ran and elapsed > 0 else ""))


@app.command()
def infer(
    input: Path = typer.Option(..., "--input", help="Questions: any supported examples format"),
    output: Path = typer.Option(..., "--output", help="Results JSONL (resumed if it exists)"),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Index for examples without their own passages"),
    top_n: Optional[int] = typer.Option(
        None, "--top-n", min=1, help="Candidates the reranker sees (default: the reranker adapter's, else 40)"
    ),
    window: Optional[int] = typer.Option(None, "--window", help="Passages per reranker call (dynamic: 40, listwise: 20)"),
    reranker: RerankerKind = typer.Option(RerankerKind.dynamic, "--reranker"),
    k: int = typer.Option(5, "--k", help="Passages kept by --reranker topk|pointwise|listwise"),
    scorer: str = typer.Option("embedding", "--scorer", help="Scorer of pointwise | adaptive-k | threshold: embedding | monot5:MODEL | cross-encoder:MODEL | causal:[MODEL] | retriever (the index's scores)"),
    stride: int = typer.Option(10, "--stride", help="Listwise sliding-window step"),
    buffer: int = typer.Option(0, "--buffer", min=0, help="--reranker adaptive-k: extra passages kept below the largest score gap"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="--reranker threshold: lowest --scorer score kept"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", min=0.0, help="--reranker threshold: largest drop from the top score kept, as a share of it (0.2: within 20 %)"),
    task: Optional[str] = typer.Option(None, "--task", help="Task of every example (default: detected)"),
    limit: Optional[int] = LimitOpt,
    skip: int = SkipOpt,
    retrieve: bool = RetrieveOpt,
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per model batch"),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    backend_options: Optional[list[str]] = BackendOptionsOpt,
    reranker_model: Optional[str] = RerankerModelOpt,
    reranker_adapter: Optional[str] = RerankerAdapterOpt,
    reranker_backend: Optional[str] = RerankerBackendOpt,
    reranker_base_url: Optional[str] = RerankerBaseUrlOpt,
    generator_model: Optional[str] = GeneratorModelOpt,
    generator_adapter: Optional[str] = GeneratorAdapterOpt,
    generator_backend: Optional[str] = GeneratorBackendOpt,
    generator_base_url: Optional[str] = GeneratorBaseUrlOpt,
    prompt_style: Optional[str] = RoleStyleOpt,
    constrained: Optional[bool] = ConstrainedOpt,
    passage_words: Optional[int] = PassageWordsOpt,
    reranker_tokens: Optional[int] = RerankTokensOpt,
    answer_tokens: Optional[int] = GenTokensOpt,
    no_repeat: Optional[int] = NoRepeatOpt,
    frequency_penalty: Optional[float] = FrequencyPenaltyOpt,
    answer_stop: Optional[list[str]] = AnswerStopOpt,
    label_choices: bool = LabelsOpt,
    executor: ExecutorKind = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
    workers: int = WorkersOpt,
    worker_gpus: float = WorkerGpusOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Answer every question of INPUT: one output record per input record, in order."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_examples

    try:
        examples = load_examples(input, task=task, limit=limit, skip=skip)
    except (DataError, FileNotFoundError) as err:
        _fail(str(err))
    if retrieve and index_dir is None:
        _fail("--retrieve needs --index")
    if index_dir is None and any(not ex.passages for ex in examples) and reranker is not RerankerKind.none:
        console.print("[yellow]warning:[/yellow] some examples have no passages and no --index was given")
    if reranker is RerankerKind.threshold and threshold is None and max_drop is None:
        _fail("--reranker threshold needs --threshold, --max-drop or both")
    config = _pipeline_config(
        backend=backend, model=model, base_url=base_url, backend_options=backend_options, prompt_style=prompt_style,
        reranker_model=reranker_model, reranker_adapter=reranker_adapter, reranker_backend=reranker_backend,
        reranker_base_url=reranker_base_url, generator_model=generator_model, generator_adapter=generator_adapter,
        generator_backend=generator_backend, generator_base_url=generator_base_url,
        kind=reranker.value, k=k, window=window, stride=stride, scorer=scorer, constrained=constrained,
        passage_words=passage_words, reranker_max_tokens=reranker_tokens, answer_max_tokens=answer_tokens,
        generation=_generation_spec(no_repeat, frequency_penalty, answer_stop, label_choices),
        buffer=buffer, threshold=threshold, max_drop=max_drop,
        top_n=top_n, retrieve=retrieve, fallbacks={"top_n": 40, "constrained": False},
    )
    infer_fn = partial(_infer_fn, config, _index_path(index_dir))

    start = time.perf_counter()
    run_on = _executor(executor, ray_address, workers, worker_gpus)
    settings = partial(
        _stage_settings, config, executor is ExecutorKind.local, infer_fn,
        pipeline={**config.model_dump(exclude={"reranker", "generator"}), "index": infer_fn.args[1]},
        run={"batch_size": batch_size, "executor": executor.value, "workers": workers},
    )
    ran = _run_resumable("infer", examples, output, batch_size, infer_fn, run_on, settings=settings)
    _print_summary(output, ran, time.perf_counter() - start)


def _print_summary(output: Path, ran: int, elapsed: float) -> None:
    from dynamicrag.data import read_jsonl

    records = [r for _, r in read_jsonl(output)]
    failed = [r for r in records if r.get("error")]
    answered = [r for r in records if not r.get("error")]
    mean_k = sum(len(r["selected"]) for r in answered) / len(answered) if answered else 0.0
    table = Table(title=f"infer: {output}")
    for col in ("records", "answered", "failed", "malformed", "mean k", "s / question (this run)"):
        table.add_column(col, justify="right")
    malformed = sum(1 for r in records if r.get("well_formed") is False)
    table.add_row(
        str(len(records)), str(len(answered)), str(len(failed)), str(malformed), f"{mean_k:.2f}",
        f"{elapsed / ran:.2f}" if ran else "-",
    )
    _print_table(table)


def default_corpus() -> Path:
    """The embedded default corpus: the project's documentation, shipped inside the package."""
    return Path(str(resources.files("dynamicrag").joinpath("corpus")))


def _corpus_key(corpus: Path, kind: str) -> str:
    """Cache key of a corpus: its path, and the size and mtime of each of its files."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file()) if corpus.is_dir() else [corpus]
    h = hashlib.sha256(f"{corpus.resolve()}|{kind}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _corpus_index(corpus: Path | None, retriever: RetrieverKind):
    """The index of ``corpus`` (default: the bundled docs), built once and cached under
    ``cache_dir()/indexes`` by the corpus files' paths, sizes and times, with a status line.

    Returns:
        ``(retriever, index folder)``.
    """
    from dynamicrag.data import DataError, load_corpus
    from dynamicrag.llm.models import cache_dir
    from dynamicrag.retrieve import build_index, load_index

    name = str(corpus) if corpus else "the bundled docs"
    corpus = corpus or default_corpus()
    if not corpus.exists():
        _fail(f"corpus not found: {corpus}")
    index_dir = cache_dir() / "indexes" / _corpus_key(corpus, retriever.value)
    if (index_dir / "meta.json").exists():
        with _loading(f"loading the index of {name}"):
            return load_index(index_dir), index_dir
    try:
        passages = load_corpus(corpus)
    except DataError as err:
        _fail(str(err))
    with _loading(f"indexing {len(passages)} passages of {name} (once)"):
        return build_index(passages, index_dir, kind=retriever.value, show_progress=False), index_dir


ASK_DEFAULTS = {"top_n": 10, "constrained": True}  # ask and chat: the base model is not trained as a reranker


def _load_pipeline(config, searcher):
    """``build_pipeline(config, searcher)`` with a status line; a bad option is a clear error."""
    from dynamicrag.build import build_pipeline, models_label

    with _loading(f"loading {models_label(config)}"):
        try:
            return build_pipeline(config, searcher)
        except (TypeError, ValueError) as err:
            _fail(str(err))


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="Folder of .md/.txt files or a corpus file; default: the bundled docs"),
    top_n: Optional[int] = typer.Option(
        None, "--top-n", min=1, help="Passages retrieved for the reranker (default: the reranker adapter's, else 10)"
    ),
    retriever: RetrieverKind = typer.Option(RetrieverKind.bm25, "--retriever"),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    backend_options: Optional[list[str]] = BackendOptionsOpt,
    reranker_model: Optional[str] = RerankerModelOpt,
    reranker_adapter: Optional[str] = RerankerAdapterOpt,
    reranker_backend: Optional[str] = RerankerBackendOpt,
    reranker_base_url: Optional[str] = RerankerBaseUrlOpt,
    generator_model: Optional[str] = GeneratorModelOpt,
    generator_adapter: Optional[str] = GeneratorAdapterOpt,
    generator_backend: Optional[str] = GeneratorBackendOpt,
    generator_base_url: Optional[str] = GeneratorBaseUrlOpt,
    prompt_style: Optional[str] = RoleStyleOpt,
    constrained: Optional[bool] = typer.Option(
        None, "--constrained/--free",
        help="Constrain reranker decoding to the id grammar (default: the reranker adapter's; without one, on: "
        "the base model is not trained as a reranker)",
    ),
    passage_words: Optional[int] = PassageWordsOpt,
    reranker_tokens: Optional[int] = RerankTokensOpt,
    answer_tokens: Optional[int] = GenTokensOpt,
    no_repeat: Optional[int] = NoRepeatOpt,
    frequency_penalty: Optional[float] = FrequencyPenaltyOpt,
    answer_stop: Optional[list[str]] = AnswerStopOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Answer QUESTION from a corpus (index built once and cached), showing the chosen passages and k."""
    _setup_logging(verbose)
    from dynamicrag.schema import Example

    config = _pipeline_config(
        backend=backend, model=model, base_url=base_url, backend_options=backend_options, prompt_style=prompt_style,
        reranker_model=reranker_model, reranker_adapter=reranker_adapter, reranker_backend=reranker_backend,
        reranker_base_url=reranker_base_url, generator_model=generator_model, generator_adapter=generator_adapter,
        generator_backend=generator_backend, generator_base_url=generator_base_url,
        constrained=constrained, passage_words=passage_words, reranker_max_tokens=reranker_tokens,
        answer_max_tokens=answer_tokens, generation=_generation_spec(no_repeat, frequency_penalty, answer_stop, True),
        top_n=top_n, fallbacks=ASK_DEFAULTS,
    )
    searcher, _ = _corpus_index(corpus, retriever)
    pipeline = _load_pipeline(config, searcher)
    with console.status("reranking and answering"):
        record = pipeline.run([Example(id="ask", question=question)])[0]
    record["attribution"] = _attribution(record)
    if as_json:
        typer.echo(json.dumps(record, ensure_ascii=False, indent=2))
        return
    if record["error"]:
        console.print(f"[red]failed:[/red] {record['error']}")
        console.print(f"reranker output: {record['reranker_output']!r}")
        raise typer.Exit(1)
    typer.echo(record["answer"])
    used = {a["position"]: a for a in record["attribution"]}
    table = Table(title=f"k = {len(record['selected'])} of {len(record['passages'])} retrieved")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("title")
    table.add_column("passage")
    table.add_column("used by the answer")
    for rank, i in enumerate(record["selected"], 1):
        p = record["passages"][i - 1]
        evidence = f"yes: {used[i]['evidence'][:40]}" if i in used else ""
        table.add_row(str(rank), p["id"], p["title"], p["text"][:120] + ("..." if len(p["text"]) > 120 else ""), evidence)
    _print_table(table)
    ids = ", ".join(a["id"] for a in record["attribution"]) or "none of the chosen passages (by shared words)"
    console.print(f"answer draws on: {ids}")
    console.print(f"reranker output: {record['reranker_output']!r}")


def _attribution(record: dict) -> list[dict]:
    """The chosen passages the answer draws on (dynamicrag.attribution), as JSON: ``position``
    is 1-based into ``passages`` like ``selected``."""
    from dynamicrag.attribution import attribute
    from dynamicrag.schema import Passage

    if not record.get("answer"):
        return []
    chosen = [Passage(id=str(p["id"]), title=p.get("title", ""), text=p["text"])
              for p in (record["passages"][i - 1] for i in record["selected"])]
    found = attribute(record["answer"], chosen, record["question"])
    return [{**a.to_json(), "position": record["selected"][a.position - 1]} for a in found]


@app.command()
def chat(
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="Folder of .md/.txt files or a corpus file; default: the bundled docs"),
    top_n: Optional[int] = typer.Option(
        None, "--top-n", min=1, help="Passages retrieved for the reranker (default: the reranker adapter's, else 10)"
    ),
    retriever: RetrieverKind = typer.Option(RetrieverKind.bm25, "--retriever"),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    backend_options: Optional[list[str]] = BackendOptionsOpt,
    reranker_model: Optional[str] = RerankerModelOpt,
    reranker_adapter: Optional[str] = RerankerAdapterOpt,
    reranker_backend: Optional[str] = RerankerBackendOpt,
    reranker_base_url: Optional[str] = RerankerBaseUrlOpt,
    generator_model: Optional[str] = GeneratorModelOpt,
    generator_adapter: Optional[str] = GeneratorAdapterOpt,
    generator_backend: Optional[str] = GeneratorBackendOpt,
    generator_base_url: Optional[str] = GeneratorBaseUrlOpt,
    prompt_style: Optional[str] = RoleStyleOpt,
    constrained: Optional[bool] = typer.Option(
        None, "--constrained/--free",
        help="Constrain reranker decoding to the id grammar (default: the reranker adapter's; without one, on: "
        "the base model is not trained as a reranker)",
    ),
    passage_words: Optional[int] = PassageWordsOpt,
    reranker_tokens: Optional[int] = RerankTokensOpt,
    answer_tokens: Optional[int] = GenTokensOpt,
    no_repeat: Optional[int] = NoRepeatOpt,
    frequency_penalty: Optional[float] = FrequencyPenaltyOpt,
    answer_stop: Optional[list[str]] = AnswerStopOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Answer questions typed one after another (`ask` in a loop; the model and the index load once).

    Each turn shows the chosen passages and k, then the answer as it is written (streamed
    where the backend can). Ctrl-D, or Ctrl-C at the prompt, ends; Ctrl-C during an answer
    stops that answer.
    """
    _setup_logging(verbose)
    from dynamicrag.schema import Example

    with contextlib.suppress(ImportError):  # line editing and history at the prompt, where there is readline
        import readline  # noqa: F401

    config = _pipeline_config(  # the same pipeline as `ask`
        backend=backend, model=model, base_url=base_url, backend_options=backend_options, prompt_style=prompt_style,
        reranker_model=reranker_model, reranker_adapter=reranker_adapter, reranker_backend=reranker_backend,
        reranker_base_url=reranker_base_url, generator_model=generator_model, generator_adapter=generator_adapter,
        generator_backend=generator_backend, generator_base_url=generator_base_url,
        constrained=constrained, passage_words=passage_words, reranker_max_tokens=reranker_tokens,
        answer_max_tokens=answer_tokens, generation=_generation_spec(no_repeat, frequency_penalty, answer_stop, True),
        top_n=top_n, fallbacks=ASK_DEFAULTS,
    )
    searcher, _ = _corpus_index(corpus, retriever)
    pipeline = _load_pipeline(config, searcher)
    console.print("Type a question and press Enter; Ctrl-D quits.")
    for turn in itertools.count(1):
        try:
            question = console.input("[bold cyan]question>[/bold cyan] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not question:
            continue
        try:
            _chat_turn(pipeline, Example(id=f"chat-{turn}", question=question))
        except KeyboardInterrupt:
            typer.echo()
            console.print("[yellow]stopped[/yellow]")
        except Exception as err:  # noqa: BLE001 - one failed question must not end the session
            console.print(f"[red]failed:[/red] {type(err).__name__}: {err}")


def _chat_turn(pipeline, example) -> None:
    """One `chat` question: retrieve and rerank, show the chosen passages and k, stream the answer."""
    from dynamicrag.pipeline import with_passages

    start = time.perf_counter()
    with console.status("retrieving and reranking"):
        [example] = with_passages([example], pipeline.retriever, pipeline.top_n, pipeline.retrieve)
        [selection] = pipeline.reranker.select([example])
    rerank_s = time.perf_counter() - start
    k_line = f"k = {selection.k} of {len(example.passages)} retrieved"
    reranked = f"reranker output {selection.raw!r} in {rerank_s:.1f} s"
    if selection.ids:
        table = Table(title=k_line, caption=reranked)
        for col in ("#", "id", "title", "passage"):
            table.add_column(col, justify="right" if col == "#" else "left", overflow="fold" if col == "id" else "ellipsis")
        for rank, i in enumerate(selection.ids, 1):
            p = example.passages[i - 1]
            table.add_row(str(rank), p.id, p.title, p.text[:80] + ("..." if len(p.text) > 80 else ""))
        console.print(table)
    else:
        console.print(f"{k_line}: no passage chosen ({reranked})", highlight=False)
    if selection.error:
        console.print(f"[red]no answer:[/red] {selection.error}")
        return
    start = time.perf_counter()
    started = False
    pieces = []
    for piece in pipeline.generator.stream(example, selection):
        if not started:
            piece = piece.lstrip()  # as `ask` strips the answer
            started = bool(piece)
        pieces.append(piece)
        typer.echo(piece, nl=False)
    typer.echo()
    record = {"question": example.question, "answer": "".join(pieces).strip(), "selected": selection.ids,
              "passages": [p.model_dump() for p in example.passages]}
    ids = ", ".join(a["id"] for a in _attribution(record)) or "none of the chosen passages (by shared words)"
    console.print(f"[dim]answered in {time.perf_counter() - start:.1f} s; the answer draws on: {ids}[/dim]",
                  highlight=False)


@app.command()
def evaluate(
    results: Optional[list[Path]] = typer.Argument(None, exists=True, dir_okay=False, help="infer output JSONL files, one per run"),
    by: Optional[str] = typer.Option(None, "--by", help="Record field to group by, e.g. task"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for evaluation.json/.md, the plots, paired_comparison.* and diff.* (default: evaluation; with --diff alone, only printed)"
    ),
    baseline: Optional[Path] = typer.Option(
        None, "--baseline", exists=True, dir_okay=False,
        help="Compare every RUN with this run, paired by question id: difference, bootstrap CI, p (Holm), wins/ties/losses",
    ),
    diff: Optional[tuple[Path, Path]] = typer.Option(
        None, "--diff", exists=True, dir_okay=False,
        help="Two runs A B: list the questions A gets right and B wrong, and the reverse, with answers and selections",
    ),
    metrics: Optional[list[str]] = typer.Option(
        None, "--metric", help="Answer metric of --baseline (repeatable; default: all the task reports) and --diff (one; default: the task's main, match for open QA)"
    ),
    qrels: Optional[Path] = typer.Option(
        None, "--qrels", exists=True, dir_okay=False, help="TREC qrels (query_id 0 doc_id relevance) for the reranker metrics; query ids = record ids, doc ids = passage ids"
    ),
    resamples: int = typer.Option(2000, "--resamples", min=2000, help="Bootstrap resamples and permutations of --baseline"),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score infer outputs: answer and reranker metrics, k statistics, plots (failed records count as wrong).

    With --baseline, each run is compared with it question by question; with --diff A B, the
    questions the two runs disagree on are listed (printed, and written to --out when given).
    """
    _setup_logging(verbose)
    from dynamicrag.data import DataError

    diff_paths = [p for p in diff or () if p is not None]
    if not results and not diff_paths:
        _fail("give RUN files to evaluate, or --diff A B")
    if baseline is not None and not results:
        _fail("--baseline compares the RUN files with it: give at least one RUN")
    if diff_paths and metrics and len(metrics) > 1:
        _fail(f"--diff compares one metric, got --metric {' '.join(metrics)}")
    if results:
        from dynamicrag.evaluate.report import evaluate_report, render_table

        folder = out or Path("evaluation")
        try:
            report = evaluate_report(
                results, by, folder, qrels=qrels, baseline=baseline, metrics=metrics, resamples=resamples, seed=seed
            )
        except (DataError, ValueError) as err:
            _fail(str(err))
        _print_table(render_table(report.summary))
        if report.comparison is not None:
            from dynamicrag.evaluate.compare import LEFT_COLUMNS, comparison_rows

            headers, rows = comparison_rows(report.comparison)
            table = Table(title=f"paired comparison against {report.comparison['baseline']} (matched by question id)")
            for header in headers:
                table.add_column(header, justify="left" if header in LEFT_COLUMNS else "right")
            for row in rows:
                table.add_row(*row)
            _print_table(table)
        console.print(f"wrote {', '.join(p.name for p in report.files)} in {folder}")
    if diff_paths:
        _print_diff(diff_paths, metrics[0] if metrics else None, out)


def _print_diff(paths: list[Path], metric: str | None, out: Path | None) -> None:
    from dynamicrag.data import DataError
    from dynamicrag.evaluate.compare import MAIN, diff_markdown, diff_runs, write_diff
    from dynamicrag.evaluate.report import load_runs

    try:
        runs = load_runs(paths)
        (a_name, a), (b_name, b) = runs.items()
        result = diff_runs(a, b, metric or MAIN, a_name=a_name, b_name=b_name)
    except (DataError, ValueError) as err:
        _fail(str(err))
    typer.echo(diff_markdown(result))
    if out is not None:
        written = write_diff(result, out)
        console.print(f"wrote {', '.join(p.name for p in written)} in {out}")


@app.command()
def benchmark(
    data: Path = typer.Option(..., "--data", help="Folder the config's files are relative to (e.g. ../shared/data)"),
    out: Path = typer.Option(..., "--out", help="Output folder: runs/, indexes/, comparison.md/.json, plots"),
    config: Optional[Path] = typer.Option(None, "--config", help="Benchmark YAML; default: the shared-data comparison"),
    model: Optional[str] = typer.Option(None, "--model", help="Override the config's model (e.g. a trained checkpoint folder)"),
    reranker_adapter: Optional[str] = typer.Option(
        None, "--reranker-adapter", help="Override the config's reranker adapter (auto | none | folder | shipped name)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run benchmarks x rerankers with one generator and write one comparison table and plots."""
    _setup_logging(verbose)
    from dynamicrag.build import RoleOptions
    from dynamicrag.evaluate.benchmark import default_config_path, load_config, run_benchmark
    from dynamicrag.executors import ResumeError

    try:
        cfg = load_config(config or default_config_path())
        if model:
            cfg = cfg.model_copy(update={"model": model})
        if reranker_adapter:
            own = cfg.reranker or RoleOptions()
            cfg = cfg.model_copy(update={"reranker": own.model_copy(update={"adapter": reranker_adapter})})
        for bench, spec in cfg.runs():  # adapters and options checked before the first run
            cfg.pipeline_config(spec, bench)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as progress:
        bars: dict[str, int] = {}

        def on_progress(run: str, done: int, total: int) -> None:
            if run not in bars:
                bars[run] = progress.add_task(run, total=total)
            progress.update(bars[run], completed=done)

        try:
            comparison = run_benchmark(cfg, data, out, on_progress)
        except ResumeError as err:  # a run file of other input or settings: left as it is
            progress.stop()
            _fail(str(err))
    typer.echo((out / "comparison.md").read_text("utf-8"))
    console.print(f"wall time {time.perf_counter() - start:.0f} s; plots: {', '.join(comparison['plots'])}")


@app.command()
def label(
    input: Path = typer.Option(..., "--input", help="Training questions: any supported examples format"),
    output: Path = typer.Option(..., "--output", help="Labelled examples JSONL (resumed if it exists)"),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Index for examples without their own passages"),
    scorer: str = typer.Option("embedding", "--scorer", help="Teacher: embedding | monot5:MODEL (the paper) | cross-encoder:MODEL | causal:[MODEL] | utility[:MODEL] (the generator's likelihood of the gold answer; default the bundled SmolLM2)"),
    top_n: int = typer.Option(10, "--top-n", help="Passages labelled per example (the reranker's training candidates)"),
    rule: Optional[str] = typer.Option(None, "--rule", help="teacher_and_answer | teacher (the paper) | answer | teacher_or_answer (default: teacher for utility, else teacher_and_answer)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Teacher score above which a passage is relevant (default by scorer: monot5 log 0.5, cross-encoder 0, embedding 0.45; utility: the nats a passage must add, 1.0)"),
    top_m: Optional[int] = typer.Option(None, "--top-m", help="Only the top M teacher scores can be relevant, 0: no cap (default: embedding 3, utility 5 = the longest expert list, others 0)"),
    prompt_style: str = typer.Option("default", "--prompt-style", help="utility: the generator prompt scored (default | official | a YAML path)"),
    tie_margin: float = typer.Option(0.1, "--tie-margin", help="utility: utilities closer than this (nats) are ties, broken toward retrieval order"),
    answer_form: str = typer.Option("phrase", "--answer-form", help="utility: gold answer scored as: phrase (the answer alone) | sentence ('The answer is ...')"),
    max_answers: int = typer.Option(3, "--max-answers", help="utility: most gold answers scored per question (log-sum-exp of their likelihoods)"),
    task: Optional[str] = typer.Option(None, "--task", help="Task of every example (default: detected)"),
    limit: Optional[int] = LimitOpt,
    skip: int = SkipOpt,
    retrieve: bool = RetrieveOpt,
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per teacher batch and write"),
    executor: ExecutorKind = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
    workers: int = WorkersOpt,
    worker_gpus: float = WorkerGpusOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Label the passages of every example of INPUT as relevant or not (teacher + gold answer)."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_examples, read_jsonl
    from dynamicrag.train.label import LabelConfig

    try:
        config = LabelConfig(
            scorer=scorer, top_n=top_n, rule=rule, threshold=threshold, top_m=top_m, prompt_style=prompt_style,
            tie_margin=tie_margin, answer_form=answer_form, max_answers=max_answers,
        )
        examples = load_examples(input, task=task, limit=limit, skip=skip)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if retrieve and index_dir is None:
        _fail("--retrieve needs --index")
    if index_dir is None and any(not ex.passages for ex in examples):
        console.print("[yellow]warning:[/yellow] some examples have no passages and no --index was given")
    label_fn = partial(_label_fn, config, _index_path(index_dir), retrieve)

    start = time.perf_counter()
    ran = _run_resumable(
        "label", examples, output, batch_size, label_fn, _executor(executor, ray_address, workers, worker_gpus)
    )
    elapsed = time.perf_counter() - start

    records = [r for _, r in read_jsonl(output)]
    passages = [p["extra"] for r in records for p in r["passages"]]
    n_rel = [sum(bool(p["extra"].get("relevant")) for p in r["passages"]) for r in records]
    table = Table(title=f"label: {output} ({config.scorer}, {config.rule.value}, threshold {config.threshold:.3g}, top_m {config.top_m})")
    for col in ("examples", "passages", "teacher yes", "has answer", "relevant", "none relevant", "mean relevant", "teacher alone", "s / question (this run)"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len(records)), str(len(passages)),
        str(sum(bool(p.get("teacher_relevant")) for p in passages)),
        str(sum(p.get("has_answer") is True for p in passages)),
        str(sum(n_rel)), str(sum(n == 0 for n in n_rel)),
        f"{sum(n_rel) / len(records):.2f}" if records else "-",
        str(sum(r["extra"].get("label_rule") == "teacher" for r in records)),
        f"{elapsed / ran:.2f}" if ran else "-",
    )
    _print_table(table)
    costs = [r["extra"]["utility"] for r in records if "utility" in r.get("extra", {})]
    if costs:
        experts = [r["extra"]["expert"] for r in records if "expert" in r["extra"]]
        table = Table(title="utility teacher: expert lists and cost per question")
        for col in ("questions", "None %", "mean k", "sequences", "forward passes", "tokens run"):
            table.add_column(col, justify="right")
        mean = lambda key: sum(c["cost"].get(key, 0) for c in costs) / len(costs)  # noqa: E731
        table.add_row(
            str(len(costs)), f"{100 * sum(not e for e in experts) / len(experts):.0f}",
            f"{sum(map(len, experts)) / len(experts):.2f}", f"{mean('sequences'):.1f}",
            f"{mean('forward_passes'):.1f}", f"{mean('tokens'):.0f}",
        )
        _print_table(table)


@app.command("prepare")
def prepare_cmd(
    inputs: list[Path] = typer.Option(..., "--input", help="Labelled examples JSONL (the output of `dynamicrag label`); repeat to mix data sets"),
    out_dir: Path = typer.Option(..., "--out", help="Output folder: sft.jsonl, dpo_pool.jsonl, llamafactory/, prepare_stats.json"),
    prompt_style: str = StyleOpt,
    max_k: int = typer.Option(5, "--max-k", help="Most ids in a reranker target"),
    max_generator_passages: int = typer.Option(15, "--max-generator-passages", help="Most passages in a generator prompt (original: 15)"),
    sft_fraction: float = typer.Option(0.7, "--sft-fraction", help="Share of examples for SFT; the rest is the DPO pool"),
    seed: int = typer.Option(0, "--seed", help="Split seed (same seed, same files)"),
    passage_words: Optional[int] = TrainPassageWordsOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Split labelled examples into SFT and DPO pools; write SFT data for TRL and LLaMA-Factory."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError
    from dynamicrag.train import prepare, read_labelled

    try:
        examples = [ex for path in inputs for ex in read_labelled(path)]
        stats = prepare(
            examples, out_dir, style=prompt_style, max_k=max_k,
            max_generator_passages=max_generator_passages, sft_fraction=sft_fraction, seed=seed,
            passage_words=passage_words,
        )
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    table = Table(title=f"prepare: {out_dir}")
    for col in ("examples", "SFT", "DPO pool", "reranker records", "generator records", "None targets", "mean k", "k distribution"):
        table.add_column(col, justify="right")
    table.add_row(
        str(stats["examples"]), str(stats["sft_examples"]), str(stats["dpo_examples"]),
        str(stats["reranker_records"]), str(stats["generator_records"]), str(stats["none_targets"]),
        f"{stats['mean_k']:.2f}", " ".join(f"{k}:{n}" for k, n in stats["k_distribution"].items()),
    )
    _print_table(table)


@app.command()
def sample(
    input: Path = typer.Option(..., "--input", help="DPO-pool questions with their passages (prepare's dpo_pool.jsonl, or any examples file)"),
    output: Path = typer.Option(..., "--output", help="Sampled trajectories JSONL (resumed if it exists)"),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Index for examples without their own passages"),
    n: int = typer.Option(8, "--n", min=1, help="Id lists sampled per question (paper: 8)"),
    temperature: float = typer.Option(0.4, "--temperature", min=0.0, help="Reranker sampling temperature (original: 0.4)"),
    top_n: int = typer.Option(40, "--top-n", help="Candidates the reranker sees (paper: 40)"),
    seed: int = typer.Option(42, "--seed", help="Sampling seed"),
    limit: Optional[int] = LimitOpt,
    skip: int = SkipOpt,
    batch_size: int = typer.Option(4, "--batch-size", help="Questions per model batch (each asks for n lists)"),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    backend_options: Optional[list[str]] = BackendOptionsOpt,
    reranker_model: Optional[str] = RerankerModelOpt,
    reranker_adapter: Optional[str] = RerankerAdapterOpt,
    reranker_backend: Optional[str] = RerankerBackendOpt,
    reranker_base_url: Optional[str] = RerankerBaseUrlOpt,
    generator_model: Optional[str] = GeneratorModelOpt,
    generator_adapter: Optional[str] = GeneratorAdapterOpt,
    generator_backend: Optional[str] = GeneratorBackendOpt,
    generator_base_url: Optional[str] = GeneratorBaseUrlOpt,
    prompt_style: Optional[str] = RoleStyleOpt,
    passage_words: Optional[int] = PassageWordsOpt,
    constrained: bool = typer.Option(False, "--constrained/--free", help="Constrain the sampled id lists to the grammar (original: free)"),
    reranker_tokens: int = typer.Option(100, "--reranker-max-tokens", help="Cap on each id list (original: 100)"),
    answer_tokens: int = AnswerTokensOpt,
    executor: ExecutorKind = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
    workers: int = WorkersOpt,
    worker_gpus: float = WorkerGpusOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Sample n id lists per question from the reranker and answer each greedily (DPO data)."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_examples, read_jsonl
    from dynamicrag.train.sample import SampleConfig

    roles = _pipeline_config(
        backend=backend, model=model, base_url=base_url, backend_options=backend_options, prompt_style=prompt_style,
        reranker_model=reranker_model, reranker_adapter=reranker_adapter, reranker_backend=reranker_backend,
        reranker_base_url=reranker_base_url, generator_model=generator_model, generator_adapter=generator_adapter,
        generator_backend=generator_backend, generator_base_url=generator_base_url, passage_words=passage_words,
    )
    if roles.reranker.prompt_style != roles.generator.prompt_style:
        # The records name one style, from which the reward stage rebuilds both roles' prompts.
        _fail(f"sample runs both roles with one prompt style; the reranker's is {roles.reranker.prompt_style!r}, "
              f"the generator's {roles.generator.prompt_style!r}: give --prompt-style")
    try:
        config = SampleConfig(
            n=n, temperature=temperature, top_n=top_n, seed=seed, constrained=constrained,
            rerank_max_new_tokens=reranker_tokens, answer_max_new_tokens=answer_tokens,
            passage_words=roles.passage_words or None,
        )
        examples = load_examples(input, limit=limit, skip=skip)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    sample_fn = partial(_sample_fn, roles, _index_path(index_dir), config)

    start = time.perf_counter()
    settings = partial(
        _stage_settings, roles, executor is ExecutorKind.local, sample=config, index=sample_fn.args[1],
        run={"batch_size": batch_size, "executor": executor.value, "workers": workers},
    )
    ran = _run_resumable(
        "sample", examples, output, batch_size, sample_fn, _executor(executor, ray_address, workers, worker_gpus),
        settings=settings,
    )
    elapsed = time.perf_counter() - start
    records = [r for _, r in read_jsonl(output)]
    samples = [s for r in records for s in r["samples"]]
    distinct = [len({tuple(s["ids"]) for s in r["samples"]}) for r in records]
    table = Table(title=f"sample: {output} (n {n}, temperature {temperature})")
    for col in ("questions", "samples", "well-formed %", "mean k", "distinct lists / question", "s / question (this run)"):
        table.add_column(col, justify="right")
    usable = [s for s in samples if s["error"] is None]
    table.add_row(
        str(len(records)), str(len(samples)),
        f"{100 * sum(bool(s['well_formed']) for s in samples) / max(len(samples), 1):.1f}",
        f"{sum(len(s['ids']) for s in usable) / max(len(usable), 1):.2f}",
        f"{sum(distinct) / max(len(distinct), 1):.2f}",
        f"{elapsed / ran:.1f}" if ran else "-",
    )
    _print_table(table)


@app.command()
def reward(
    input: Path = typer.Option(..., "--input", help="Sampled trajectories (the output of `dynamicrag sample`)"),
    output: Path = typer.Option(..., "--output", help="The same records with a reward on every sample (resumed if it exists)"),
    config: Optional[Path] = typer.Option(None, "--config", help="Reward config (.yaml/.toml): weights (em, semantic, rouge_l, length, judge, match), em_rule, semantic, length_penalty, judge prompt"),
    semantic: Optional[str] = typer.Option(None, "--semantic", help="minilm (offline) | embedding:MODEL | bertscore[:MODEL] (the paper)"),
    judge_backend: Optional[str] = typer.Option(None, "--judge-backend", help="LLM judge backend (transformers | openai | vllm | llamacpp); none: no judge part"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge model (HF id, path, or the server's model name)"),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="OpenAI-compatible judge server"),
    batch_size: int = typer.Option(32, "--batch-size", help="Records per scoring batch and write"),
    executor: ExecutorKind = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
    workers: int = WorkersOpt,
    worker_gpus: float = WorkerGpusOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score every sampled answer: exact match, semantic similarity, ROUGE-L, length of k, optional judge."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, read_jsonl
    from dynamicrag.train.reward import RewardConfig
    from dynamicrag.train.common import read_config_file

    try:
        overrides = {"semantic": semantic}
        cfg = read_config_file(RewardConfig, config, overrides, "reward") if config else RewardConfig(
            **{k: v for k, v in overrides.items() if v is not None}
        )
        records = [r for _, r in read_jsonl(input)]
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    judge = _backend_spec(judge_backend, judge_model, judge_base_url) if judge_backend else None
    try:
        ran = _run_resumable(
            "reward", records, output, batch_size, partial(_reward_fn, cfg, judge),
            _executor(executor, ray_address, workers, worker_gpus),
        )
    except ValueError as err:  # a record without what the reward needs; from a Ray worker, .cause
        _fail(f"{input}: {getattr(err, 'cause', err)}")
    scored = [r for _, r in read_jsonl(output)]
    rewards = [s["reward"] for r in scored for s in r["samples"] if s.get("reward")]
    table = Table(title=f"reward: {output} ({ran} records scored in this run)")
    for col in ("records", "samples", "mean total", "em", "match", "semantic", "rouge_l", "length", "judge", "judge errors"):
        table.add_column(col, justify="right")

    def mean(part: str) -> str:
        values = [r[part] for r in rewards if r.get(part) is not None]
        return f"{sum(values) / len(values):.3f}" if values else "-"

    table.add_row(
        str(len(scored)), str(len(rewards)), mean("total"), mean("em"), mean("match"), mean("semantic"), mean("rouge_l"),
        mean("length"), mean("judge"), str(sum(r.get("judge_error") is not None for r in rewards)),
    )
    _print_table(table)


@app.command()
def pairs(
    input: Path = typer.Option(..., "--input", help="Rewarded trajectories (the output of `dynamicrag reward`)"),
    out_dir: Path = typer.Option(..., "--out", help="Output folder: dpo.jsonl (TRL), llamafactory/, pairs_stats.json"),
    keep_ties: bool = typer.Option(False, "--keep-ties", help="Also build generator pairs for questions whose samples all scored the same"),
    reward_config: Optional[Path] = typer.Option(None, "--reward-config", help="Recompute every total from the stored parts with these weights first (reward's config file; no model runs)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build DPO preference pairs: best vs worst id list, gold vs wrong answer."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, read_jsonl
    from dynamicrag.train.pairs import export_pairs
    from dynamicrag.train.reward import RewardConfig, reweight_samples
    from dynamicrag.train.common import read_config_file

    try:
        records = [r for _, r in read_jsonl(input)]
        if reward_config:
            records = reweight_samples(records, read_config_file(RewardConfig, reward_config, {}, "reward"))
        stats = export_pairs(records, out_dir, skip_ties=not keep_ties)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    table = Table(title=f"pairs: {out_dir}")
    for col in ("examples", "reranker pairs", "generator pairs", "reranker skipped", "generator skipped",
                "mean reward gap", "ties at the top", "chosen None %", "chosen shorter / longer"):
        table.add_column(col, justify="right")
    table.add_row(
        str(stats["examples"]), str(stats["reranker_pairs"]), str(stats["generator_pairs"]),
        ", ".join(f"{k} {v}" for k, v in stats["reranker_skipped"].items()) or "-",
        ", ".join(f"{k} {v}" for k, v in stats["generator_skipped"].items()) or "-",
        f"{stats['mean_reranker_reward_gap']:.3f}", str(stats["best_ties"]),
        f"{100 * stats['chosen_none_share']:.0f}", f"{stats['chosen_shorter']} / {stats['chosen_longer']}",
    )
    _print_table(table)


def _serve_help(name: str) -> str:
    from dataclasses import fields

    from dynamicrag.serve.settings import ServeSettings

    helps = {f.name: f.metadata["help"] for f in fields(ServeSettings)}
    helps.update(host="Interface to bind; loopback by default (0.0.0.0 serves other machines: set an API key)",
                 port="TCP port", index_dir="Index (from `dynamicrag index`) searched when /v1/answer gets no passages")
    return helps[name]


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help=_serve_help("host")),
    port: int = typer.Option(8000, "--port", help=_serve_help("port")),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    backend_options: Optional[list[str]] = BackendOptionsOpt,
    reranker_model: Optional[str] = RerankerModelOpt,
    reranker_adapter: Optional[str] = RerankerAdapterOpt,
    reranker_backend: Optional[str] = RerankerBackendOpt,
    reranker_base_url: Optional[str] = RerankerBaseUrlOpt,
    generator_model: Optional[str] = GeneratorModelOpt,
    generator_adapter: Optional[str] = GeneratorAdapterOpt,
    generator_backend: Optional[str] = GeneratorBackendOpt,
    generator_base_url: Optional[str] = GeneratorBaseUrlOpt,
    index_dir: Optional[Path] = typer.Option(None, "--index", help=_serve_help("index_dir")),
    corpus: Optional[Path] = typer.Option(
        None, "--corpus", help="Instead of --index: a folder of .md/.txt files or a corpus file, indexed once and cached (as `ask`)"
    ),
    prompt_style: Optional[str] = RoleStyleOpt,
    passage_words: Optional[int] = PassageWordsOpt,
    api_key: Optional[str] = typer.Option(None, "--api-key", help=_serve_help("api_key")),
    max_passages: int = typer.Option(50, "--max-passages", help=_serve_help("max_passages")),
    max_text_chars: int = typer.Option(4000, "--max-text-chars", help=_serve_help("max_text_chars")),
    max_queue: int = typer.Option(64, "--max-queue", help=_serve_help("max_queue")),
    timeout_s: float = typer.Option(120.0, "--timeout", help=_serve_help("timeout_s")),
    max_batch: int = typer.Option(8, "--max-batch", help=_serve_help("max_batch")),
    batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", help=_serve_help("batch_wait_ms")),
    top_n: Optional[int] = typer.Option(None, "--top-n", help=_serve_help("top_n")),
    constrained: Optional[bool] = typer.Option(
        None, "--constrained/--free",
        help="Constrain reranker decoding to the id grammar (default: the reranker adapter's; without one, on: "
        "the base model is not trained as a reranker)",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the reranker and the generator over HTTP: POST /v1/rerank, POST /v1/answer, GET /health,
    and a web page at / to ask questions in a browser."""
    _setup_logging(verbose)
    from dynamicrag.serve.command import serve_command
    from dynamicrag.serve.settings import SERVE_DEFAULTS

    config = _pipeline_config(
        backend=backend, model=model, base_url=base_url, backend_options=backend_options, prompt_style=prompt_style,
        reranker_model=reranker_model, reranker_adapter=reranker_adapter, reranker_backend=reranker_backend,
        reranker_base_url=reranker_base_url, generator_model=generator_model, generator_adapter=generator_adapter,
        generator_backend=generator_backend, generator_base_url=generator_base_url,
        constrained=constrained, passage_words=passage_words, top_n=top_n, fallbacks=SERVE_DEFAULTS,
    )
    if corpus is not None:
        if index_dir is not None:
            _fail("--corpus and --index exclude each other")
        _, index_dir = _corpus_index(corpus, RetrieverKind.bm25)
    try:
        serve_command(
            config, host=host, port=port, index_dir=index_dir, api_key=api_key, max_passages=max_passages,
            max_text_chars=max_text_chars, max_queue=max_queue, timeout_s=timeout_s, max_batch=max_batch,
            batch_wait_ms=batch_wait_ms, loading=_loading,
        )
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))


train_app = typer.Typer(help="Training stages: supervised fine-tuning (behaviour cloning + generator), DPO.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train(load_config, train, config: Path, train_file, output_dir, model, max_steps, verbose: bool) -> None:
    """One training stage: its config file plus command-line overrides, then the merged model."""
    _setup_logging(verbose)
    overrides = {
        "train_file": train_file and str(train_file), "output_dir": output_dir and str(output_dir),
        "model": model, "max_steps": max_steps,
    }
    try:
        run = load_config(config, **overrides)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    start = time.perf_counter()
    try:
        merged = train(run)
    except (FileNotFoundError, ValueError, FloatingPointError) as err:
        _fail(str(err))
    elapsed = time.perf_counter() - start
    if merged.name == "adapter":
        console.print(f"adapter written to {merged} in {elapsed:.0f} s")
    else:
        console.print(f"merged model written to {merged} in {elapsed:.0f} s; use it with --model {merged}")


@train_app.command("sft")
def train_sft_command(
    config: Path = typer.Option(..., "--config", help="SFT config (.yaml or .toml), e.g. src/dynamicrag/train/configs/sft_smollm2_lora.yaml"),
    train_file: Optional[Path] = typer.Option(None, "--train-file", help="Override the config's TRL JSONL"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Override the config's run folder"),
    model: Optional[str] = typer.Option(None, "--model", help="Override the base model (HF id, folder or .gguf)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override the step cap (-1: all epochs)"),
    verbose: bool = typer.Option(True, "--verbose/--quiet", "-v", help="Log the trainer's loss and progress"),
) -> None:
    """Supervised fine-tuning (behaviour cloning + generator SFT); writes <output_dir>/adapter and/or merged."""
    from dynamicrag.train.sft import load_sft_config, train_sft

    _train(load_sft_config, train_sft, config, train_file, output_dir, model, max_steps, verbose)


@train_app.command("dpo")
def train_dpo_command(
    config: Path = typer.Option(..., "--config", help="DPO config (.yaml or .toml), e.g. src/dynamicrag/train/configs/dpo_smollm2_lora.yaml"),
    train_file: Optional[Path] = typer.Option(None, "--train-file", help="Override the config's preference JSONL (pairs' dpo.jsonl)"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Override the config's run folder"),
    model: Optional[str] = typer.Option(None, "--model", help="Override the policy to start from (the SFT merged folder)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override the step cap (-1: all epochs)"),
    verbose: bool = typer.Option(True, "--verbose/--quiet", "-v", help="Log the trainer's loss and progress"),
) -> None:
    """DPO from generator feedback (preference pairs); writes <output_dir>/adapter and/or merged."""
    from dynamicrag.train.dpo import load_dpo_config, train_dpo

    _train(load_dpo_config, train_dpo, config, train_file, output_dir, model, max_steps, verbose)


@train_app.command("recipe")
def train_recipe_command(
    config: Path = typer.Option(..., "--config", help="Recipe config (.yaml or .toml), e.g. src/dynamicrag/train/configs/recipe_smollm2.yaml"),
    out: Path = typer.Option(..., "--out", help="Run folder: every stage's output, stages.json (wall times), adapter/ (with manifest.json)"),
    data: Optional[Path] = typer.Option(None, "--data", help="The shared data folder (overrides the config's data)"),
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="Last stage to run: index | label | prepare | sft | sample | reward | pairs | dpo | eval | adapter"),
    verbose: bool = typer.Option(True, "--verbose/--quiet", "-v", help="Log each stage and the trainers' progress"),
) -> None:
    """The whole recipe of the shipped adapter: label -> prepare -> SFT -> sample -> reward -> pairs -> DPO -> eval.

    Resumable: a complete stage is skipped, a partial one resumes (trainers from their last checkpoint).
    """
    import shlex

    _setup_logging(verbose)
    from dynamicrag.data import DataError
    from dynamicrag.train.recipe import load_recipe_config, run_recipe

    command = shlex.join(["dynamicrag", "train", "recipe", "--config", str(config), "--out", str(out),
                          *(["--data", str(data)] if data else [])])
    try:
        recipe = load_recipe_config(config, data=data and str(data))
        adapter = run_recipe(recipe, out, command=command, stop_after=stop_after)
    except (DataError, FileNotFoundError, ValueError, FloatingPointError) as err:
        _fail(str(err))
    stages = json.loads((out / "stages.json").read_text("utf-8"))
    table = Table(title=f"recipe: {out}")
    for col in ("stage", "state", "runs", "wall minutes"):
        table.add_column(col, justify="right")
    for name, entry in stages.items():
        table.add_row(name, entry["state"], str(entry["runs"]), f"{entry['seconds'] / 60:.1f}")
    _print_table(table)
    if adapter is not None:
        console.print(f"adapter written to {adapter} (manifest: {adapter / 'manifest.json'})")


if __name__ == "__main__":
    app()

