"""Helpers the benchmark scripts share: arguments, data, machine, timing, memory, tables, JSON.

Every script prints a markdown table last and writes ``benchmarks/results/<name>.json`` with
:func:`machine_info` inside (``<name>.quick.json`` for ``--quick`` smoke runs, so a smoke run
never overwrites full figures). Scripts import this module as ``from _common import ...``
(run them as ``python benchmarks/<script>.py``; Python puts the script's folder on
``sys.path``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Benchmarks run offline, like the tests: nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The thread settings of the `dynamicrag` command (OMP_WAIT_POLICY=PASSIVE unless set, and
# $DYNAMICRAG_THREADS), before any script imports torch, so the figures are those of the
# defaults users get; a variant that measures another policy sets it in its child's environment.
from dynamicrag.runtime import set_thread_env_defaults  # noqa: E402

set_thread_env_defaults()

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("DYNAMICRAG_SHARED_DATA", ROOT.parent / "shared" / "data"))
NQ_ORACLE = DATA / "nq" / "nq-open-oracle.jsonl.gz"
NQ_WIKI = DATA / "nq" / "flashrag_wiki_sample.jsonl"
MODEL_NAME = "SmolLM2-135M-Instruct (bundled)"


def log(message: str) -> None:
    """Progress line on stderr, so stdout ends with the table alone."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- arguments -----------------------------------------------------------------------------


def add_common_args(ap: argparse.ArgumentParser, *, questions: int | None = None, llm: bool = True) -> None:
    """The flags every NQ benchmark takes.

    Args:
        ap: The script's parser.
        questions: Default of ``--questions`` (first N NQ questions); None: no such flag.
        llm: Also ``--free`` (reranker decoding without the id grammar).
    """
    if questions is not None:
        ap.add_argument("--questions", type=int, default=questions, help="First N NQ questions")
    ap.add_argument("--corpus-limit", type=int, default=None, help="First N corpus passages only (smoke runs)")
    if llm:
        ap.add_argument("--free", action="store_true",
                        help="Dynamic reranker without constrained decoding (the untrained bundled model then "
                             "writes no usable id list, so the default constrains it to the id grammar)")
    ap.add_argument("--json", type=Path, default=None,
                    help="Output JSON (default: results/<name>.json, or <name>.quick.json with --quick)")


def parse_args(ap: argparse.ArgumentParser, quick: dict[str, Any]) -> argparse.Namespace:
    """Parse the command line; ``--quick`` swaps the defaults for ``quick`` (explicit flags still win).

    Args:
        ap: The script's parser (``--quick`` is added here).
        quick: Destination name -> smoke-run default, sized to finish in about two minutes.

    Returns:
        The arguments, with ``quick`` set.
    """
    shown = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in quick.items())
    ap.add_argument("--quick", action="store_true", help=f"Smoke-run sizes: {shown}")
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(**quick)
        args = ap.parse_args()
    return args


def int_list(text: str) -> list[int]:
    """``"20,40,100"`` -> ``[20, 40, 100]``."""
    return [int(s) for s in text.split(",") if s.strip()]


# --- machine, time and memory ----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, including how busy the machine was.

    Returns:
        ``summary`` (one line for a README), CPU, cores, memory, Python/torch versions, torch
        threads and the 1-minute load average (a load above the core count means other
        processes competed for the CPU and wall times are pessimistic; CPU seconds are not).
    """
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    try:  # the version without importing torch (slow, and not every benchmark needs it)
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    # OpenMP's wait policy decides what torch's threads do when the machine is shared: the
    # default spins, which made CPU-bound runs here ~5x slower at load 5 than PASSIVE.
    omp = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ}
    info["openmp_env"] = omp
    info["summary"] = (
        f"{info['arch']}, {info['cores']} cores ({info['cpu']}), {info['memory_gib']:.0f} GiB, "
        f"Python {info['python']}" + (f", torch {info['torch']}" if "torch" in info else "")
        + "".join(f", {k}={v}" for k, v in omp.items())
        + f"; load average {info['load_average_1min']}"
    )
    return info


@dataclass
class Timer:
    """Wall and CPU seconds of a block (CPU: every thread of this process, user + system).

    On a shared machine wall time grows with the load; CPU seconds barely do, so they tell
    whether a slow figure was the code or the neighbours.

    Example:
        >>> with Timer() as t:
        ...     work()
        >>> t.wall, t.cpu
    """

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB (from /proc; Linux only, as the benchmarks)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class ChildRun:
    """One subprocess, measured on its own (wall time, CPU time and peak RSS of that child only)."""

    argv: list[str]
    returncode: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    stdout: str = ""
    stderr: str = ""

    def error_tail(self, lines: int = 3) -> str:
        """The last lines of stderr (or stdout), for a failure note."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " / ".join(text[-lines:])


# Peak RSS of one child, measured through a small launcher process. Linux carries the high-water
# RSS of the memory a process replaces at exec into its ru_maxrss; a child spawned straight from
# this (model-laden, GBs) process would report at least our size. The launcher is small, forks the
# real command, reports that grandchild's own ``wait4`` rusage to a file and exits with its code.
# It forwards SIGINT/SIGTERM, and the grandchild dies with it (PR_SET_PDEATHSIG) if it is killed.
_LAUNCHER = r"""
import ctypes, os, signal, sys
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, f: os.kill(pid, s))
_, status, usage = os.wait4(pid, 0)  # retried after a forwarded signal (PEP 475)
with open(report, "w") as f:
    f.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def _spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    fd, report = tempfile.mkstemp(prefix="dynamicrag-bench-", suffix=".rusage")
    os.close(fd)
    proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, report, *argv], **popen)
    proc.report_path, proc.command = Path(report), list(argv)  # type: ignore[attr-defined]
    return proc


def _reap(proc: subprocess.Popen, start: float, options: int = 0) -> ChildRun | None:
    pid, status, usage = os.wait4(proc.pid, options)
    if pid == 0:  # WNOHANG and still running
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen.wait
    seconds = time.perf_counter() - start
    report = proc.report_path  # type: ignore[attr-defined]
    try:
        maxrss_kib, cpu = report.read_text().split()
        peak_mb, cpu_s = int(maxrss_kib) / 1024, float(cpu)
    except (OSError, ValueError):  # the launcher itself was killed: no figures for the child
        peak_mb, cpu_s = float("nan"), float("nan")
    report.unlink(missing_ok=True)
    return ChildRun(proc.command, proc.returncode, seconds, cpu_s, peak_mb)  # type: ignore[attr-defined]


def run_child(argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | Path | None = None) -> ChildRun:
    """Run a command to its end and measure it alone.

    Args:
        argv: The command.
        env: Its environment (None: this process's).
        cwd: Its working directory.

    Returns:
        The :class:`ChildRun`; output is kept in full (read from temporary files, so a chatty
        child cannot block on a full pipe).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = _spawn(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        run = _reap(proc, start)
        out.seek(0)
        err.seek(0)
        run.stdout, run.stderr = out.read(), err.read()
        return run


@dataclass
class Service:
    """A long-running child (a server) started with :func:`start_service`."""

    proc: subprocess.Popen
    start: float
    log_path: Path
    finished: ChildRun | None = None

    def alive(self) -> bool:
        """Still running (checked with ``wait4``, so an exited child's rusage is kept)."""
        if self.finished is None:
            self.finished = _reap(self.proc, self.start, os.WNOHANG)
        return self.finished is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace_s: float = 30.0) -> ChildRun:
        """SIGINT (a graceful shutdown), SIGKILL after ``grace_s``; the child's own rusage."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace_s
        while self.alive():
            if time.monotonic() > deadline:
                self.proc.kill()
                self.finished = _reap(self.proc, self.start)
            else:
                time.sleep(0.1)
        run = self.finished
        run.stderr = self.log_text()
        self.log_path.unlink(missing_ok=True)
        return run


def start_service(argv: Sequence[str], env: dict[str, str] | None = None) -> Service:
    """Start a child that keeps running; its output goes to a temporary log file."""
    fd, name = tempfile.mkstemp(prefix="dynamicrag-bench-", suffix=".log")
    with os.fdopen(fd, "w") as out:
        proc = _spawn(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Service(proc, time.perf_counter(), Path(name))


def free_port() -> int:
    """A free loopback port (closed again; the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- numbers, tables and results -------------------------------------------------------------


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; NaN for no values (written to JSON as null)."""
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def fmt(value: Any, spec: str = ".2f") -> str:
    """``format(value, spec)``, or ``-`` for None/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are expected to be formatted by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_header(args: argparse.Namespace, *lines: str) -> None:
    """The lines above a script's tables: machine, setup, and a SMOKE warning for --quick."""
    print()
    if getattr(args, "quick", False):
        print("**QUICK / SMOKE RUN: tiny sizes, not the benchmark's figures.**")
    print(machine_info()["summary"])
    for line in lines:
        print(line)
    print()


def write_result(name: str, result: dict[str, Any], args: argparse.Namespace) -> Path:
    """Write ``result`` with the machine, command, date and quick flag to JSON.

    Args:
        name: Benchmark name (the file stem).
        result: The figures (JSON-serialisable; NaN/inf become null).
        args: The script's arguments (``json`` and ``quick`` are read).

    Returns:
        The path written: ``args.json``, else ``results/<name>.json`` or ``<name>.quick.json``.
    """
    quick = bool(getattr(args, "quick", False))
    path = getattr(args, "json", None) or RESULTS / f"{name}{'.quick' if quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    from dynamicrag.run_settings import run_settings

    record = {
        "benchmark": name,
        "quick": quick,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": run_settings(),  # version and thread settings; scripts with a model add its backend
        **result,
    }
    path.write_text(json.dumps(_finite(record), indent=2, allow_nan=False) + "\n")
    return path


def _finite(value: Any) -> Any:
    """NaN/inf (a mean over nothing) as null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --- data ----------------------------------------------------------------------------------


def nq_data(corpus_limit: int | None = None) -> tuple[list, list]:
    """The shared NQ questions and retrieval corpus, as the tests and ``spine.py`` build it.

    Args:
        corpus_limit: Keep only the first this many corpus passages (gold passages come
            first), for smoke runs; None keeps all 3600.

    Returns:
        ``(examples, passages)``: the 2655 nq-open-oracle examples (each with its gold passage)
        and the corpus: their gold passages (each kept once) + the 1000-passage Wikipedia sample.
    """
    from dynamicrag.data import load_corpus, load_examples

    examples = load_examples(NQ_ORACLE)
    passages = load_corpus(NQ_ORACLE) + load_corpus(NQ_WIKI)
    if corpus_limit is not None:
        passages = passages[:corpus_limit]
    return examples, passages


def bm25(passages: list) -> Any:
    """An in-memory BM25 retriever with the project's defaults (no files written)."""
    from dynamicrag.retrieve import BM25Retriever

    return BM25Retriever.build(passages, show_progress=False)


@dataclass
class NQSetup:
    """The first ``--questions`` NQ questions, the corpus and its BM25 index."""

    examples: list
    passages: list
    retriever: Any

    def top(self, n: int, examples: Sequence | None = None) -> list:
        """Copies of the examples holding BM25's top ``n`` (gold marked), as ``infer --retrieve``."""
        from dynamicrag.pipeline import with_passages

        return with_passages(self.examples if examples is None else examples, self.retriever, n, retrieve=True)


def nq_setup(args: argparse.Namespace, extra_questions: int = 0) -> NQSetup:
    """Load the shared NQ data and index it, as ``args`` (``questions``, ``corpus_limit``) say.

    Args:
        args: Parsed arguments.
        extra_questions: Questions kept beyond ``args.questions`` (e.g. one for warm-up).
    """
    examples, passages = nq_data(args.corpus_limit)
    log(f"BM25 over {len(passages)} NQ passages")
    return NQSetup(examples[: args.questions + extra_questions], passages, bm25(passages))


# --- LLM usage -----------------------------------------------------------------------------


@dataclass
class Call:
    """One ``Backend.generate`` request: chats sent, tokens, time."""

    chats: int
    prompt_tokens: list[int]
    completion_tokens: list[int]
    seconds: float


@dataclass
class UsageMeter:
    """A pass-through :class:`~dynamicrag.llm.base.Backend` that records every request.

    Not a fake: each request goes to the wrapped backend unchanged; the meter only reads the
    token counts the backend reports (its own tokenizer), so rerankers and the generator are
    measured as they run.
    """

    backend: Any
    calls: list[Call] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def model(self) -> str:
        return self.backend.model

    def count_tokens(self, chat: Any) -> int:
        return self.backend.count_tokens(chat)

    def describe(self) -> dict[str, Any]:
        from dynamicrag.run_settings import describe_backend

        return describe_backend(self.backend)

    def generate(self, chats: Sequence[Any], params: Any) -> list:
        start = time.perf_counter()
        out = self.backend.generate(chats, params)
        self.calls.append(Call(
            chats=len(chats),
            prompt_tokens=[c[0].prompt_tokens for c in out],
            completion_tokens=[sum(x.completion_tokens for x in c) for c in out],
            seconds=time.perf_counter() - start,
        ))
        return out

    def reset(self) -> None:
        self.calls.clear()

    def totals(self) -> dict[str, int]:
        """Requests (one per chat), prompt tokens and generated tokens since the last reset."""
        return {
            "requests": sum(c.chats for c in self.calls),
            "prompt_tokens": sum(sum(c.prompt_tokens) for c in self.calls),
            "completion_tokens": sum(sum(c.completion_tokens) for c in self.calls),
        }


def finished_row_share(calls: Sequence[Call], decoded_row_steps: int | None = None) -> float | None:
    """Share of the decoding row-steps of batched calls spent on rows that had finished.

    ``decoded_row_steps``: what the backend counted it ran (the transformers backend's
    ``decoded_row_steps``, which drops finished rows from a batch as it goes). Without it, a
    batch that decodes until its longest output ends is assumed, so a row that finished early
    still goes through every later step: ``sum(rows x longest)`` over the calls, exact when
    each call is one model batch (its chats <= the backend's batch size), as in
    ``throughput.py``. The share is ``(computed - each row's tokens) / computed``.

    Returns:
        The share, or None when nothing was generated.
    """
    computed = decoded_row_steps if decoded_row_steps is not None else sum(
        c.chats * max(c.completion_tokens, default=0) for c in calls)
    needed = sum(sum(c.completion_tokens) for c in calls)
    return (computed - needed) / computed if computed else None


def reduction_trace(selection: Any, n_passages: int, window: int, style: Any) -> dict[str, Any] | None:
    """What the dynamic reranker's top-N reduction did for one example, read back from its
    raw outputs (``Selection.raw`` joins every call's output in call order).

    Replays :meth:`dynamicrag.rerank.DynamicReranker.select`: while more than ``window``
    candidates remain they are cut into chunks of ``window``, each chunk's chosen ids survive,
    and one final call chooses among the survivors (none when nothing survived). The reranker
    keeps only totals, so this replay is how the benchmarks see rounds and survivors.

    Returns:
        ``{"rounds": [{"chunks", "survivors"}, ...], "final_window": size or 0}``, or None
        when the raw text does not split into the expected calls (free decoding can write
        the separator itself).
    """
    from dynamicrag.rerank import parse_selection
    from dynamicrag.rerank.dynamic import RAW_SEPARATOR

    parts = selection.raw.split(RAW_SEPARATOR)
    candidates, used, rounds = n_passages, 0, []
    while candidates > window:
        sizes = [min(window, candidates - s) for s in range(0, candidates, window)]
        if used + len(sizes) > len(parts):
            return None
        kept = sum(
            len(parse_selection(parts[used + j], size, style.id_pattern, style.none_word).ids)
            for j, size in enumerate(sizes)
        )
        used += len(sizes)
        if kept >= candidates:  # every chunk kept everything: the reranker cuts to one window
            kept = window
        rounds.append({"chunks": len(sizes), "survivors": kept})
        candidates = kept
    calls = used + (1 if candidates else 0)
    if calls != selection.calls or (selection.calls and calls != len(parts)):
        return None
    return {"rounds": rounds, "final_window": candidates}


def reduction_summary(selections: Sequence[Any], n_passages: int, window: int, style: Any) -> dict[str, Any]:
    """Means over examples of :func:`reduction_trace`: rounds, round-1 chunks and survivors,
    final window, examples without a final call (nothing survived) and unreadable traces."""
    found = [reduction_trace(s, n_passages, window, style) for s in selections]
    ok = [t for t in found if t is not None]
    first = [t["rounds"][0] for t in ok if t["rounds"]]
    return {
        "rounds": mean(len(t["rounds"]) for t in ok),
        "round1_chunks": mean(r["chunks"] for r in first),
        "round1_survivors": mean(r["survivors"] for r in first),
        "final_window": mean(t["final_window"] for t in ok),
        "no_final_call": sum(t["final_window"] == 0 for t in ok),
        "unreadable": len(found) - len(ok),
    }


def int8_copy(lm: Any, keep: Sequence[str] = ()) -> Any:
    """An int8 dynamically quantised copy of the fp32 model ``lm``.

    ``torch.ao`` eager dynamic quantisation of the linear layers (deprecated in torch, kept
    here to measure it), lm_head untied from the embedding first so the embedding table stays
    fp32; linear layers whose name contains one of ``keep`` stay fp32.
    """
    import copy
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    lm = copy.deepcopy(lm)
    lm.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone(), requires_grad=False)
    names = {n for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and not any(k in n for k in keep)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao eager quantisation is deprecated
        return quantize_dynamic(lm, names, dtype=torch.qint8)


def int8_backend(fp32: Any, batch_size: int = 8) -> Any:
    """A transformers backend on an int8 dynamically quantised copy of ``fp32``'s model
    (:func:`int8_copy`). A benchmark variant, not a backend option."""
    import threading

    from dynamicrag.llm.transformers_backend import TransformersBackend

    quantized = int8_copy(fp32.lm)
    llm = TransformersBackend(fp32.model, dtype="float32", batch_size=batch_size)
    llm.lm, llm._lock = quantized, threading.Lock()  # a copy of its own, not the shared model
    llm.dtype_reason = "int8 dynamic (torch.ao quantize_dynamic, linear layers; lm_head untied)"
    return llm
