"""What the command line shows: errors, status lines while models load, progress bars of the
resumable stages, summary tables and the backends' dtype. Only the CLI prints; the library logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

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

from dynamicrag.console_tables import print_table

console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit with status 2."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@contextlib.contextmanager
def failing(*errors: type[BaseException]) -> Iterator[None]:
    """Turn the errors a user can fix (bad data, a missing file, a bad value) into :func:`fail`.

    A Ray worker's error carries the original as ``cause``; its message is shown.
    """
    from dynamicrag.data import DataError

    try:
        yield
    except errors or (DataError, FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as err:
        fail(str(getattr(err, "cause", err)))


def setup_logging(verbose: bool) -> None:
    """INFO logs with ``--verbose``, else warnings only (and no library progress bars)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # the libraries' progress bars off: our own progress display is enough
        # Without importing transformers (2 s) in commands that never load a model (`ask --server`,
        # `evaluate`): huggingface_hub reads this variable when it loads, and transformers' bars follow it.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        elif "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()


class _StatusRelay(logging.Handler):
    """Shows the package's INFO log lines in :func:`loading`'s status line (e.g. "Converting
    ... into a transformers checkpoint (once)"), so a long first run says what it is doing."""

    def __init__(self, show: Callable[[str], None], print_warnings: bool) -> None:
        super().__init__(logging.INFO)
        self.show, self.print_warnings = show, print_warnings

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            self.show(record.getMessage())
        elif self.print_warnings:  # the package does not propagate to the root handler meanwhile
            console.print(f"[yellow]{record.levelname.lower()}:[/yellow] {record.getMessage()}")


@contextlib.contextmanager
def loading(what: str) -> Iterator[None]:
    """A live status line (spinner, elapsed seconds) while ``what`` runs, then a line saying how
    long it took; the package's INFO log lines meanwhile show in the status line. Used while
    the models load and the index loads or builds."""
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


def run_with_progress(stage: str, items: list, output: Path, batch_size: int, fn_factory: Any, executor: Any,
                      settings: Any = None) -> int:
    """:func:`dynamicrag.executors.run_resumable` with a progress bar; an output of other input,
    or of settings that decide the records differently, is an error. Returns how many items
    this run processed."""
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
            fail(str(err))


def run_stage(stage: str, items: list, output: Path, batch_size: int, fn_factory: Any, executor: Any,
              settings: Any = None) -> tuple[int, list[dict], str | None]:
    """:func:`run_with_progress`, then what the stage's summary needs.

    Returns:
        How many items this run processed, every record of the output, and this run's seconds
        per item (None when it processed none).
    """
    from dynamicrag.data import read_jsonl

    start = time.perf_counter()
    ran = run_with_progress(stage, items, output, batch_size, fn_factory, executor, settings)
    per_item = f"{(time.perf_counter() - start) / ran:.2f}" if ran else None
    return ran, [r for _, r in read_jsonl(output)], per_item


@contextlib.contextmanager
def runs_progress() -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar per run (the benchmark's): yields ``on_progress(run, done, total)``. A run
    file of other input or settings (``ResumeError``) is an error; the file is left as it is."""
    from dynamicrag.executors import ResumeError

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        bars: dict[str, Any] = {}

        def on_progress(run: str, done: int, total: int) -> None:
            if run not in bars:
                bars[run] = progress.add_task(run, total=total)
            progress.update(bars[run], completed=done)

        try:
            yield on_progress
        except ResumeError as err:
            progress.stop()
            fail(str(err))


def cell(value: Any) -> str:
    """A number as a table shows it: ``-`` for None, floats to 3 decimals (1 from 10 on)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    return str(value)


def show_table(title: str, rows: list[Mapping[str, Any]], left: tuple[str, ...] = ()) -> None:
    """Print rows of statistics (one dict each; keys become headers, ``_`` read as space) as one
    table: rich where it fits, else markdown, never cut. No rows: the title alone."""
    if not rows:
        console.print(title)
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key.replace("_", " "), justify="left" if key in left else "right")
    for row in rows:
        table.add_row(*(cell(v) for v in row.values()))
    print_table(table, console)


def show_stats(title: str, stats: Mapping[str, Any], **more: Any) -> None:
    """One row of statistics (nested dicts left out), with ``more`` columns at the end."""
    show_table(title, [{**{k: v for k, v in stats.items() if not isinstance(v, dict) or k in more}, **more}])


def show_answer(answer: Any) -> None:
    """``ask``'s view of an :class:`~dynamicrag.api.Answer`: the chosen passages with what the
    answer took from each, the sources, the reranker's output."""
    used = {a.position: a.evidence for a in answer.attribution}
    show_table(f"k = {answer.k} of {len(answer.candidates)} retrieved", [
        {"#": rank, "id": p.id, "title": p.title, "passage": p.text[:120] + ("..." if len(p.text) > 120 else ""),
         "used_by_the_answer": f"yes: {used[p.position][:40]}" if p.position in used else ""}
        for rank, p in enumerate(answer.passages, 1)], left=("id", "title", "passage", "used_by_the_answer"))
    sources = ", ".join(a.id for a in answer.attribution) or "none of the chosen passages (by shared words)"
    console.print(f"answer draws on: {sources}")
    console.print(f"reranker output: {answer.reranker_output!r}")


def show_chosen(answer: Any) -> None:
    """``chat``'s view of the passages chosen for an answer about to be written, and k."""
    k_line = f"k = {answer.k} of {len(answer.candidates)} retrieved"
    reranked = f"reranker output {answer.reranker_output!r} in {answer.timings.retrieve_s + answer.timings.rerank_s:.1f} s"
    if not answer.passages:
        console.print(f"{k_line}: no passage chosen ({reranked})", highlight=False)
        return
    table = Table(title=k_line, caption=reranked)
    for col in ("#", "id", "title", "passage"):
        table.add_column(col, justify="right" if col == "#" else "left", overflow="fold" if col == "id" else "ellipsis")
    for rank, p in enumerate(answer.passages, 1):
        table.add_row(str(rank), p.id, p.title, p.text[:80] + ("..." if len(p.text) > 80 else ""))
    console.print(table)


def dtype_lines(specs: Mapping[str, dict[str, Any]]) -> list[str]:
    """What each transformers backend computes in ("transformers backend: bf16 (CPU has
    avx512_bf16)"): one line when all agree, else one per role. ``specs``: role -> backend name
    and options, as the backend will load them.

    Raises:
        ValueError: A dtype the backend does not know (the message names the role).
    """
    from dynamicrag.llm.transformers_backend import choose_dtype

    reasons = {}
    for role, spec in specs.items():
        if spec["name"] == "transformers":
            try:
                reasons[role] = choose_dtype(spec.get("dtype", "auto"), spec.get("device", "cpu"))[1]
            except ValueError as err:
                raise ValueError(f"{role} 'transformers': {err}") from None
    if len(set(reasons.values())) == 1:
        return [f"transformers backend: {next(iter(reasons.values()))}"]
    return [f"{role}: transformers backend: {reason}" for role, reason in reasons.items()]


def announce_dtypes(specs: Mapping[str, dict[str, Any]]) -> None:
    """Print :func:`dtype_lines` (once per command, before the models load)."""
    for line in dtype_lines(specs):
        console.print(line)


__all__ = [
    "announce_dtypes", "cell", "console", "dtype_lines", "fail", "failing", "loading", "run_stage", "run_with_progress",
    "runs_progress", "setup_logging", "show_answer", "show_chosen", "show_stats", "show_table",
]
