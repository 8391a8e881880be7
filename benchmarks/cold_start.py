"""Cold start vs warm runs of ``dynamicrag ask``: wall time and peak RSS of each process.

    python benchmarks/cold_start.py                  # full: cold, index-only cold, 3 warm runs
    python benchmarks/cold_start.py --quick          # smoke run: cold + 1 warm, 16-token answers

Runs, each a fresh ``dynamicrag ask QUESTION --json`` process with ``DYNAMICRAG_CACHE`` set
to a new temporary folder (the user's own cache is neither read nor touched):

1. ``cold``: the cache is empty, so the run converts the bundled SmolLM2 GGUF into a
   transformers checkpoint and builds the BM25 index of the corpus before answering.
2. ``index only cold``: the converted model is kept and the index folder deleted, so the run
   builds the index again (separates the two one-time costs; ``--no-index-cold`` skips it).
3. ``warm`` x --warm: everything cached; model load, index load, rerank, answer.

4. With ``--server`` (the default), ``dynamicrag serve --corpus`` on the same cache (its start
   until ``/health`` answers is timed), then the question and --warm other questions as
   ``dynamicrag ask QUESTION --server URL --json`` processes: the models stay loaded in the
   server, so a warm ``ask`` pays only the question and the client's start. Each question is
   new to the server (repeated right after its start, a question finds its whole prompt in
   the prefix cache).
4b. With ``--compare-teardown`` (the default), each warm run is followed by the same command
   through the Typer app itself (``python -c "from dynamicrag.cli import app; app()" ask ...``),
   which ends the way every Python process does, tearing the interpreter down; the console
   script (``dynamicrag.cli.run``) ends ``ask`` without that teardown.
5. With ``--compare-old`` (the default), the same cold run in a second empty cache and the
   same warm runs with the transformers backend as it was before the speed work (``--backend-option
   dtype=float32 prefix_cache=false prefill=batch`` and OpenMP's own wait policy), so the
   closing figures have the old ones beside them from the same run.

Also ``dynamicrag --help`` as the floor (interpreter start and the CLI's imports). Each
process is measured on its own with ``os.wait4`` (wall seconds, CPU seconds, peak RSS).
"Cold" is cold for the project's cache only: the operating system's file cache may still hold
the GGUF and the libraries. The question defaults to one about the bundled corpus (the
project's docs), which ``ask`` uses when --corpus is not given. Targets: a warm run at most
5 s and a cold one at most 30 s, under 3 GB RSS; the warm target is judged on the fresh
processes and, apart, on the asks through the server. Prints a markdown table last and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import (
    fmt, free_port, log, markdown_table, mean, parse_args, print_header, run_child, start_service, write_result,
)

from dynamicrag.retrieve.corpus_index import default_corpus

QUICK = {"warm": 1, "max_new_tokens": 16, "no_index_cold": True}
TARGET_WARM_S, TARGET_COLD_S, TARGET_RSS_MB = 5.0, 30.0, 3000.0
# The transformers backend before the speed work; an empty OMP_WAIT_POLICY is OpenMP's own default.
OLD_OPTIONS = ["--backend-option", "dtype=float32", "--backend-option", "prefix_cache=false",
               "--backend-option", "prefill=batch"]
OLD_ENV = {"OMP_WAIT_POLICY": ""}
# The warm questions to the server, after --question: each new to it (about the bundled docs).
SERVER_QUESTIONS = ("How is the reranker trained?", "Which backends can run the models?",
                    "What does the match metric measure?", "How does the reranker choose how many passages?")


def dynamicrag_command() -> list[str]:
    """The installed ``dynamicrag`` console script, else the same entry point through python."""
    script = shutil.which("dynamicrag")
    return [script] if script else [sys.executable, "-c", "from dynamicrag.cli import run; run()"]


def child_env(cache: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment: this one, with its own project cache and the hub offline."""
    return {**os.environ, "DYNAMICRAG_CACHE": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra or {})}


def ask_row(label: str, run) -> dict:
    """One measured ``ask`` process as a table row, with what its JSON record says."""
    row = {"run": label, "seconds": run.seconds, "cpu_seconds": run.cpu_seconds, "peak_rss_mb": run.peak_rss_mb,
           "returncode": run.returncode}
    if run.returncode != 0:
        row["error"] = run.error_tail()
        log(f"{label} failed (exit {run.returncode}): {row['error']}")
    elif run.stdout.lstrip().startswith("{"):
        record = json.loads(run.stdout)
        row.update(k=len(record["selected"]), answer=record["answer"], error=record["error"])
        row["backend_line"] = next((line for line in run.stderr.splitlines()
                                    if line.startswith("transformers backend:")), None)
    return row


def wait_healthy(url: str, server, limit_s: float = 600.0) -> float:
    """Seconds until ``url``/health answers 200 (the server loaded the models and the index)."""
    while time.perf_counter() - server.start < limit_s:
        if not server.alive():
            raise RuntimeError(f"the server exited while starting:\n{server.log_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - server.start
        except OSError:  # not listening yet (connection refused), or 503 while it starts
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {limit_s:.0f} s")


def server_rows(base: list[str], args: argparse.Namespace, env: dict[str, str]) -> tuple[list[dict], dict]:
    """``ask --server`` processes against one ``dynamicrag serve`` (started and stopped here): the
    first question after its start, then --warm more."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    corpus = args.corpus.resolve() if args.corpus else default_corpus()
    serve = [*base, "serve", "--corpus", str(corpus), "--port", str(port)]
    serve += ["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else []
    log(f"server start: {' '.join(serve[len(base):])}")
    server = start_service(serve, env=env)
    rows = []
    try:
        startup_s = wait_healthy(url, server)
        # Each question asked once: a batch of one learns its cached prefix from the prompts seen
        # before, so a question repeated right after the start would find its whole prompt cached.
        questions = [args.question, *(SERVER_QUESTIONS * args.warm)[:args.warm]]
        labels = ["server: first question", *(f"warm {i + 1}, via server" for i in range(args.warm))]
        for label, question in zip(labels, questions):
            log(f"{label}: {question}")
            rows.append({**ask_row(label, run_child([*base, "ask", question, "--server", url, "--json"], env=env)),
                         "question": question})
    finally:
        stopped = server.stop()
    return rows, {"command": " ".join(serve[len(base):]), "startup_seconds": startup_s,
                  "peak_rss_mb": stopped.peak_rss_mb, "cpu_seconds": stopped.cpu_seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question", default="What does the dynamic reranker write?")
    ap.add_argument("--corpus", type=Path, default=None, help="Corpus for ask (default: the bundled docs)")
    ap.add_argument("--warm", type=int, default=3, help="Warm runs after the cold ones")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="ask's answer cap (default: ask's own, 200)")
    ap.add_argument("--no-index-cold", action="store_true", help="Skip the index-only cold run")
    ap.add_argument("--server", action=argparse.BooleanOptionalAction, default=True,
                    help="Also `ask --server` against a running `dynamicrag serve` (first question and --warm more)")
    ap.add_argument("--compare-old", action=argparse.BooleanOptionalAction, default=True,
                    help="Also the cold and warm runs with the backend as it was before the speed work")
    ap.add_argument("--compare-teardown", action=argparse.BooleanOptionalAction, default=True,
                    help="Also each warm run through the Typer app itself, which exits with the interpreter's teardown")
    ap.add_argument("--json", type=Path, default=None)
    args = parse_args(ap, QUICK)

    base = dynamicrag_command()
    ask = [*base, "ask", args.question, "--json"]
    ask += ["--corpus", str(args.corpus.resolve())] if args.corpus else []
    ask += ["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else []
    old_ask = [*ask, *OLD_OPTIONS]
    # (label, command, which cache: "new" or "old", environment overrides)
    plan = [("floor: dynamicrag --help", [*base, "--help"], "new", {}), ("cold", ask, "new", {})]
    plan += [] if args.no_index_cold else [("index only cold", ask, "new", {})]
    # The app without the console script's exit (the interpreter's teardown), alternating with the warm runs.
    with_teardown = [sys.executable, "-c", "from dynamicrag.cli import app; app()", *ask[len(base):]]
    for i in range(args.warm):
        plan += [(f"warm {i + 1}", ask, "new", {})]
        plan += [(f"teardown: warm {i + 1}, exit through the interpreter", with_teardown, "new", {})] if args.compare_teardown else []
    if args.compare_old:
        plan += [("cold, old backend", old_ask, "old", OLD_ENV)]
        plan += [(f"warm {i + 1}, old backend", old_ask, "old", OLD_ENV) for i in range(args.warm)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="dynamicrag-cold-") as cache, \
            tempfile.TemporaryDirectory(prefix="dynamicrag-cold-old-") as old_cache:
        caches = {"new": cache, "old": old_cache}
        for label, argv, which, extra_env in plan:
            env = child_env(caches[which], extra_env)
            if label == "index only cold":
                shutil.rmtree(Path(cache) / "indexes", ignore_errors=True)
            log(label)
            runs.append(ask_row(label, run_child(argv, env=env)))
        served = None
        if args.server:  # on the first cache, warm by now
            server_runs, served = server_rows(base, args, child_env(cache))
            runs += server_runs
        cached = sorted(p.name for p in Path(cache).iterdir())

    def ok(prefix: str, old: bool) -> list[dict]:
        return [r for r in runs if r["run"].startswith(prefix) and r["run"].endswith("old backend") == old
                and r["returncode"] == 0]

    warm_all, warm_old = ok("warm", False), ok("warm", True)
    warm = [r for r in warm_all if not r["run"].endswith("via server")]
    via_server = [r for r in warm_all if r["run"].endswith("via server")]
    cold, cold_old = ok("cold", False), ok("cold", True)
    teardown = ok("teardown", False)
    result = {
        "question": args.question,
        "corpus": str(args.corpus) if args.corpus else "bundled docs",
        "ask": " ".join(ask[len(base):]),
        "old_backend_options": " ".join(OLD_OPTIONS) + " with OMP_WAIT_POLICY empty",
        "runs": runs,
        "warm_mean_seconds": mean(r["seconds"] for r in warm),
        "warm_mean_seconds_old": mean(r["seconds"] for r in warm_old),
        "warm_mean_seconds_with_teardown": mean(r["seconds"] for r in teardown) if teardown else None,
        "warm_mean_seconds_via_server": mean(r["seconds"] for r in via_server) if via_server else None,
        "server": served,
        "cold_seconds": cold[0]["seconds"] if cold else None,
        "cold_seconds_old": cold_old[0]["seconds"] if cold_old else None,
        "warm_max_peak_rss_mb": max((r["peak_rss_mb"] for r in warm), default=None),
        "cache_contents": cached,
    }
    result["warm_met"] = bool(warm) and result["warm_mean_seconds"] <= TARGET_WARM_S
    result["warm_via_server_met"] = bool(via_server) and result["warm_mean_seconds_via_server"] <= TARGET_WARM_S
    result["cold_met"] = result["cold_seconds"] is not None and result["cold_seconds"] <= TARGET_COLD_S
    result["rss_met"] = bool(warm) and result["warm_max_peak_rss_mb"] < TARGET_RSS_MB
    result["targets_met"] = result["warm_met"] and result["cold_met"] and result["rss_met"]
    path = write_result("cold_start", result, args)

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    backend_line = next((r["backend_line"] for r in warm if r.get("backend_line")), None)
    print_header(
        args,
        f"`dynamicrag {result['ask']}` on {result['corpus']}, empty DYNAMICRAG_CACHE first; JSON: {path}",
        *([f"Backend: {backend_line}"] if backend_line else []),
        f"Warm: mean {fmt(result['warm_mean_seconds'], '.1f')} s (target <= {TARGET_WARM_S:.0f} s; old backend "
        f"{fmt(result['warm_mean_seconds_old'], '.1f')} s): {verdict(result['warm_met'])}",
        *([f"Warm through the Typer app, exiting with the interpreter's teardown: mean "
           f"{fmt(result['warm_mean_seconds_with_teardown'], '.1f')} s"] if teardown else []),
        *([f"Warm through a running server (`ask --server`; server start {served['startup_seconds']:.1f} s, peak RSS "
           f"{served['peak_rss_mb']:.0f} MB): mean {fmt(result['warm_mean_seconds_via_server'], '.1f')} s (target <= "
           f"{TARGET_WARM_S:.0f} s): {verdict(result['warm_via_server_met'])}"] if served else []),
        f"Cold: {fmt(result['cold_seconds'], '.1f')} s (target <= {TARGET_COLD_S:.0f} s; old backend "
        f"{fmt(result['cold_seconds_old'], '.1f')} s): {verdict(result['cold_met'])}",
        f"Warm peak RSS {fmt(result['warm_max_peak_rss_mb'], '.0f')} MB (target < {TARGET_RSS_MB:.0f} MB): "
        f"{verdict(result['rss_met'])}",
    )
    print(markdown_table(
        ["run", "wall s", "CPU s", "peak RSS MB", "exit", "k"],
        [[r["run"], f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}", f"{r['peak_rss_mb']:.0f}", r["returncode"],
          r.get("k", "-")] for r in runs],
    ))


if __name__ == "__main__":
    main()
