"""Cold start vs warm runs of ``dynamicrag ask``: wall time and peak RSS of each process.

    python benchmarks/cold_start.py                  # full: cold, index-only cold, 3 warm runs
    python benchmarks/cold_start.py --quick          # smoke run: cold + 1 warm, 16-token answers

Runs, each a fresh ``dynamicrag ask QUESTION --json`` process with ``DYNAMICRAG_CACHE`` set
to a new temporary folder (the user's own cache, and the user's kept processes, are neither
read nor touched):

1. ``cold``: ``ask`` as it runs by default, the cache empty: it starts the background process
   that keeps the models loaded (``ask --keep-alive``, 5 min), which converts the bundled
   SmolLM2 GGUF into a transformers checkpoint and builds the BM25 index before answering.
2. ``warm`` x --warm: ``ask`` again by default, each with a new question (a question asked
   again would find its whole prompt in the kept process's prefix cache): the kept process
   answers; this process pays the question and its own start. The kept process's peak RSS is
   read, then ``dynamicrag stop`` ends it.
3. ``index only cold``: ``--keep-alive 0`` (everything in the asking process), the converted
   model kept and the index folder deleted, so the run builds the index again (separates the
   two one-time costs; ``--no-index-cold`` skips it).
4. ``warm i, in this process`` x --warm: ``--keep-alive 0``: imports, model load, index load,
   rerank and answer in one fresh process (what every ``ask`` paid before the kept process).

5. With ``--server`` (the default), ``dynamicrag serve --corpus`` on the same cache (its start
   until ``/health`` answers is timed), then the question and --warm other questions as
   ``dynamicrag ask QUESTION --server URL --json`` processes.
5b. With ``--compare-teardown`` (the default), each in-process warm run is followed by the same
   command through the Typer app itself (``python -c "from dynamicrag.cli import app; app()" ask ...``),
   which ends the way every Python process does, tearing the interpreter down; the console
   script (``dynamicrag.cli.run``) ends ``ask`` without that teardown.
6. With ``--compare-old`` (the default), the same cold run in a second empty cache and the
   same in-process warm runs with the transformers backend as it was before the speed work
   (``--keep-alive 0 --backend-option dtype=float32 prefix_cache=false prefill=batch`` and
   OpenMP's own wait policy), so the closing figures have the old ones beside them from the
   same run.

Also ``dynamicrag --help`` as the floor (interpreter start and the CLI's imports). Each
process is measured on its own with ``os.wait4`` (wall seconds, CPU seconds, peak RSS).
"Cold" is cold for the project's cache only: the operating system's file cache may still hold
the GGUF and the libraries. The question defaults to one about the bundled corpus (the
project's docs), which ``ask`` uses when --corpus is not given. Targets: a warm run at most
5 s and a cold one at most 30 s (both as ``ask`` runs by default), under 3 GB RSS; the
in-process and server runs are reported beside them. Prints a markdown table last and writes JSON.
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
from dynamicrag.serve.keep_alive import KEEP_ALIVE_ENV

QUICK = {"warm": 1, "max_new_tokens": 16, "no_index_cold": True}
TARGET_WARM_S, TARGET_COLD_S, TARGET_RSS_MB = 5.0, 30.0, 3000.0
# The transformers backend before the speed work; an empty OMP_WAIT_POLICY is OpenMP's own default.
OLD_OPTIONS = ["--keep-alive", "0", "--backend-option", "dtype=float32", "--backend-option", "prefix_cache=false",
               "--backend-option", "prefill=batch"]
OLD_ENV = {"OMP_WAIT_POLICY": ""}
# The warm questions to a kept process or the server, after --question: each new to it (about the bundled docs).
WARM_QUESTIONS = ("How is the reranker trained?", "Which backends can run the models?",
                    "What does the match metric measure?", "How does the reranker choose how many passages?")


def dynamicrag_command() -> list[str]:
    """The installed ``dynamicrag`` console script, else the same entry point through python."""
    script = shutil.which("dynamicrag")
    return [script] if script else [sys.executable, "-c", "from dynamicrag.cli import run; run()"]


def child_env(cache: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment: this one, with its own project cache, the hub offline and
    ``ask``'s default keep-alive (the runs say where they set another)."""
    env = {k: v for k, v in os.environ.items() if k != KEEP_ALIVE_ENV}
    return {**env, "DYNAMICRAG_CACHE": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra or {})}


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


def kept_process_usage(cache: Path) -> dict | None:
    """The kept process of ``cache`` (``ask --keep-alive``): its pid and peak RSS so far
    (``VmHWM``, Linux; None elsewhere), read before it is stopped."""
    states = sorted((cache / "kept").glob("*.json"))
    if not states:
        return None
    pid = json.loads(states[0].read_text())["pid"]
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {"pid": pid, "peak_rss_mb": None}
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return {"pid": pid, "peak_rss_mb": kb / 1024}


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
        questions = [args.question, *(WARM_QUESTIONS * args.warm)[:args.warm]]
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
    options = ["--corpus", str(args.corpus.resolve())] if args.corpus else []
    options += ["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else []
    ask = [*base, "ask", args.question, "--json", *options]
    here = [*ask, "--keep-alive", "0"]
    old_ask = [*ask, *OLD_OPTIONS]
    questions = (WARM_QUESTIONS * args.warm)[:args.warm]
    # (label, command, which cache: "new" or "old", environment overrides)
    plan = [("floor: dynamicrag --help", [*base, "--help"], "new", {}), ("cold", ask, "new", {})]
    plan += [(f"warm {i + 1}", [*base, "ask", q, "--json", *options], "new", {}) for i, q in enumerate(questions)]
    plan += [("stop the kept process", [*base, "stop"], "new", {})]
    plan += [] if args.no_index_cold else [("index only cold, in this process", here, "new", {})]
    # The app without the console script's exit (the interpreter's teardown), alternating with the warm runs.
    with_teardown = [sys.executable, "-c", "from dynamicrag.cli import app; app()", *here[len(base):]]
    for i in range(args.warm):
        plan += [(f"warm {i + 1}, in this process", here, "new", {})]
        plan += [(f"teardown: warm {i + 1}, exit through the interpreter", with_teardown, "new", {})] if args.compare_teardown else []
    if args.compare_old:
        plan += [("cold, old backend", old_ask, "old", OLD_ENV)]
        plan += [(f"warm {i + 1}, old backend", old_ask, "old", OLD_ENV) for i in range(args.warm)]
    runs, kept = [], None
    with tempfile.TemporaryDirectory(prefix="dynamicrag-cold-") as cache, \
            tempfile.TemporaryDirectory(prefix="dynamicrag-cold-old-") as old_cache:
        caches = {"new": cache, "old": old_cache}
        try:
            for label, argv, which, extra_env in plan:
                env = child_env(caches[which], extra_env)
                if label.startswith("index only cold"):
                    shutil.rmtree(Path(cache) / "indexes", ignore_errors=True)
                if label == "stop the kept process":
                    kept = kept_process_usage(Path(cache))
                log(label)
                row = ask_row(label, run_child(argv, env=env))
                runs.append({**row, "question": argv[len(base) + 1]} if argv[len(base)] == "ask" else row)
            served = None
            if args.server:  # on the first cache, warm by now
                server_runs, served = server_rows(base, args, child_env(cache))
                runs += server_runs
        finally:  # no kept process outlives its cache
            for folder in caches.values():
                run_child([*base, "stop"], env=child_env(folder))
        cached = sorted(p.name for p in Path(cache).iterdir())

    def ok(prefix: str, suffix: str = "") -> list[dict]:
        return [r for r in runs if r["run"].startswith(prefix) and r["returncode"] == 0
                and (r["run"].endswith(suffix) if suffix else "," not in r["run"])]

    warm, warm_here, warm_old = ok("warm"), ok("warm", "in this process"), ok("warm", "old backend")
    via_server = ok("warm", "via server")
    cold, cold_old = ok("cold"), ok("cold", "old backend")
    teardown = ok("teardown", "interpreter")
    rss = [r["peak_rss_mb"] for r in warm + warm_here] + ([kept["peak_rss_mb"]] if kept and kept["peak_rss_mb"] else [])
    result = {
        "question": args.question,
        "corpus": str(args.corpus) if args.corpus else "bundled docs",
        "ask": " ".join(ask[len(base):]),
        "old_backend_options": " ".join(OLD_OPTIONS) + " with OMP_WAIT_POLICY empty",
        "runs": runs,
        "warm_mean_seconds": mean(r["seconds"] for r in warm),
        "warm_mean_seconds_in_this_process": mean(r["seconds"] for r in warm_here) if warm_here else None,
        "warm_mean_seconds_old": mean(r["seconds"] for r in warm_old) if warm_old else None,
        "warm_mean_seconds_with_teardown": mean(r["seconds"] for r in teardown) if teardown else None,
        "warm_mean_seconds_via_server": mean(r["seconds"] for r in via_server) if via_server else None,
        "kept_process": kept,
        "server": served,
        "cold_seconds": cold[0]["seconds"] if cold else None,
        "cold_seconds_old": cold_old[0]["seconds"] if cold_old else None,
        "warm_max_peak_rss_mb": max(rss, default=None),
        "cache_contents": cached,
    }
    result["warm_met"] = bool(warm) and result["warm_mean_seconds"] <= TARGET_WARM_S
    result["warm_via_server_met"] = bool(via_server) and result["warm_mean_seconds_via_server"] <= TARGET_WARM_S
    result["cold_met"] = result["cold_seconds"] is not None and result["cold_seconds"] <= TARGET_COLD_S
    result["rss_met"] = bool(rss) and result["warm_max_peak_rss_mb"] < TARGET_RSS_MB
    result["targets_met"] = result["warm_met"] and result["cold_met"] and result["rss_met"]
    path = write_result("cold_start", result, args)

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    backend_line = next((r["backend_line"] for r in warm + warm_here if r.get("backend_line")), None)
    print_header(
        args,
        f"`dynamicrag {result['ask']}` on {result['corpus']}, empty DYNAMICRAG_CACHE first; JSON: {path}",
        *([f"Backend: {backend_line}"] if backend_line else []),
        f"Warm, as `ask` runs by default (the models kept loaded by the first): mean "
        f"{fmt(result['warm_mean_seconds'], '.1f')} s (target <= {TARGET_WARM_S:.0f} s): {verdict(result['warm_met'])}"
        + (f"; kept process peak RSS {fmt(kept['peak_rss_mb'], '.0f')} MB" if kept else ""),
        *([f"Warm in this process (`--keep-alive 0`): mean {fmt(result['warm_mean_seconds_in_this_process'], '.1f')} s "
           f"(old backend {fmt(result['warm_mean_seconds_old'], '.1f')} s)"] if warm_here else []),
        *([f"Warm in this process through the Typer app, exiting with the interpreter's teardown: mean "
           f"{fmt(result['warm_mean_seconds_with_teardown'], '.1f')} s"] if teardown else []),
        *([f"Warm through a running server (`ask --server`; server start {served['startup_seconds']:.1f} s, peak RSS "
           f"{served['peak_rss_mb']:.0f} MB): mean {fmt(result['warm_mean_seconds_via_server'], '.1f')} s (target <= "
           f"{TARGET_WARM_S:.0f} s): {verdict(result['warm_via_server_met'])}"] if served else []),
        f"Cold, as `ask` runs by default: {fmt(result['cold_seconds'], '.1f')} s (target <= {TARGET_COLD_S:.0f} s; "
        f"old backend {fmt(result['cold_seconds_old'], '.1f')} s): {verdict(result['cold_met'])}",
        f"Peak RSS of the warm runs and the kept process {fmt(result['warm_max_peak_rss_mb'], '.0f')} MB "
        f"(target < {TARGET_RSS_MB:.0f} MB): {verdict(result['rss_met'])}",
    )
    print(markdown_table(
        ["run", "wall s", "CPU s", "peak RSS MB", "exit", "k"],
        [[r["run"], f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}", f"{r['peak_rss_mb']:.0f}", r["returncode"],
          r.get("k", "-")] for r in runs],
    ))


if __name__ == "__main__":
    main()
