"""The ``dynamicrag`` command line: thin wrappers that parse options, call a stage, print a summary."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from enum import Enum
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

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


class ExecutorKind(str, Enum):  # dynamicrag.executors.EXECUTORS
    local = "local"
    ray = "ray"


# Options shared by the commands that run models.
BackendOpt = typer.Option("transformers", "--backend", help="transformers | openai | vllm | llamacpp")
ModelOpt = typer.Option(None, "--model", help="HF id or path; default: the bundled SmolLM2-135M-Instruct")
BaseUrlOpt = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
BackendOptionsOpt = typer.Option(
    None, "--backend-option", help="KEY=VALUE passed to the backend, repeatable (e.g. batch_size=16, guided_decoding=grammar)"
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
    False, "--constrained/--free", help="Constrain reranker decoding to the id grammar ([i], [j] or None)"
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


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress display is enough


def _backend_spec(name: str, model: str | None, base_url: str | None, options: list[str] | None = None) -> dict:
    """``load_backend``'s arguments, checked here so that a bad option fails at once, before any
    model loads, wherever the stage then runs (this process or Ray workers)."""
    import inspect

    import yaml

    from dynamicrag.llm import backend_class

    kwargs: dict = {"base_url": base_url} if base_url else {}
    for option in options or []:
        key, sep, value = option.partition("=")
        if not sep or not key:
            _fail(f"--backend-option takes KEY=VALUE, got {option!r}")
        kwargs[key.strip()] = yaml.safe_load(value)  # 16 -> int, true -> bool, text stays text
    try:
        inspect.signature(backend_class(name)).bind_partial(**kwargs)
    except (TypeError, ValueError) as err:
        _fail(f"backend {name!r}: {err}")
    if model and Path(model).exists():
        model = str(Path(model).resolve())  # a Ray worker may not share this working directory
    return {"name": name, "model": model, **kwargs}


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


def _generation_config(
    max_new_tokens: int | None, no_repeat: int | None, frequency_penalty: float | None, stop: list[str] | None, labels: bool
):
    """The generator's decoding settings from the command line's options, checked at once."""
    import codecs

    from dynamicrag.generate import GenerationConfig

    stops = None
    if stop is not None:
        stops = () if [s.lower() for s in stop] == ["none"] else tuple(codecs.decode(s, "unicode_escape") for s in stop)
        if any(not s for s in stops):
            _fail("--answer-stop takes non-empty strings (or 'none')")
    try:
        return GenerationConfig(max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat,
                                frequency_penalty=frequency_penalty, stop=stops, constrain_labels=labels)
    except ValueError as err:
        _fail(str(err))


def _pipeline(
    backend, style: str, reranker: RerankerKind, retriever, top_n: int, generation=None,
    retrieve: bool = False, **reranker_options
):
    from dynamicrag.generate import GenerationConfig, Generator
    from dynamicrag.pipeline import Pipeline
    from dynamicrag.prompts import load_style
    from dynamicrag.rerank import make_reranker

    prompt_style = load_style(style)
    chooser = make_reranker(reranker.value, backend, prompt_style, **reranker_options)
    generator = Generator(backend, prompt_style, generation or GenerationConfig())
    return Pipeline(chooser, generator, retriever=retriever, top_n=top_n, retrieve=retrieve)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _executor(kind: ExecutorKind, address: str | None, workers: int, worker_gpus: float):
    from dynamicrag.executors import make_executor

    if kind is ExecutorKind.local:
        if address is not None or workers != 1 or worker_gpus:
            _fail("--ray-address, --workers and --worker-gpus need --executor ray")
        return make_executor("local")
    return make_executor("ray", address=address, num_workers=workers, num_gpus_per_worker=worker_gpus)


def _run_resumable(stage: str, items: list, output: Path, batch_size: int, fn_factory, executor) -> int:
    """Run the stage's batch function (``fn_factory()``, built where the batches run) over the
    items not yet in ``output`` on ``executor``, appending the records in input order with a
    progress bar; a killed run, local or on Ray, resumes after the records already written.

    Returns:
        How many items this run processed.
    """
    from dynamicrag.data import ResumableJsonlWriter

    with executor, ResumableJsonlWriter(output) as writer:
        _check_resumed_ids(items, writer, output)
        todo = items[writer.done :]
        if writer.done:
            console.print(f"resuming: {writer.done} of {len(items)} records already in {output}")
        with Progress(
            TextColumn(stage), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        ) as progress:
            bar = progress.add_task(stage, total=len(items), completed=writer.done)
            for records in executor.map_batches(fn_factory, todo, batch_size):
                for record in records:
                    writer.write(record)
                progress.advance(bar, len(records))
    return len(todo)


def _check_resumed_ids(items: list, writer, output: Path) -> None:
    """Resuming is by position: the records already written must be those of the first items,
    or the new records would be appended to another input's (a changed file, another --skip)."""
    for line, (written, item) in enumerate(zip(writer.ids, items), 1):
        want = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
        if written is not None and want is not None and written != str(want):
            _fail(f"{output}, line {line}: record id {written!r}, but input record {line} of this run is {want!r}: "
                  "the output was written from other input (or another --skip); choose another --output")


# The stages' batch functions are built by these factories where the batches run: in this
# process (--executor local) or once on each Ray worker. They are pickled to the workers, so
# they take only small arguments (names, paths, configs) and load models and indexes when
# called; load_backend and load_index keep one copy per process.


def _infer_fn(backend: dict, index_dir: str | None, retrieve: bool, **pipeline_options):
    from dynamicrag.llm import load_backend
    from dynamicrag.retrieve import load_index

    retriever = load_index(index_dir) if index_dir else None
    return _pipeline(load_backend(**backend), retriever=retriever, retrieve=retrieve, **pipeline_options).run


def _retrieve_fn(index_dir: str, top_n: int):
    from dynamicrag.pipeline import with_passages
    from dynamicrag.retrieve import load_index

    retriever = load_index(index_dir)
    return lambda batch: [ex.model_dump(mode="json") for ex in with_passages(batch, retriever, top_n, retrieve=True)]


def _label_fn(config, index_dir: str | None, retrieve: bool):
    from dynamicrag.pipeline import with_passages
    from dynamicrag.rerank.pointwise import make_scorer
    from dynamicrag.retrieve import load_index
    from dynamicrag.train.label import label_examples

    teacher = make_scorer(config.scorer)
    retriever = load_index(index_dir) if index_dir else None

    def label_batch(batch):
        labelled = label_examples(with_passages(batch, retriever, config.top_n, retrieve), teacher, config)
        return [ex.model_dump(mode="json") for ex in labelled]

    return label_batch


def _sample_fn(backend: dict, index_dir: str | None, prompt_style: str, config):
    from dynamicrag.llm import load_backend
    from dynamicrag.pipeline import with_passages
    from dynamicrag.retrieve import load_index
    from dynamicrag.train.sample import sample_trajectories

    llm = load_backend(**backend)
    retriever = load_index(index_dir) if index_dir else None
    return lambda batch: sample_trajectories(with_passages(batch, retriever, config.top_n), llm, prompt_style, config)


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
    top_n: int = typer.Option(40, "--top-n", help="Candidates the reranker sees"),
    window: Optional[int] = typer.Option(None, "--window", help="Passages per reranker call (dynamic: 40, listwise: 20)"),
    reranker: RerankerKind = typer.Option(RerankerKind.dynamic, "--reranker"),
    k: int = typer.Option(5, "--k", help="Passages kept by --reranker topk|pointwise|listwise"),
    scorer: str = typer.Option("embedding", "--scorer", help="Pointwise scorer: embedding | monot5:MODEL | cross-encoder:MODEL | causal:[MODEL]"),
    stride: int = typer.Option(10, "--stride", help="Listwise sliding-window step"),
    task: Optional[str] = typer.Option(None, "--task", help="Task of every example (default: detected)"),
    limit: Optional[int] = LimitOpt,
    skip: int = SkipOpt,
    retrieve: bool = RetrieveOpt,
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per model batch"),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    backend_options: Optional[list[str]] = BackendOptionsOpt,
    prompt_style: str = StyleOpt,
    constrained: bool = ConstrainedOpt,
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
    generation = _generation_config(answer_tokens, no_repeat, frequency_penalty, answer_stop, label_choices)
    from dynamicrag.data import DataError, load_examples

    try:
        examples = load_examples(input, task=task, limit=limit, skip=skip)
    except (DataError, FileNotFoundError) as err:
        _fail(str(err))
    if retrieve and index_dir is None:
        _fail("--retrieve needs --index")
    if index_dir is None and any(not ex.passages for ex in examples) and reranker is not RerankerKind.none:
        console.print("[yellow]warning:[/yellow] some examples have no passages and no --index was given")
    infer_fn = partial(
        _infer_fn, _backend_spec(backend, model, base_url, backend_options), _index_path(index_dir), retrieve,
        style=prompt_style, reranker=reranker, top_n=top_n, generation=generation,
        k=k, window=window, stride=stride, constrained=constrained, scorer=scorer, max_new_tokens=reranker_tokens,
    )

    start = time.perf_counter()
    ran = _run_resumable(
        "infer", examples, output, batch_size, infer_fn, _executor(executor, ray_address, workers, worker_gpus)
    )
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
    console.print(table)


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


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="Folder of .md/.txt files or a corpus file; default: the bundled docs"),
    top_n: int = typer.Option(10, "--top-n", help="Passages retrieved for the reranker"),
    retriever: RetrieverKind = typer.Option(RetrieverKind.bm25, "--retriever"),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    backend_options: Optional[list[str]] = BackendOptionsOpt,
    prompt_style: str = StyleOpt,
    constrained: bool = typer.Option(
        True, "--constrained/--free",
        help="Constrain reranker decoding to the id grammar (on by default: the bundled model is not trained as a reranker)",
    ),
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
    from dynamicrag.data import DataError, load_corpus
    from dynamicrag.llm import load_backend
    from dynamicrag.llm.models import cache_dir
    from dynamicrag.retrieve import build_index, load_index
    from dynamicrag.schema import Example

    generation = _generation_config(answer_tokens, no_repeat, frequency_penalty, answer_stop, True)
    corpus = corpus or default_corpus()
    if not corpus.exists():
        _fail(f"corpus not found: {corpus}")
    index_dir = cache_dir() / "indexes" / _corpus_key(corpus, retriever.value)
    if (index_dir / "meta.json").exists():
        searcher = load_index(index_dir)
    else:
        try:
            passages = load_corpus(corpus)
        except DataError as err:
            _fail(str(err))
        with console.status(f"indexing {len(passages)} passages of {corpus} (once)"):
            searcher = build_index(passages, index_dir, kind=retriever.value, show_progress=False)
    spec = _backend_spec(backend, model, base_url, backend_options)
    with console.status("loading the model"):
        try:
            llm = load_backend(**spec)
        except (TypeError, ValueError) as err:
            _fail(f"backend {backend!r}: {err}")
    pipeline = _pipeline(
        llm, prompt_style, RerankerKind.dynamic, searcher, top_n, generation,
        constrained=constrained, max_new_tokens=reranker_tokens,
    )
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
    console.print(table)
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
def evaluate(
    results: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="infer output JSONL files, one per run"),
    by: Optional[str] = typer.Option(None, "--by", help="Record field to group by, e.g. task"),
    out: Path = typer.Option(Path("evaluation"), "--out", help="Folder for evaluation.json, evaluation.md and the plots"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score infer outputs: answer and reranker metrics, k statistics, plots (failed records count as wrong)."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError
    from dynamicrag.evaluate.report import evaluate_command, render_table

    try:
        summary = evaluate_command(results, by, out)
    except (DataError, ValueError) as err:
        _fail(str(err))
    console.print(render_table(summary))
    console.print(f"wrote {out / 'evaluation.json'}, {out / 'evaluation.md'} and the plots in {out}")


@app.command()
def benchmark(
    data: Path = typer.Option(..., "--data", help="Folder the config's files are relative to (e.g. ../shared/data)"),
    out: Path = typer.Option(..., "--out", help="Output folder: runs/, indexes/, comparison.md/.json, plots"),
    config: Optional[Path] = typer.Option(None, "--config", help="Benchmark YAML; default: the shared-data comparison"),
    model: Optional[str] = typer.Option(None, "--model", help="Override the config's model (e.g. a trained checkpoint folder)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run benchmarks x rerankers with one generator and write one comparison table and plots."""
    _setup_logging(verbose)
    from dynamicrag.evaluate.benchmark import default_config_path, load_config, run_benchmark

    try:
        cfg = load_config(config or default_config_path())
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    if model:
        cfg = cfg.model_copy(update={"model": model})
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as progress:
        bars: dict[str, int] = {}

        def on_progress(run: str, done: int, total: int) -> None:
            if run not in bars:
                bars[run] = progress.add_task(run, total=total)
            progress.update(bars[run], completed=done)

        comparison = run_benchmark(cfg, data, out, on_progress)
    typer.echo((out / "comparison.md").read_text("utf-8"))
    console.print(f"wall time {time.perf_counter() - start:.0f} s; plots: {', '.join(comparison['plots'])}")


@app.command()
def label(
    input: Path = typer.Option(..., "--input", help="Training questions: any supported examples format"),
    output: Path = typer.Option(..., "--output", help="Labelled examples JSONL (resumed if it exists)"),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Index for examples without their own passages"),
    scorer: str = typer.Option("embedding", "--scorer", help="Teacher: embedding | monot5:MODEL (the paper) | cross-encoder:MODEL | causal:[MODEL]"),
    top_n: int = typer.Option(10, "--top-n", help="Passages labelled per example (the reranker's training candidates)"),
    rule: str = typer.Option("teacher_and_answer", "--rule", help="teacher_and_answer | teacher (the paper) | answer | teacher_or_answer"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Teacher score above which a passage is relevant (default by scorer: monot5 log 0.5, cross-encoder 0, embedding 0.45)"),
    top_m: Optional[int] = typer.Option(None, "--top-m", help="Only the top M teacher scores can be relevant, 0: no cap (default: embedding 3, others 0)"),
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
        config = LabelConfig(scorer=scorer, top_n=top_n, rule=rule, threshold=threshold, top_m=top_m)
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
    console.print(table)


@app.command("prepare")
def prepare_cmd(
    inputs: list[Path] = typer.Option(..., "--input", help="Labelled examples JSONL (the output of `dynamicrag label`); repeat to mix data sets"),
    out_dir: Path = typer.Option(..., "--out", help="Output folder: sft.jsonl, dpo_pool.jsonl, llamafactory/, prepare_stats.json"),
    prompt_style: str = StyleOpt,
    max_k: int = typer.Option(5, "--max-k", help="Most ids in a reranker target"),
    max_generator_passages: int = typer.Option(15, "--max-generator-passages", help="Most passages in a generator prompt (original: 15)"),
    sft_fraction: float = typer.Option(0.7, "--sft-fraction", help="Share of examples for SFT; the rest is the DPO pool"),
    seed: int = typer.Option(0, "--seed", help="Split seed (same seed, same files)"),
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
    console.print(table)


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
    prompt_style: str = StyleOpt,
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

    try:
        config = SampleConfig(
            n=n, temperature=temperature, top_n=top_n, seed=seed, constrained=constrained,
            rerank_max_new_tokens=reranker_tokens, answer_max_new_tokens=answer_tokens,
        )
        examples = load_examples(input, limit=limit, skip=skip)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    sample_fn = partial(
        _sample_fn, _backend_spec(backend, model, base_url, backend_options), _index_path(index_dir), prompt_style, config
    )

    start = time.perf_counter()
    ran = _run_resumable(
        "sample", examples, output, batch_size, sample_fn, _executor(executor, ray_address, workers, worker_gpus)
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
    console.print(table)


@app.command()
def reward(
    input: Path = typer.Option(..., "--input", help="Sampled trajectories (the output of `dynamicrag sample`)"),
    output: Path = typer.Option(..., "--output", help="The same records with a reward on every sample (resumed if it exists)"),
    config: Optional[Path] = typer.Option(None, "--config", help="Reward config (.yaml/.toml): weights, em_rule, semantic, length_penalty, judge prompt"),
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
    from dynamicrag.train.sft import read_run_config

    try:
        overrides = {"semantic": semantic}
        cfg = read_run_config(RewardConfig, config, overrides, "reward") if config else RewardConfig(
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
    for col in ("records", "samples", "mean total", "em", "semantic", "rouge_l", "length", "judge", "judge errors"):
        table.add_column(col, justify="right")

    def mean(part: str) -> str:
        values = [r[part] for r in rewards if r.get(part) is not None]
        return f"{sum(values) / len(values):.3f}" if values else "-"

    table.add_row(
        str(len(scored)), str(len(rewards)), mean("total"), mean("em"), mean("semantic"), mean("rouge_l"),
        mean("length"), mean("judge"), str(sum(r.get("judge_error") is not None for r in rewards)),
    )
    console.print(table)


@app.command()
def pairs(
    input: Path = typer.Option(..., "--input", help="Rewarded trajectories (the output of `dynamicrag reward`)"),
    out_dir: Path = typer.Option(..., "--out", help="Output folder: dpo.jsonl (TRL), llamafactory/, pairs_stats.json"),
    keep_ties: bool = typer.Option(False, "--keep-ties", help="Also build generator pairs for questions whose samples all scored the same"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build DPO preference pairs: best vs worst id list, gold vs wrong answer."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, read_jsonl
    from dynamicrag.train.pairs import export_pairs

    try:
        records = [r for _, r in read_jsonl(input)]
        stats = export_pairs(records, out_dir, skip_ties=not keep_ties)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    table = Table(title=f"pairs: {out_dir}")
    for col in ("examples", "reranker pairs", "generator pairs", "reranker skipped", "generator skipped", "mean reward gap"):
        table.add_column(col, justify="right")
    table.add_row(
        str(stats["examples"]), str(stats["reranker_pairs"]), str(stats["generator_pairs"]),
        ", ".join(f"{k} {v}" for k, v in stats["reranker_skipped"].items()) or "-",
        ", ".join(f"{k} {v}" for k, v in stats["generator_skipped"].items()) or "-",
        f"{stats['mean_reranker_reward_gap']:.3f}",
    )
    console.print(table)


def _serve_help(name: str) -> str:
    try:
        from dynamicrag.serve.app import SERVE_OPTIONS_HELP
    except ImportError:  # without the [serve] extra the other commands must still work
        return "(needs `pip install dynamicrag[serve]`)"
    return SERVE_OPTIONS_HELP[name]


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help=_serve_help("host")),
    port: int = typer.Option(8000, "--port", help=_serve_help("port")),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    index_dir: Optional[Path] = typer.Option(None, "--index", help=_serve_help("index_dir")),
    prompt_style: str = StyleOpt,
    api_key: Optional[str] = typer.Option(None, "--api-key", help=_serve_help("api_key")),
    max_passages: int = typer.Option(50, "--max-passages", help=_serve_help("max_passages")),
    max_text_chars: int = typer.Option(4000, "--max-text-chars", help=_serve_help("max_text_chars")),
    max_queue: int = typer.Option(64, "--max-queue", help=_serve_help("max_queue")),
    timeout_s: float = typer.Option(120.0, "--timeout", help=_serve_help("timeout_s")),
    max_batch: int = typer.Option(8, "--max-batch", help=_serve_help("max_batch")),
    batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", help=_serve_help("batch_wait_ms")),
    top_n: Optional[int] = typer.Option(None, "--top-n", help=_serve_help("top_n")),
    constrained: bool = typer.Option(True, "--constrained/--free", help=_serve_help("constrained")),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the reranker and the generator over HTTP: POST /v1/rerank, POST /v1/answer, GET /health."""
    _setup_logging(verbose)
    from dynamicrag.serve.app import serve_command

    try:
        serve_command(
            host=host, port=port, model=model, backend=backend, base_url=base_url, index_dir=index_dir,
            prompt_style=prompt_style, api_key=api_key, max_passages=max_passages, max_text_chars=max_text_chars,
            max_queue=max_queue, timeout_s=timeout_s, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
            constrained=constrained, top_n=top_n,
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
    console.print(f"merged model written to {merged} in {time.perf_counter() - start:.0f} s; use it with --model {merged}")


@train_app.command("sft")
def train_sft_command(
    config: Path = typer.Option(..., "--config", help="SFT config (.yaml or .toml), e.g. src/dynamicrag/train/configs/sft_smollm2_lora.yaml"),
    train_file: Optional[Path] = typer.Option(None, "--train-file", help="Override the config's TRL JSONL"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Override the config's run folder"),
    model: Optional[str] = typer.Option(None, "--model", help="Override the base model (HF id, folder or .gguf)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override the step cap (-1: all epochs)"),
    verbose: bool = typer.Option(True, "--verbose/--quiet", "-v", help="Log the trainer's loss and progress"),
) -> None:
    """Supervised fine-tuning (behaviour cloning + generator SFT); writes <output_dir>/merged."""
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
    """DPO from generator feedback (preference pairs); writes <output_dir>/merged."""
    from dynamicrag.train.dpo import load_dpo_config, train_dpo

    _train(load_dpo_config, train_dpo, config, train_file, output_dir, model, max_steps, verbose)

if __name__ == "__main__":
    app()

