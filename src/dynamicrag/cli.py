"""The ``dynamicrag`` command line: thin wrappers that parse options, call a stage, print a summary."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from enum import Enum
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


# Options shared by the commands that run models.
BackendOpt = typer.Option("transformers", "--backend", help="transformers | openai | vllm | llamacpp")
ModelOpt = typer.Option(None, "--model", help="HF id or path; default: the bundled SmolLM2-135M-Instruct")
BaseUrlOpt = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
BackendOptionsOpt = typer.Option(
    None, "--backend-option", help="KEY=VALUE passed to the backend, repeatable (e.g. batch_size=16, guided_decoding=grammar)"
)
StyleOpt = typer.Option("default", "--prompt-style", help="default | official (released checkpoints) | a YAML path")
RerankTokensOpt = typer.Option(
    None, "--reranker-max-tokens", help="Cap on an LLM reranker's output (default: dynamic 100 as in the paper; listwise: a full permutation)"
)
AnswerTokensOpt = typer.Option(200, "--max-new-tokens", help="Cap on the generator's answer (paper: 200)")
ConstrainedOpt = typer.Option(
    False, "--constrained/--free", help="Constrain reranker decoding to the id grammar ([i], [j] or None)"
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress display is enough


def _backend(name: str, model: str | None, base_url: str | None, options: list[str] | None = None):
    import yaml

    from dynamicrag.llm import load_backend

    kwargs: dict = {"base_url": base_url} if base_url else {}
    for option in options or []:
        key, sep, value = option.partition("=")
        if not sep or not key:
            _fail(f"--backend-option takes KEY=VALUE, got {option!r}")
        kwargs[key.strip()] = yaml.safe_load(value)  # 16 -> int, true -> bool, text stays text
    try:
        return load_backend(name, model=model, **kwargs)
    except (TypeError, ValueError) as err:
        _fail(f"backend {name!r}: {err}")


def _pipeline(
    backend, style: str, reranker: RerankerKind, retriever, top_n: int, answer_tokens: int = 200, **reranker_options
):
    from dynamicrag.generate import Generator
    from dynamicrag.pipeline import Pipeline
    from dynamicrag.prompts import load_style
    from dynamicrag.rerank import make_reranker

    prompt_style = load_style(style)
    chooser = make_reranker(reranker.value, backend, prompt_style, **reranker_options)
    generator = Generator(backend, prompt_style, max_new_tokens=answer_tokens)
    return Pipeline(chooser, generator, retriever=retriever, top_n=top_n)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _run_resumable(stage: str, items: list, output: Path, batch_size: int, process) -> int:
    """Run ``process(batch) -> records`` over the items not yet in ``output``, appending its
    records with a progress bar; a killed run resumes after the records already written.

    Returns:
        How many items this run processed.
    """
    from dynamicrag.data import ResumableJsonlWriter

    with ResumableJsonlWriter(output) as writer:
        todo = items[writer.done :]
        if writer.done:
            console.print(f"resuming: {writer.done} of {len(items)} records already in {output}")
        with Progress(
            TextColumn(stage), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        ) as progress:
            bar = progress.add_task(stage, total=len(items), completed=writer.done)
            for i in range(0, len(todo), batch_size):
                batch = todo[i : i + batch_size]
                for record in process(batch):
                    writer.write(record)
                progress.advance(bar, len(batch))
    return len(todo)


@app.command()
def index(
    corpus: list[Path] = typer.Argument(
        ..., help="Corpus files (JSONL, JSON, FlashRAG, DPR tsv, or a QA file's own passages) or folders of .md/.txt"
    ),
    out: Path = typer.Option(..., "--out", help="Index directory to write"),
    retriever: RetrieverKind = typer.Option(RetrieverKind.bm25, "--retriever"),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Dense encoder (HF id or path); default: bundled all-MiniLM-L6-v2"),
    faiss_index: str = typer.Option("flat", "--faiss-index", help="flat (exact) | hnsw | ivf (approximate)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build a persistent retrieval index over one or more CORPUS files."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_corpus
    from dynamicrag.retrieve import build_index

    start = time.perf_counter()
    try:
        passages = [p for path in corpus for p in load_corpus(path)]
    except (DataError, FileNotFoundError) as err:
        _fail(str(err))
    options = {"encoder": encoder, "faiss_index": faiss_index} if retriever is not RetrieverKind.bm25 else {}
    built = build_index(passages, out, kind=retriever.value, **options)
    console.print(
        f"indexed {len(built)} passages ({retriever.value}) into {out} in {time.perf_counter() - start:.1f} s"
    )


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
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N examples"),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per model batch"),
    backend: str = BackendOpt,
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    backend_options: Optional[list[str]] = BackendOptionsOpt,
    prompt_style: str = StyleOpt,
    constrained: bool = ConstrainedOpt,
    reranker_tokens: Optional[int] = RerankTokensOpt,
    answer_tokens: int = AnswerTokensOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Answer every question of INPUT: one output record per input record, in order."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_examples
    from dynamicrag.retrieve import load_index

    try:
        examples = load_examples(input, task=task, limit=limit)
    except (DataError, FileNotFoundError) as err:
        _fail(str(err))
    retriever = load_index(index_dir) if index_dir else None
    if retriever is None and any(not ex.passages for ex in examples) and reranker is not RerankerKind.none:
        console.print("[yellow]warning:[/yellow] some examples have no passages and no --index was given")
    llm = _backend(backend, model, base_url, backend_options)  # the generator needs it whatever the reranker
    pipeline = _pipeline(
        llm, prompt_style, reranker, retriever, top_n, answer_tokens,
        k=k, window=window, stride=stride, constrained=constrained, scorer=scorer, max_new_tokens=reranker_tokens,
    )

    start = time.perf_counter()
    ran = _run_resumable("infer", examples, output, batch_size, pipeline.run)
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
    answer_tokens: int = AnswerTokensOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Answer QUESTION from a corpus (index built once and cached), showing the chosen passages and k."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_corpus
    from dynamicrag.llm.models import cache_dir
    from dynamicrag.retrieve import build_index, load_index
    from dynamicrag.schema import Example

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
    with console.status("loading the model"):
        llm = _backend(backend, model, base_url, backend_options)
    pipeline = _pipeline(
        llm, prompt_style, RerankerKind.dynamic, searcher, top_n, answer_tokens,
        constrained=constrained, max_new_tokens=reranker_tokens,
    )
    with console.status("reranking and answering"):
        record = pipeline.run([Example(id="ask", question=question)])[0]
    if as_json:
        typer.echo(json.dumps(record, ensure_ascii=False, indent=2))
        return
    if record["error"]:
        console.print(f"[red]failed:[/red] {record['error']}")
        console.print(f"reranker output: {record['reranker_output']!r}")
        raise typer.Exit(1)
    typer.echo(record["answer"])
    table = Table(title=f"k = {len(record['selected'])} of {len(record['passages'])} retrieved")
    table.add_column("#", justify="right")
    table.add_column("title")
    table.add_column("passage")
    for rank, i in enumerate(record["selected"], 1):
        p = record["passages"][i - 1]
        table.add_row(str(rank), p["title"], p["text"][:120] + ("..." if len(p["text"]) > 120 else ""))
    console.print(table)
    console.print(f"reranker output: {record['reranker_output']!r}")


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
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run benchmarks x rerankers with one generator and write one comparison table and plots."""
    _setup_logging(verbose)
    from dynamicrag.evaluate.benchmark import default_config_path, load_config, run_benchmark

    try:
        cfg = load_config(config or default_config_path())
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
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
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N examples"),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per write"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Label the passages of every example of INPUT as relevant or not (teacher + gold answer)."""
    _setup_logging(verbose)
    from dynamicrag.data import DataError, load_examples, read_jsonl
    from dynamicrag.pipeline import with_passages
    from dynamicrag.rerank.pointwise import make_scorer
    from dynamicrag.retrieve import load_index
    from dynamicrag.train.label import LabelConfig, label_examples

    try:
        config = LabelConfig(scorer=scorer, top_n=top_n, rule=rule, threshold=threshold, top_m=top_m)
        examples = load_examples(input, task=task, limit=limit)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    retriever = load_index(index_dir) if index_dir else None
    if retriever is None and any(not ex.passages for ex in examples):
        console.print("[yellow]warning:[/yellow] some examples have no passages and no --index was given")
    with console.status(f"loading the teacher {scorer}"):
        teacher = make_scorer(scorer)

    def label_batch(batch):
        labelled = label_examples(with_passages(batch, retriever, top_n), teacher, config)
        return [ex.model_dump(mode="json") for ex in labelled]

    start = time.perf_counter()
    ran = _run_resumable("label", examples, output, batch_size, label_batch)
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
    input: Path = typer.Option(..., "--input", help="Labelled examples JSONL (the output of `dynamicrag label`)"),
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
        examples = read_labelled(input)
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


train_app = typer.Typer(help="Training stages: supervised fine-tuning (behaviour cloning + generator).", no_args_is_help=True)
app.add_typer(train_app, name="train")


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
    _setup_logging(verbose)
    from dynamicrag.train.sft import load_sft_config, train_sft

    overrides = {
        "train_file": train_file and str(train_file), "output_dir": output_dir and str(output_dir),
        "model": model, "max_steps": max_steps,
    }
    try:
        run = load_sft_config(config, **overrides)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    start = time.perf_counter()
    try:
        merged = train_sft(run)
    except (FileNotFoundError, ValueError, FloatingPointError) as err:
        _fail(str(err))
    console.print(f"merged model written to {merged} in {time.perf_counter() - start:.0f} s; use it with --model {merged}")


if __name__ == "__main__":
    app()
