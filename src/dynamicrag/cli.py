"""The ``dynamicrag`` command line: each command parses its options, calls its stage, prints.

The options shared by several commands, and those generated from the stages' config classes,
are in :mod:`dynamicrag.cli_options`; what is printed (status lines, progress bars, tables) in
:mod:`dynamicrag.console`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import typer

from dynamicrag.runtime import set_thread_env_defaults

# Before anything loads torch: OpenMP reads OMP_WAIT_POLICY once (PASSIVE unless set; see
# dynamicrag.runtime and benchmarks/speed_work.py for why).
with contextlib.suppress(ValueError):  # a bad $DYNAMICRAG_THREADS: the --threads option (its envvar) reports it
    set_thread_env_defaults()

from dynamicrag.cli_options import (  # noqa: E402 - after the thread environment
    ASK_METHOD, EXAMPLES, EXECUTOR, OUTPUT, ROLES, VERBOSE, batch_size_option, checked_examples, config_options,
    decoding_options, index_option, pipeline_options, resolve_pipeline, with_options,
)
from dynamicrag.cli_train import STAGE_COMMANDS, train_app  # noqa: E402
from dynamicrag.console import (  # noqa: E402
    announce_dtypes, console, fail, failing, loading, run_stage, run_with_progress, runs_progress, show_answer,
    show_chosen, show_stats, show_table,
)
from dynamicrag.serve.keep_alive import DEFAULT_KEEP_ALIVE, KEEP_ALIVE_ENV  # noqa: E402
from dynamicrag.serve.settings import API_KEY_ENV, SERVE_DEFAULTS, ServeSettings  # noqa: E402

app = typer.Typer(help="DynamicRAG: retrieve, let an LLM reranker choose the passages (order and number), answer.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)

# Set by the commands that write nothing once they have printed (ask, chat): see run().
_SKIP_TEARDOWN = False


def run() -> None:
    """The ``dynamicrag`` console script: the Typer app, and after ``ask`` or ``chat`` an exit
    that skips the interpreter's teardown.

    Freeing a loaded model's objects and the thousands of modules torch and transformers import
    took 1.4 s after a warm ``ask`` had printed its answer (``os._exit`` then: 0.09 s); a warm
    ``ask`` takes 9.7 s this way against 10.8 s (benchmarks/README.md, cold_start section; 2
    cores). Those two commands have nothing left to write by
    then (the model conversion and the index were written, atomically, before the answer), so
    logging is shut down (its handlers flushed), the streams are flushed and the process ends
    with the command's exit code. Every other command exits the normal way.
    """
    try:
        app()
    except SystemExit as done:
        if not _SKIP_TEARDOWN:
            raise
        code = done.code
    else:  # not reached in standalone mode, which always ends in SystemExit
        code = 0
    if isinstance(code, str):  # SystemExit("message"): printed, exit status 1, as the interpreter does
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _skip_teardown() -> None:
    global _SKIP_TEARDOWN
    _SKIP_TEARDOWN = True


CORPUS = typer.Option(None, "--corpus", help="Folder of .md/.txt files or a corpus file (indexed once, cached); default: the bundled docs")
ASKED = dict(roles=ROLES, method=pipeline_options(*ASK_METHOD), decoding=decoding_options(labels=False), logs=VERBOSE)


@app.callback()
def main(threads: Optional[int] = typer.Option(None, "--threads", envvar="DYNAMICRAG_THREADS", min=1,
                                               help="CPU threads for torch and OpenMP (default: one per core); "
                                               "OMP_WAIT_POLICY is PASSIVE unless set")) -> None:
    """DynamicRAG: retrieve, let an LLM reranker choose the passages (order and number), answer."""
    if threads is not None:
        set_thread_env_defaults(threads)


@app.command()
@with_options(logs=VERBOSE)
def index(
    corpus: list[Path] = typer.Argument(..., help="Corpus files (JSONL, JSON, FlashRAG, DPR tsv, or a QA file's own passages) or folders of .md/.txt"),
    out: Path = typer.Option(..., "--out", help="Index directory to write"),
    retriever: str = typer.Option("bm25", "--retriever", help="bm25 | dense | hybrid"),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Dense encoder (HF id or path); default: bundled all-MiniLM-L6-v2"),
    faiss_index: str = typer.Option("flat", "--faiss-index", help="flat (exact) | hnsw | ivf (approximate)"),
    embeddings: Optional[str] = typer.Option(None, "--embeddings", help="Precomputed passage vectors (Contriever layout: a folder or glob of pickled (ids, vectors) shards): a sharded IVF-PQ index of them, no encoding; CORPUS is the one passage file they index, --encoder their query encoder"),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="IVF cells (ivf and --embeddings); default about 4 sqrt(n)"),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF cells searched per query (ivf and --embeddings)"),
    pq_m: Optional[int] = typer.Option(None, "--pq-m", help="--embeddings: PQ sub-quantizers, a divisor of the dimension"),
    shard_size: int = typer.Option(2_000_000, "--shard-size", help="--embeddings: vectors per shard (bounds RAM while adding)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index at --out"),
    *, logs: None,
) -> None:
    """Build a persistent retrieval index over one or more CORPUS files."""
    from dynamicrag.data import load_corpus
    from dynamicrag.retrieve import build_index
    from dynamicrag.retrieve.sharded import build_sharded_index, format_estimate

    start, ivf = time.perf_counter(), {k: v for k, v in {"nlist": nlist, "nprobe": nprobe}.items() if v is not None}
    with failing():
        if embeddings is not None:
            if len(corpus) != 1:
                fail(f"--embeddings indexes one passage file; got {len(corpus)} CORPUS arguments")
            built = build_sharded_index(embeddings, out, passages=corpus[0], encoder=encoder, overwrite=overwrite, pq_m=pq_m,
                                        on_estimate=lambda est: console.print(format_estimate(est)), shard_size=shard_size, **ivf)
            what = f"sharded IVF-PQ of {built.counts()['vectors']} vectors"
        else:
            options = {"encoder": encoder, "faiss_index": faiss_index, **ivf} if retriever != "bm25" else {}
            built = build_index([p for path in corpus for p in load_corpus(path)], out, kind=retriever, overwrite=overwrite, **options)
            what = retriever
    console.print(f"indexed {len(built)} passages ({what}) into {out} in {time.perf_counter() - start:.1f} s")


@app.command()
@with_options(inputs=EXAMPLES, executor=EXECUTOR, logs=VERBOSE)
def retrieve(output: Path = OUTPUT, index_dir: str = index_option(required=True),
             top_n: int = typer.Option(50, "--top-n", min=1, help="Passages kept per question (the paper retrieves 50-500)"),
             batch_size: int = batch_size_option(64, "Questions per search batch and write"),
             *, inputs: Any, executor: Any, logs: None) -> None:
    """Retrieve the top-N passages of every question of INPUT once, for later stages (`label`,
    `sample` and `infer` read the output without an index; a question's own gold passages mark
    the retrieved ones that match them `isgold`)."""
    from dynamicrag.pipeline import retrieve_batch_fn

    with failing():
        examples = inputs()
    start = time.perf_counter()
    ran = run_with_progress("retrieve", examples, output, batch_size, partial(retrieve_batch_fn, index_dir, top_n), executor.make())
    elapsed = time.perf_counter() - start
    console.print(f"retrieved top {top_n} for {ran} questions into {output} in {elapsed:.1f} s"
                  + (f" ({ran / elapsed:.1f} questions/s)" if ran and elapsed > 0 else ""))


@app.command()
@with_options(inputs=EXAMPLES, method=pipeline_options(*ASK_METHOD, "kind", "k", "window", "stride", "scorer", "buffer",
                                                       "threshold", "max_drop", "retrieve"),
              roles=ROLES, decoding=decoding_options(labels=True), executor=EXECUTOR, logs=VERBOSE)
def infer(output: Path = OUTPUT, index_dir: Optional[str] = index_option(),
          batch_size: int = batch_size_option(64, "Examples per model call and per write (the transformers backend "
                                                  "decodes its own batch_size rows at a time, 8 unless --backend-option "
                                                  "says otherwise, and gives a finished answer's place to the next example)"),
          *, inputs: Any, method: dict, roles: dict, decoding: Any, executor: Any, logs: None) -> None:
    """Answer every question of INPUT: one output record per input record, in order."""
    from dynamicrag.build import pipeline_batch_fn, stage_settings
    from dynamicrag.pipeline import infer_summary

    examples = checked_examples(inputs, index_dir, method.get("retrieve", False), method.get("kind", "dynamic") != "none")
    if method.get("kind") == "threshold" and method.get("threshold") is None and method.get("max_drop") is None:
        fail("--reranker threshold needs --threshold, --max-drop or both")
    config = resolve_pipeline(roles, {"top_n": 40, "constrained": False}, **method, generation=decoding)
    infer_fn = partial(pipeline_batch_fn, config, index_dir)
    settings = partial(stage_settings, config, executor.local, infer_fn, run=executor.settings(batch_size),
                       pipeline={**config.model_dump(exclude={"reranker", "generator"}), "index": index_dir})
    with failing(ValueError):
        _, records, per_question = run_stage("infer", examples, output, batch_size, infer_fn, executor.make(), settings)
    show_stats(f"infer: {output}", infer_summary(records), s_per_question=per_question)


def load_rag(config: Any, corpus: Path | None, retriever: str) -> Any:
    """The :class:`~dynamicrag.DynamicRAG` of ``ask`` and ``chat`` (``config`` resolved with
    :data:`~dynamicrag.api.ASK_DEFAULTS`), over the cached index of ``corpus``."""
    from dynamicrag.api import DynamicRAG

    with failing(FileNotFoundError, TypeError, ValueError):
        return DynamicRAG.from_documents(corpus, retriever=retriever, config=config, loading=loading)


def resolve_asked(roles: dict, method: dict, decoding: Any, *, announce_dtype: bool = True) -> Any:
    """The resolved config of ``ask`` and ``chat``: their options over :data:`~dynamicrag.api.ASK_DEFAULTS`."""
    from dynamicrag.api import ASK_DEFAULTS

    return resolve_pipeline(roles, ASK_DEFAULTS, announce_dtype=announce_dtype, **method, generation=decoding)


@app.command()
@with_options(**ASKED)
def ask(context: typer.Context, question: str = typer.Argument(..., help="The question"), corpus: Optional[Path] = CORPUS,
        retriever: str = typer.Option("bm25", "--retriever", help="bm25 | dense | hybrid"),
        as_json: bool = typer.Option(False, "--json", help="Print the record as JSON"),
        keep_alive: str = typer.Option(DEFAULT_KEEP_ALIVE, "--keep-alive", envvar=KEEP_ALIVE_ENV,
                                       help="Keep the models loaded in a background process this long after each "
                                       "question (90s, 5m, 1h), so the next `ask` with the same options skips "
                                       "loading; 0: answer in this process, leave nothing running. "
                                       "`dynamicrag stop` ends them"),
        server: Optional[str] = typer.Option(None, "--server", envvar="DYNAMICRAG_SERVER",
                                             help="Ask a running `dynamicrag serve` at this URL (e.g. http://127.0.0.1:8000): "
                                             "its models and index answer, nothing loads here"),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar=API_KEY_ENV, show_default=False,
                                              help="--server: the server's API key"),
        *, roles: dict, method: dict, decoding: Any, logs: None) -> None:
    """Answer QUESTION from a corpus (index built once and cached), showing the chosen passages and k."""
    _skip_teardown()
    if server:
        answer = ask_remotely(context, server, question, method.get("top_n"), api_key)
    else:
        from dynamicrag.serve.keep_alive import parse_keep_alive

        with failing(ValueError):
            keep_alive_s = parse_keep_alive(keep_alive)
        config = resolve_asked(roles, method, decoding, announce_dtype=keep_alive_s == 0)
        answer = ask_kept(config, corpus, retriever, question, keep_alive_s) if keep_alive_s > 0 else None
        if answer is None:
            if keep_alive_s > 0:  # no kept process: the line it would have printed
                from dynamicrag.build import backend_specs

                with failing(ValueError):
                    announce_dtypes(backend_specs(config))
            rag = load_rag(config, corpus, retriever)
            with console.status("reranking and answering"):
                answer = rag.ask(question)
    if as_json:
        typer.echo(json.dumps(answer.to_json(), ensure_ascii=False, indent=2))
        return
    if answer.error:
        console.print(f"[red]failed:[/red] {answer.error}\nreranker output: {answer.reranker_output!r}")
        raise typer.Exit(1)
    typer.echo(answer.text)
    show_answer(answer)


def ask_kept(config: Any, corpus: Path | None, retriever: str, question: str, keep_alive_s: float) -> Any:
    """``ask``'s answer from the background process that keeps ``config``'s pipeline loaded
    (started when none runs: :mod:`dynamicrag.serve.keep_alive`); None when none could start."""
    from dynamicrag.serve.keep_alive import KeptPipeline, format_keep_alive, kept_process

    kept = KeptPipeline(config.model_dump(mode="json"), str(corpus.resolve()) if corpus else None, retriever)
    for attempt in range(2):  # the second: it ended (idle, stopped) between being found and asked
        with failing(FileNotFoundError):
            process = kept_process(kept, keep_alive_s, loading=loading)
        if process is None:
            return None
        if attempt == 0:
            for line in process.announced:
                console.print(line)
        if process.started:
            console.print(f"[dim]the models stay loaded in process {process.pid} for {format_keep_alive(keep_alive_s)} "
                          "after each question, so the next `ask` with these options starts at once (`dynamicrag "
                          "stop` ends it; `--keep-alive 0` keeps nothing)[/dim]", highlight=False)
        try:
            with failing(RuntimeError), console.status("reranking and answering"):
                return process.ask(question, keep_alive_s)
        except ConnectionError:
            continue
    return None


@app.command()
def stop() -> None:
    """Stop the background processes that keep `ask`'s models loaded (see `ask --keep-alive`)."""
    from dynamicrag.serve.keep_alive import stop_all

    stopped = stop_all()
    console.print(f"stopped {stopped} kept process{'' if stopped == 1 else 'es'}")


@app.command()
@with_options(**ASKED)
def chat(corpus: Optional[Path] = CORPUS, retriever: str = typer.Option("bm25", "--retriever", help="bm25 | dense | hybrid"),
         *, roles: dict, method: dict, decoding: Any, logs: None) -> None:
    """Answer questions typed one after another (`ask` in a loop; the model and the index load once).

    Each turn shows the chosen passages and k, then the answer as it is written (streamed where
    the backend can). Ctrl-D, or Ctrl-C at the prompt, ends; Ctrl-C during an answer stops that answer.
    """
    _skip_teardown()
    with contextlib.suppress(ImportError):  # line editing and history at the prompt, where there is readline
        import readline  # noqa: F401
    rag = load_rag(resolve_asked(roles, method, decoding), corpus, retriever)
    console.print("Type a question and press Enter; Ctrl-D quits.")
    for turn in itertools.count(1):
        try:
            question = console.input("[bold cyan]question>[/bold cyan] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        try:
            if question:
                chat_turn(rag, question, f"chat-{turn}")
        except KeyboardInterrupt:
            typer.echo()
            console.print("[yellow]stopped[/yellow]")
        except Exception as err:  # noqa: BLE001 - one failed question must not end the session
            console.print(f"[red]failed:[/red] {type(err).__name__}: {err}")


# `ask --server` sends these (and has no use for --keep-alive); the server's own settings decide everything else.
_SENT_TO_SERVER = {"question", "server", "api_key", "as_json", "top_n", "verbose", "keep_alive"}


def ask_remotely(context: typer.Context, server: str, question: str, top_n: int | None, api_key: str | None) -> Any:
    """``ask --server``: the answer of a running ``dynamicrag serve``. An option that only a local
    run reads (a corpus, a model, decoding) is refused rather than silently ignored."""
    from dynamicrag.serve.client import ServerError, ask_server

    local = sorted(p.opts[0] for p in context.command.params if p.name not in _SENT_TO_SERVER
                   and getattr(context.get_parameter_source(p.name), "name", None) in ("COMMANDLINE", "ENVIRONMENT"))
    if local:
        fail(f"--server: {', '.join(local)} would be ignored: the server's corpus, models and decoding answer "
             "(give them to `dynamicrag serve`)")
    with failing(ServerError), console.status(f"asking {server}"):
        return ask_server(server, question, top_n=top_n, api_key=api_key)


def chat_turn(rag: Any, question: str, id: str) -> None:
    """One `chat` question: show the chosen passages and k, stream the answer, name its sources."""
    with console.status("retrieving and reranking"):
        stream = rag.stream(question, id=id)
    show_chosen(stream.answer)
    if stream.answer.error:
        console.print(f"[red]no answer:[/red] {stream.answer.error}")
        return
    for piece in stream:
        typer.echo(piece, nl=False)
    typer.echo()
    ids = ", ".join(a.id for a in stream.answer.attribution) or "none of the chosen passages (by shared words)"
    console.print(f"[dim]answered in {stream.answer.timings.generate_s:.1f} s; the answer draws on: {ids}[/dim]",
                  highlight=False)


@app.command()
@with_options(logs=VERBOSE)
def evaluate(
    results: Optional[list[Path]] = typer.Argument(None, exists=True, dir_okay=False, help="infer output JSONL files, one per run"),
    by: Optional[str] = typer.Option(None, "--by", help="Record field to group by, e.g. task"),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for evaluation.json/.md, the plots, paired_comparison.* and diff.* (default: evaluation; with --diff alone, only printed)"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", exists=True, dir_okay=False, help="Compare every RUN with this run, paired by question id: difference, bootstrap CI, p (Holm), wins/ties/losses"),
    diff: Optional[tuple[Path, Path]] = typer.Option(None, "--diff", exists=True, dir_okay=False, help="Two runs A B: list the questions A gets right and B wrong, and the reverse, with answers and selections"),
    metrics: Optional[list[str]] = typer.Option(None, "--metric", help="Answer metric of --baseline (repeatable; default: all the task reports) and --diff (one; default: the task's main, match for open QA)"),
    qrels: Optional[Path] = typer.Option(None, "--qrels", exists=True, dir_okay=False, help="TREC qrels (query_id 0 doc_id relevance) for the reranker metrics; query ids = record ids, doc ids = passage ids"),
    resamples: int = typer.Option(2000, "--resamples", min=2000, help="Bootstrap resamples and permutations of --baseline"),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling"),
    *, logs: None,
) -> None:
    """Score infer outputs: answer and reranker metrics, k statistics, plots (failed records count as wrong).

    With --baseline, each run is compared with it question by question; with --diff A B, the
    questions the two runs disagree on are listed (printed, and written to --out when given).
    """
    from dynamicrag.console_tables import print_table
    from dynamicrag.evaluate.compare import LEFT_COLUMNS, MAIN, comparison_rows, diff_markdown, diff_runs, write_diff
    from dynamicrag.evaluate.report import evaluate_report, load_runs, render_table

    diff_paths = [p for p in diff or () if p is not None]
    if not results and not diff_paths:
        fail("give RUN files to evaluate, or --diff A B")
    if baseline is not None and not results:
        fail("--baseline compares the RUN files with it: give at least one RUN")
    if diff_paths and metrics and len(metrics) > 1:
        fail(f"--diff compares one metric, got --metric {' '.join(metrics)}")
    if results:
        with failing():
            report = evaluate_report(results, by, out or Path("evaluation"), qrels=qrels, baseline=baseline,
                                     metrics=metrics, resamples=resamples, seed=seed)
        print_table(render_table(report.summary), console)
        if report.comparison is not None:
            headers, rows = comparison_rows(report.comparison)
            show_table(f"paired comparison against {report.comparison['baseline']} (matched by question id)",
                       [dict(zip(headers, row)) for row in rows], left=tuple(LEFT_COLUMNS))
        console.print(f"wrote {', '.join(p.name for p in report.files)} in {out or Path('evaluation')}")
    if diff_paths:
        with failing():
            (a_name, a), (b_name, b) = load_runs(diff_paths).items()
            result = diff_runs(a, b, metrics[0] if metrics else MAIN, a_name=a_name, b_name=b_name)
        typer.echo(diff_markdown(result))
        if out is not None:
            console.print(f"wrote {', '.join(p.name for p in write_diff(result, out))} in {out}")


@app.command()
@with_options(logs=VERBOSE)
def benchmark(
    data: Path = typer.Option(..., "--data", help="Folder the config's files are relative to (e.g. ../shared/data)"),
    out: Path = typer.Option(..., "--out", help="Output folder: runs/, indexes/, comparison.md/.json, plots"),
    config: Optional[Path] = typer.Option(None, "--config", help="Benchmark YAML; default: the shared-data comparison"),
    model: Optional[str] = typer.Option(None, "--model", help="Override the config's model (e.g. a trained checkpoint folder)"),
    reranker_adapter: Optional[str] = typer.Option(None, "--reranker-adapter", help="Override the config's reranker adapter (auto | none | folder | shipped name)"),
    only: list[str] = typer.Option([], "--benchmark", help="Run this benchmark of the config only (repeatable); default: all"),
    *, logs: None,
) -> None:
    """Run benchmarks x rerankers with one generator and write one comparison table and plots."""
    from dynamicrag.evaluate.benchmark import default_config_path, load_config, run_benchmark

    with failing():
        cfg = load_config(config or default_config_path()).with_overrides(
            model=model, reranker_adapter=reranker_adapter, only=only)
    start = time.perf_counter()
    with runs_progress() as on_progress:
        comparison = run_benchmark(cfg, data, out, on_progress)
    typer.echo((out / "comparison.md").read_text("utf-8"))
    console.print(f"wall time {time.perf_counter() - start:.0f} s; plots: {', '.join(comparison['plots'])}")


@app.command()
@with_options(roles=ROLES, method=pipeline_options(*ASK_METHOD), decoding=decoding_options(labels=False),
              settings=config_options(ServeSettings, exclude=("model_name", "top_n"), flags={"timeout_s": "--timeout"}), logs=VERBOSE)
def serve(host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback by default (0.0.0.0 serves other machines: set an API key)"),
          port: int = typer.Option(8000, "--port", help="TCP port"),
          index_dir: Optional[str] = index_option(help="Index (from `dynamicrag index`) searched when /v1/answer gets no passages"),
          corpus: Optional[Path] = typer.Option(None, "--corpus", help="Instead of --index: a folder of .md/.txt files or a corpus file, indexed once and cached (as `ask`)"),
          *, roles: dict, method: dict, decoding: Any, settings: dict, logs: None) -> None:
    """Serve the reranker and the generator over HTTP: POST /v1/rerank, POST /v1/answer, GET /health,
    and a web page at / to ask questions in a browser."""
    from dynamicrag.retrieve.corpus_index import corpus_index
    from dynamicrag.serve.command import serve_command

    config = resolve_pipeline(roles, SERVE_DEFAULTS, **method, generation=decoding)
    if corpus is not None and index_dir is not None:
        fail("--corpus and --index exclude each other")
    with failing(FileNotFoundError, ValueError):
        if corpus is not None:
            _, index_dir = corpus_index(corpus, loading=loading)
        serve_command(config, host=host, port=port, index_dir=index_dir, loading=loading, **settings)



for name, command in STAGE_COMMANDS:  # label, prepare, sample, reward, pairs
    app.command(name)(command)
app.add_typer(train_app, name="train")

if __name__ == "__main__":
    run()
