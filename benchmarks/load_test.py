"""Load test of `dynamicrag serve`: latency, throughput and errors as concurrency grows.

    python benchmarks/load_test.py --fake-latency 200          # synthetic model: server overhead, batching
    python benchmarks/load_test.py                             # the real bundled model (full: 64 requests/level)
    python benchmarks/load_test.py --quick                     # real model, smoke run (about two minutes)
    python benchmarks/load_test.py --fake-latency 200 --quick  # synthetic model, smoke run

The server runs in its own process on loopback (a free port), so its CPU is not shared with the
clients' event loop and its peak RSS is its own (``os.wait4``):

* real model (default): the ``dynamicrag serve`` command itself, on the bundled
  SmolLM2-135M-Instruct through transformers (``--model`` for another), constrained reranker.
* ``--fake-latency MS``: this script in server mode, the same app (``create_app``) over a
  synthetic backend that sleeps MS per ``generate`` call whatever the batch size (like a GPU
  engine with spare batch capacity), which shows the server's own overhead and what
  micro-batching buys.

For each concurrency level (--levels) the script sends --requests requests from that many
concurrent clients (each sends its next request when the previous one is answered) and stops
sending after --level-seconds. Requests are small: ``/v1/rerank`` (``--endpoint answer`` adds
the generator) of --passages NQ passages
(the question's gold passage among others) cut to their first --passage-words words, so the
reranker's id list is a few tokens. Reported per level: p50/p99 latency of the answered
requests, throughput (200s per second), errors by status, lost requests (sent without any HTTP
answer), the server's mean batch, and the check that matters: zero 5xx and zero lost requests
while the clients do not exceed the queue bound (``clients <= --max-queue``). Prints a markdown
table last and writes JSON (results/load_test.json for the fake model, load_test_real.json for
the real one; ``.quick`` before ``.json`` for smoke runs).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from _common import (
    NQ_ORACLE,
    RESULTS,
    fmt,
    free_port,
    log,
    markdown_table,
    parse_args,
    print_header,
    start_service,
    write_result,
)

try:
    import httpx2 as httpx  # the maintained successor, what openai and starlette use here
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

QUICK = {"requests": 4, "levels": "1,4", "level_seconds": 60.0}


class SyntheticBackend:
    """Sleeps ``latency_s`` per generate() call, whatever the batch size; the reranker gets
    ``[1], [2]``, the generator a phrase."""

    name = "synthetic"

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.model = f"synthetic-{latency_s * 1000:g}ms"

    def count_tokens(self, chat) -> int:
        return sum(len(m["content"].split()) for m in chat)

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model, "latency_s": self.latency_s}

    def generate(self, chats, params):
        from dynamicrag.llm.base import Completion

        time.sleep(self.latency_s)
        out = []
        for chat in chats:
            reranking = params.id_list_max is not None or "identifiers" in chat[0]["content"]
            text = "[1], [2]" if reranking else "a synthetic answer"
            out.append([Completion(text, self.count_tokens(chat), 4)] * params.n)
        return out


def serve_fake(args: argparse.Namespace) -> None:
    """Server mode: the real app over :class:`SyntheticBackend`, in the foreground."""
    import uvicorn

    from dynamicrag.generate import Generator
    from dynamicrag.rerank import DynamicReranker
    from dynamicrag.serve import ServeSettings, create_app

    backend = SyntheticBackend(args.fake_latency / 1000)
    settings = ServeSettings(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                             timeout_s=args.timeout, max_passages=max(args.passages, 10))
    app = create_app(DynamicReranker(backend), Generator(backend), settings=settings)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def server_argv(args: argparse.Namespace, port: int) -> list[str]:
    limits = ["--port", str(port), "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
              "--max-queue", str(args.max_queue), "--timeout", str(args.timeout)]
    if args.fake_latency is not None:
        return [sys.executable, __file__, "--serve-child", "--fake-latency", str(args.fake_latency),
                "--passages", str(args.passages), *limits]
    script = shutil.which("dynamicrag")
    cli = [script] if script else [sys.executable, "-c", "from dynamicrag.cli import run; run()"]
    return [*cli, "serve", "--host", "127.0.0.1", *limits, "--max-passages", str(max(args.passages, 10)),
            *(["--model", args.model] if args.model else [])]


def request_bodies(count: int, n_passages: int, words: int | None, endpoint: str, seed: int = 0) -> list[dict]:
    """``count`` request bodies: NQ questions with their gold passage among ``n_passages``."""
    rng = random.Random(seed)
    if NQ_ORACLE.exists():
        from dynamicrag.data import load_examples

        examples = load_examples(NQ_ORACLE, limit=count + n_passages)
        questions = [ex.question for ex in examples]
        pool = [{"title": ex.passages[0].title, "text": ex.passages[0].text} for ex in examples]
    else:
        questions = [f"synthetic question {i}" for i in range(count + n_passages)]
        pool = [{"title": f"doc {i}", "text": f"synthetic passage {i} " * 20} for i in range(count + n_passages)]
    if words:
        pool = [{**p, "text": " ".join(p["text"].split()[:words])} for p in pool]
    bodies = []
    for i in range(count):
        passages = rng.sample([p for j, p in enumerate(pool) if j != i], n_passages - 1)
        passages.insert(rng.randrange(n_passages), pool[i])
        bodies.append({"query" if endpoint == "rerank" else "question": questions[i], "passages": passages})
    return bodies


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def run_level(base: str, path: str, bodies: list[dict], clients: int, level_s: float, timeout_s: float) -> dict:
    """Send ``bodies`` from ``clients`` concurrent clients; stop sending after ``level_s``."""
    todo = iter(bodies)
    latencies: list[float] = []
    statuses: Counter = Counter()
    sent = 0
    start = time.perf_counter()
    deadline = start + level_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as http:

        async def client() -> None:
            nonlocal sent
            for body in todo:
                if time.perf_counter() > deadline:
                    return
                sent += 1
                t0 = time.perf_counter()
                try:
                    response = await http.post(path, json=body)
                except httpx.HTTPError as err:  # no HTTP answer: lost
                    statuses[f"no answer ({type(err).__name__})"] += 1
                    continue
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    answered = sum(n for s, n in statuses.items() if isinstance(s, int))
    return {
        "clients": clients,
        "sent": sent,
        "answered": answered,
        "ok": statuses.get(200, 0),
        "lost": sent - answered,
        "server_errors": sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500),
        "errors": {str(s): n for s, n in statuses.items() if s != 200},
        "seconds": elapsed,
        "throughput_rps": statuses.get(200, 0) / elapsed if elapsed else 0.0,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
    }


async def health(base: str, until_idle: bool, limit_s: float, server) -> dict:
    """The server's /health once it answers (and, with ``until_idle``, once no work is left)."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        end = time.monotonic() + limit_s
        while True:
            if not server.alive():
                raise RuntimeError(f"the server exited: {server.log_text()[-2000:]}")
            try:
                report = (await http.get("/health")).json()
                if not until_idle or (report["queue_depth"] == 0 and report["in_flight"] == 0):
                    return report
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > end:
                raise TimeoutError(f"the server was not ready/idle within {limit_s:.0f} s")
            await asyncio.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fake-latency", type=float, default=None, metavar="MS",
                    help="Synthetic backend sleeping MS per generate() call (default: the real bundled model)")
    ap.add_argument("--model", default=None, help="Real mode: the served model (default: bundled SmolLM2)")
    ap.add_argument("--requests", type=int, default=64, help="Requests per concurrency level")
    ap.add_argument("--levels", default="1,4,16,64", help="Concurrent clients, comma-separated")
    ap.add_argument("--endpoint", choices=("rerank", "answer"), default="rerank",
                    help="answer also runs the generator (200 tokens with the real model: slow on CPU)")
    ap.add_argument("--passages", type=int, default=5, help="Passages per request")
    ap.add_argument("--passage-words", type=int, default=30, help="Words kept per passage (0: whole passages)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=None,
                    help="Server per-request timeout in s (default: 120 fake, 600 real: a CPU batch is slow)")
    ap.add_argument("--level-seconds", type=float, default=300.0, help="Stop sending at a level after this long")
    ap.add_argument("--startup-seconds", type=float, default=600.0, help="Wait this long for the server to start")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parse_args(ap, QUICK)
    args.timeout = args.timeout or (120.0 if args.fake_latency is not None else 600.0)
    if args.serve_child:
        serve_fake(args)
        return
    levels = [int(x) for x in args.levels.split(",")]
    if args.requests < 1 or not levels or min(levels) < 1:
        ap.error("--requests and every level must be >= 1")
    real = args.fake_latency is None
    if args.json is None and real:
        args.json = RESULTS / f"load_test_real{'.quick' if args.quick else ''}.json"

    bodies = request_bodies(args.requests, args.passages, args.passage_words or None, args.endpoint)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_service(server_argv(args, port))
    log(f"server starting on {base} ({'real model' if real else f'fake latency {args.fake_latency:g} ms'})")
    rows = []
    try:
        started = time.perf_counter()
        model = asyncio.run(health(base, False, args.startup_seconds, server))["model"]
        startup_s = time.perf_counter() - started
        for clients in levels:
            before = asyncio.run(health(base, True, args.timeout, server))["batches"]
            log(f"{clients} concurrent clients, {len(bodies)} requests")
            row = asyncio.run(run_level(base, f"/v1/{args.endpoint}", bodies, clients, args.level_seconds,
                                        args.timeout + 30))
            after = asyncio.run(health(base, True, args.timeout, server))["batches"]
            batches = after["batches"] - before["batches"]
            row["mean_batch"] = (after["items"] - before["items"]) / batches if batches else 0.0
            row["within_queue_bound"] = clients <= args.max_queue
            row["check_passed"] = row["server_errors"] == 0 and row["lost"] == 0 if row["within_queue_bound"] else None
            rows.append(row)
    finally:
        stopped = server.stop()
    config = {k: v for k, v in vars(args).items() if k not in ("json", "serve_child", "port")}
    result = {"mode": "real" if real else "fake-latency", "config": config, "model": model,
              "server_startup_seconds": startup_s, "server_peak_rss_mb": stopped.peak_rss_mb,
              "server_cpu_seconds": stopped.cpu_seconds, "levels": rows}
    path = write_result("load_test", result, args)

    def rate(value: float) -> str:
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"

    checks = [r["check_passed"] for r in rows if r["check_passed"] is not None]
    print_header(
        args,
        f"`dynamicrag serve` ({'real model ' + model if real else f'FAKE LATENCY {args.fake_latency:g} ms per call'})"
        f" in its own process on loopback; /v1/{args.endpoint}, {args.passages} passages of <= {args.passage_words or 'all'} "
        f"words; max_batch {args.max_batch}, max_queue {args.max_queue}; server start {startup_s:.1f} s, peak RSS "
        f"{stopped.peak_rss_mb:.0f} MB; JSON: {path}",
        f"Zero 5xx and zero lost requests within the queue bound: {'passed' if all(checks) else 'FAILED'} "
        f"({sum(checks)}/{len(checks)} levels)",
    )
    print(markdown_table(
        ["clients", "sent", "ok", "errors", "lost", "p50 ms", "p99 ms", "req/s", "mean batch", "check"],
        [[r["clients"], r["sent"], r["ok"], ", ".join(f"{s}: {n}" for s, n in r["errors"].items()) or "-", r["lost"],
          fmt(r["p50_ms"], ".0f"), fmt(r["p99_ms"], ".0f"), rate(r["throughput_rps"]), f"{r['mean_batch']:.1f}",
          {True: "pass", False: "FAIL", None: "over bound"}[r["check_passed"]]] for r in rows],
    ))


if __name__ == "__main__":
    main()
