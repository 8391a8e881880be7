"""Before/after of each speed measure in the inference path, side by side in one process.

Each row runs the same inputs twice on the bundled SmolLM2 (transformers, CPU), once the way
the code ran before the measure (or without the lever) and once with it, after a warm-up
call; the best of --repeats timed runs is kept. Groups (``--groups``, comma-separated):

- ``loading``: model loaded once (a second ``load_backend`` is a cache hit) and index loaded
  once (a second ``load_index``).
- ``batching``: prompts of mixed length (generator prompts over 1..10 BM25
  passages) batched in input order vs sorted by length (padded tokens counted);
  ``torch.no_grad`` vs ``inference_mode``; decoding-heavy work (short prompts, long answers)
  one by one vs batched; ``n`` reranker samples with the prompt encoded ``n`` times
  (``num_return_sequences``) vs once with its KV cache repeated (``share_prefill``).
- ``dtype``: fp32 vs bf16 weights (and int8 dynamic quantisation of the linear
  layers with ``--int8``: ``torch.ao`` eager quantisation, deprecated, lm_head untied from
  the embedding) on the prefill of top-10 reranker prompts and on decoding at batch 1 and
  batch 8; each row also counts the greedy outputs identical to fp32's.
- ``prefix``: the reranker's and the generator's prompts without and with the shared-prefix
  KV cache (``prefix_cache``): the system prompt and chat header encoded once.
- ``prefill``: mixed-length prompts encoded as one left-padded batch vs one at a time
  (``prefill="rows"``, no compute spent on padding); padded tokens counted.
- ``static``: decoding-heavy batches with a dynamic vs a static KV cache.
- ``decode``: the decoding after the prompts are encoded on every thread, on every thread vs
  on one (``decode_threads=1``; the default, "auto", does it for a single sequence after a
  prompt of at most 512 tokens under PASSIVE): decoding-heavy batches at batch 1 and 8, the top-N reranker prompts with the id
  grammar and the generator prompts at batch 8 (greedy outputs compared).
- ``threads``: OpenMP's wait policy and the thread count, each in its own process (OpenMP
  reads ``OMP_WAIT_POLICY`` once, at start): unset (OpenMP's default, as before) vs ACTIVE vs
  PASSIVE with 2 threads, and 1 thread, on an idle machine and with one core kept busy by a
  busy-loop process (the loaded machine; the load of other users adds to both).

    python benchmarks/speed_work.py                       # every group, 16 prompts, n = 8
    python benchmarks/speed_work.py --groups dtype,prefix --int8
    python benchmarks/speed_work.py --quick               # smoke sizes
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import (
    MODEL_NAME,
    Timer,
    add_common_args,
    current_rss_mb,
    fmt,
    int8_backend,
    log,
    markdown_table,
    nq_setup,
    parse_args,
    print_header,
    run_child,
    write_result,
)

GROUPS = ("loading", "batching", "dtype", "prefix", "prefill", "static", "threads", "decode")
QUICK = {"questions": 4, "samples": 2, "max_new_tokens": 4, "corpus_limit": 500, "repeats": 1,
         "top_n": 3, "groups": ",".join(GROUPS)}
# Wait policies compared; "" leaves OMP_WAIT_POLICY empty, which OpenMP (libgomp) treats as
# unset: its own default, which spins for a while before sleeping (how the CLI ran before).
POLICIES = (("unset", ""), ("ACTIVE", "ACTIVE"), ("PASSIVE", "PASSIVE"))


def timed(fn, repeats: int) -> dict:
    """Best-of-``repeats`` wall and CPU seconds of ``fn()`` (the least disturbed run), with
    what the best run returned under ``result``."""
    runs = []
    for _ in range(repeats):
        with Timer() as t:
            out = fn()
        runs.append((t, out))
    best, out = min(runs, key=lambda r: r[0].wall)
    return {"wall_s": best.wall, "cpu_s": best.cpu, "result": out}


def row(measure: str, workload: str, before: dict, after: dict, **extra) -> dict:
    before, after = dict(before), dict(after)
    before.pop("result", None)
    after.pop("result", None)
    return {"measure": measure, "workload": workload, "before": before, "after": after,
            "speedup": before["wall_s"] / after["wall_s"] if after["wall_s"] > 0 else None, **extra}


def run_generate(llm, chats, params) -> dict:
    """``llm.generate`` with the token counts and texts of its outputs."""
    out = llm.generate(chats, params)
    return {"texts": [c[0].text for c in out], "prompt_tokens": sum(c[0].prompt_tokens for c in out),
            "completion_tokens": sum(c[0].completion_tokens for c in out)}


def rates(side: dict) -> dict:
    """Prompt and generated tokens per second of a timed :func:`run_generate`."""
    res = side["result"]
    return {**side, "prompt_tokens": res["prompt_tokens"], "completion_tokens": res["completion_tokens"],
            "prompt_tok_s": res["prompt_tokens"] / side["wall_s"],
            "generated_tok_s": res["completion_tokens"] / side["wall_s"]}


def one_at_a_time(llm, chats, params) -> dict:
    """:func:`run_generate` for each chat alone (batch 1), summed."""
    parts = [run_generate(llm, [chat], params) for chat in chats]
    return {"texts": [t for p in parts for t in p["texts"]], "prompt_tokens": sum(p["prompt_tokens"] for p in parts),
            "completion_tokens": sum(p["completion_tokens"] for p in parts)}


def same_texts(a: dict, b: dict) -> str:
    ta, tb = a["result"]["texts"], b["result"]["texts"]
    return f"{sum(x == y for x, y in zip(ta, tb))}/{len(ta)}"


# --- the threads group: one child process per setting ------------------------------------------


def threads_child(args: argparse.Namespace) -> dict:
    """Child mode: prefill and decode timings of the default backend under this process's
    OpenMP environment (set by the parent)."""
    import os

    from dynamicrag.llm import SamplingParams
    from dynamicrag.llm.transformers_backend import TransformersBackend
    from dynamicrag.prompts import load_style, reranker_chat

    setup = nq_setup(args)
    [ex] = setup.top(args.top_n, setup.examples[:1])
    chat = reranker_chat(load_style("default"), ex.question, ex.passages)
    llm = TransformersBackend(prefix_cache=False)  # every prefill encodes the whole prompt
    prefill = SamplingParams(max_new_tokens=1)
    decode = SamplingParams(max_new_tokens=4 * args.max_new_tokens)
    short = [{"role": "user", "content": ex.question}]
    llm.generate([chat], prefill)  # warm-up
    first = timed(lambda: run_generate(llm, [chat], prefill), max(2, args.repeats))
    second = timed(lambda: run_generate(llm, [short], decode), max(2, args.repeats))
    return {"prefill": rates(first), "decode": rates(second), "threads": llm.describe()["threads"],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_1min": os.getloadavg()[0]}


def threads_rows(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Each wait policy and thread count in a fresh process, on an idle and a loaded machine."""
    import os

    runs = []
    for state in ("idle", "one core busy"):
        busy = None
        if state != "idle":  # a process of ours keeping one core busy, stopped below
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            settings = [(name, value, 2) for name, value in POLICIES] + [("PASSIVE", "PASSIVE", 1)]
            for name, value, threads in settings:
                log(f"threads: {state}, OMP_WAIT_POLICY {name}, {threads} thread(s)")
                env = {**os.environ, "OMP_WAIT_POLICY": value, "OMP_NUM_THREADS": str(threads),
                       "DYNAMICRAG_THREADS": str(threads)}
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "child.json"
                    argv = [sys.executable, __file__, "--threads-child", "--child-out", str(out),
                            "--top-n", str(args.top_n), "--max-new-tokens", str(args.max_new_tokens),
                            "--repeats", str(args.repeats)]
                    argv += ["--corpus-limit", str(args.corpus_limit)] if args.corpus_limit else []
                    child = run_child(argv, env=env)
                    if child.returncode != 0 or not out.is_file():
                        log(f"threads child failed (exit {child.returncode}): {child.error_tail()}")
                        continue
                    result = json.loads(out.read_text())
                runs.append({"machine": state, "policy": name, "threads": threads, **result})
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()

    def find(state: str, policy: str, threads: int) -> dict | None:
        return next((r for r in runs if (r["machine"], r["policy"], r["threads"]) == (state, policy, threads)), None)

    rows = []
    for state in ("idle", "one core busy"):
        passive = find(state, "PASSIVE", 2)
        for measure, other in (("OMP_WAIT_POLICY=PASSIVE vs unset", find(state, "unset", 2)),
                               ("OMP_WAIT_POLICY=PASSIVE vs ACTIVE", find(state, "ACTIVE", 2)),
                               ("1 thread vs 2 (PASSIVE)", None)):
            before, after = (other, passive) if other is not None else (passive, find(state, "PASSIVE", 1))
            if before is None or after is None:
                continue
            for part, workload in (("prefill", f"one top-{args.top_n} reranker prompt, prefill"),
                                   ("decode", f"one question, {4 * args.max_new_tokens} new tokens, batch 1")):
                rows.append(row(f"{measure}, {state}", workload, before[part], after[part],
                                before_setting=f"{before['policy']}, {before['threads']} threads",
                                after_setting=f"{after['policy']}, {after['threads']} threads"))
    return rows, runs


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, questions=16, llm=False)
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"Comma-separated, of {', '.join(GROUPS)}")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top-n", type=int, default=10, help="Passages in the reranker prompts (infer's top-N)")
    ap.add_argument("--samples", type=int, default=8, help="n of the sampling row (paper: 8)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="Tokens generated per prompt (decoding rows: 4x)")
    ap.add_argument("--repeats", type=int, default=2, help="Timed runs per variant (best kept)")
    ap.add_argument("--int8", action="store_true", help="Also int8 dynamic quantisation in the dtype group")
    ap.add_argument("--threads-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parse_args(ap, QUICK)
    if args.threads_child:
        args.questions = 1
        result = threads_child(args)
        for part in ("prefill", "decode"):
            result[part].pop("result", None)
        args.child_out.write_text(json.dumps(result))
        return
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        ap.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")

    import torch

    from dynamicrag.llm import SamplingParams, load_backend
    from dynamicrag.llm.transformers_backend import TransformersBackend
    from dynamicrag.prompts import generator_chat, load_style, reranker_chat
    from dynamicrag.retrieve import build_index, clear_index_cache, load_index
    from dynamicrag.run_settings import run_settings

    setup = nq_setup(args)
    style = load_style("default")
    rows: list[dict] = []
    b = args.batch_size

    # Model loaded once per process: load_backend caches by (name, model, options).
    rss = current_rss_mb()
    with Timer() as first:
        llm = load_backend("transformers", batch_size=b)  # the default backend
    grown = current_rss_mb() - rss
    if "loading" in groups:
        with Timer() as second:
            again = load_backend("transformers", batch_size=b)
        assert again is llm
        rows.append(row("model loaded once", "load_backend twice", {"wall_s": first.wall, "cpu_s": first.cpu},
                        {"wall_s": second.wall, "cpu_s": second.cpu}, rss_growth_mb=grown))
        folder = Path(tempfile.mkdtemp(prefix="dynamicrag-speed-"))
        try:
            build_index(setup.passages, folder / "bm25", show_progress=False)
            clear_index_cache()
            with Timer() as first:
                load_index(folder / "bm25")
            with Timer() as second:
                load_index(folder / "bm25")
            rows.append(row("index loaded once", f"load_index twice, BM25 of {len(setup.passages)} passages",
                            {"wall_s": first.wall, "cpu_s": first.cpu}, {"wall_s": second.wall, "cpu_s": second.cpu}))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # Workloads: mixed-length generator prompts (question i gets 1 + 7i mod 10 passages, an
    # order that mixes short and long), top-N reranker prompts, and the questions alone.
    examples = setup.top(args.top_n)
    chats = [generator_chat(style, ex.question, ex.passages[: 1 + (i * 7) % args.top_n], ex.task)
             for i, ex in enumerate(examples)]
    rerank = [reranker_chat(style, ex.question, ex.passages) for ex in examples]
    short = [[{"role": "user", "content": ex.question}] for ex in examples]
    prompts = [llm.encode(c) for c in chats]
    greedy = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    ids_only = SamplingParams(max_new_tokens=args.max_new_tokens, id_list_max=args.top_n)
    decode = SamplingParams(max_new_tokens=4 * args.max_new_tokens, temperature=0.0)
    prefill_only = SamplingParams(max_new_tokens=1)

    def padded_tokens(lengths: list[int], order: list[int]) -> int:
        return sum(len(chunk) * max(lengths[i] for i in chunk) for chunk in (order[s:s + b] for s in range(0, len(order), b)))

    def variant(**options) -> TransformersBackend:
        """A backend on the same loaded model with other options (load_backend-cached)."""
        return load_backend("transformers", batch_size=options.pop("batch_size", b), **options)

    llm.generate(chats[:2], greedy)  # warm-up: first passes, the prefix cache's entries
    llm.generate(rerank[:2], ids_only)  # ... and the id grammar's token table

    if "batching" in groups:
        identity = list(range(len(prompts)))
        by_length = sorted(identity, key=lambda i: len(prompts[i]))
        lengths = [len(p) for p in prompts]
        batched = variant(prefill="batch", prefix_cache=False)  # the padded batches sorting is about

        def in_order(order: list[int], backend, grad_context=torch.inference_mode) -> None:
            with grad_context():
                for s in range(0, len(order), b):
                    backend._generate_batch([prompts[i] for i in order[s:s + b]], greedy)

        rows.append(row(
            "length-sorted batches", f"{len(prompts)} generator prompts of 1-{args.top_n} passages, batch {b}, "
            "padded batch prefill",
            {**timed(lambda: in_order(identity, batched), args.repeats), "padded_tokens": padded_tokens(lengths, identity)},
            {**timed(lambda: in_order(by_length, batched), args.repeats), "padded_tokens": padded_tokens(lengths, by_length)},
            prompt_tokens=sum(lengths),
        ))
        rows.append(row(
            "torch.inference_mode", f"the same {len(prompts)} prompts, sorted batches, default backend",
            timed(lambda: in_order(by_length, llm, torch.no_grad), args.repeats),
            timed(lambda: in_order(by_length, llm, torch.inference_mode), args.repeats),
        ))
        rows.append(row(
            "batched decoding", f"{len(short)} questions alone, {decode.max_new_tokens} new tokens, batch 1 vs {b}",
            rates(timed(lambda: one_at_a_time(llm, short, decode), args.repeats)),
            rates(timed(lambda: run_generate(llm, short, decode), args.repeats)),
        ))
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.4, n=args.samples, seed=0)

        def sample(shared: bool) -> None:
            llm.share_prefill = shared
            try:
                llm.generate(rerank[:2], sampling)
            finally:
                llm.share_prefill = True

        rows.append(row(
            "shared prefill for n samples", f"2 reranker prompts x n = {args.samples}, temperature 0.4",
            timed(lambda: sample(False), args.repeats), timed(lambda: sample(True), args.repeats),
            prompt_tokens=sum(llm.count_tokens(c) for c in rerank[:2]),
        ))

    if "dtype" in groups:
        fp32 = variant(dtype="float32")
        others = [("bf16 weights", variant(dtype="bfloat16"))]
        if args.int8:
            others.append(("int8 dynamic quantisation", int8_backend(fp32, b)))
        workloads = [
            (f"prefill: {len(rerank[:b])} top-{args.top_n} reranker prompts, 1 new token",
             lambda x: run_generate(x, rerank[:b], prefill_only)),
            (f"decoding: {len(short[:4])} questions one at a time, {decode.max_new_tokens} new tokens",
             lambda x: one_at_a_time(x, short[:4], decode)),
            (f"decoding: {len(short[:b])} questions, batch {b}, {decode.max_new_tokens} new tokens",
             lambda x: run_generate(x, short[:b], decode)),
            (f"reranker: {len(rerank)} top-{args.top_n} prompts, batch {b}, id grammar",
             lambda x: run_generate(x, rerank, ids_only)),
        ]
        for name, other in others:
            for workload, fn in workloads:
                fn(other)  # warm-up
                before, after = timed(lambda: fn(fp32), args.repeats), timed(lambda: fn(other), args.repeats)
                rows.append(row(name, workload, rates(before), rates(after), identical_to_fp32=same_texts(before, after)))

    if "prefix" in groups:
        off = variant(prefix_cache=False)
        for workload, work in ((f"{len(rerank)} top-{args.top_n} reranker prompts, batch {b}, id grammar", (rerank, ids_only)),
                               (f"{len(chats)} generator prompts of 1-{args.top_n} passages, batch {b}", (chats, greedy))):
            before = timed(lambda: run_generate(off, *work), args.repeats)
            after = timed(lambda: run_generate(llm, *work), args.repeats)
            first = llm.encode(work[0][0])
            shared = max((len(e.tokens) for es in llm._prefixes._entries.values() for e in es
                          if list(e.tokens) == first[:len(e.tokens)]), default=0)  # this role's prefix
            rows.append(row("shared-prefix KV cache", workload, rates(before), rates(after),
                            identical=same_texts(before, after), prefix_tokens=shared))

    if "prefill" in groups:
        batch_prefill = variant(prefill="batch", prefix_cache=False)
        row_prefill = variant(prefill="rows", prefix_cache=False)
        for workload, (work, params) in (
            (f"{len(chats)} generator prompts of 1-{args.top_n} passages, batch {b}", (chats, greedy)),
            (f"{len(rerank)} top-{args.top_n} reranker prompts, batch {b}, id grammar", (rerank, ids_only)),
        ):
            lengths = [len(llm.encode(c)) for c in work]
            order = sorted(range(len(work)), key=lambda i: lengths[i])
            before = timed(lambda: run_generate(batch_prefill, work, params), args.repeats)
            after = timed(lambda: run_generate(row_prefill, work, params), args.repeats)
            rows.append(row("prefill one prompt at a time", workload,
                            {**rates(before), "padded_tokens": padded_tokens(lengths, order)},
                            {**rates(after), "padded_tokens": sum(lengths)}, identical=same_texts(before, after)))

    if "static" in groups:
        for batch in (1, b):
            dynamic, static = variant(batch_size=batch), variant(batch_size=batch, kv_cache="static")
            work = short if batch > 1 else short[:4]
            run_generate(static, work[:batch], decode)  # warm-up (the static cache's first allocation)
            before = timed(lambda: run_generate(dynamic, work, decode), args.repeats)
            after = timed(lambda: run_generate(static, work, decode), args.repeats)
            rows.append(row("static KV cache", f"{len(work)} questions alone, batch {batch}, {decode.max_new_tokens} new tokens",
                            rates(before), rates(after), identical=same_texts(before, after)))

    if "decode" in groups:
        for batch in (1, b):
            every, one = variant(batch_size=batch, decode_threads=None), variant(batch_size=batch, decode_threads=1)
            work = short if batch > 1 else short[:4]
            before = timed(lambda: run_generate(every, work, decode), args.repeats)
            after = timed(lambda: run_generate(one, work, decode), args.repeats)
            rows.append(row("decoding on 1 thread",
                            f"{len(work)} questions alone, batch {batch}, {decode.max_new_tokens} new tokens",
                            rates(before), rates(after), identical=same_texts(before, after)))
        every, one = variant(decode_threads=None), variant(decode_threads=1)
        for workload, (work, params) in (
            (f"{len(rerank)} top-{args.top_n} reranker prompts, batch {b}, id grammar", (rerank, ids_only)),
            (f"{len(chats)} generator prompts of 1-{args.top_n} passages, batch {b}", (chats, greedy)),
        ):
            before = timed(lambda: run_generate(every, work, params), args.repeats)
            after = timed(lambda: run_generate(one, work, params), args.repeats)
            rows.append(row("decoding on 1 thread", workload, rates(before), rates(after),
                            identical=same_texts(before, after)))

    thread_runs = []
    if "threads" in groups:
        more, thread_runs = threads_rows(args)
        rows += more

    result = {"model": MODEL_NAME, "batch_size": b, "top_n": args.top_n, "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats, "groups": groups, "rows": rows, "thread_runs": thread_runs,
              "settings": run_settings(llm)}
    path = write_result("speed_work", result, args)
    described = llm.describe()
    print_header(args, f"{MODEL_NAME}, transformers; default backend: {described['dtype_reason']}, prefix cache "
                       f"{'on' if described['prefix_cache'] else 'off'}, prefill {described['prefill']}, "
                       f"{described['threads']} threads; {args.max_new_tokens} new tokens per prompt "
                       f"({decode.max_new_tokens} in decoding rows); best of {args.repeats} timed runs after a "
                       f"warm-up; JSON: {path}")

    def seconds(s: float) -> str:
        return f"{s * 1000:.1f} ms" if s < 0.1 else f"{s:.2f} s"

    def cell(side: dict) -> str:
        text = f"{seconds(side['wall_s'])} ({seconds(side['cpu_s'])} CPU)"
        if side.get("prompt_tok_s") and side.get("prompt_tokens"):
            text += f", {side['prompt_tok_s']:.0f} prompt tok/s"
        if side.get("generated_tok_s") and side.get("completion_tokens"):
            text += f", {side['generated_tok_s']:.1f} gen tok/s"
        return text + (f", {side['padded_tokens']:,} padded tokens" if "padded_tokens" in side else "")

    def speedup(r: dict) -> str:  # a cache hit costs microseconds: a ratio would mean nothing
        return "cache hit" if r["after"]["wall_s"] < 1e-3 else fmt(r["speedup"], ".2f") + "x"

    def note(r: dict) -> str:
        parts = [f"{r['before_setting']} -> {r['after_setting']}"] if "before_setting" in r else []
        for key, label in (("identical_to_fp32", "same text as fp32"), ("identical", "same text"),
                           ("prefix_tokens", "prefix tokens")):
            if key in r:
                parts.append(f"{label} {r[key]}")
        return "; ".join(parts) or "-"

    print(markdown_table(
        ["measure", "workload", "before", "after", "speedup (wall)", "notes"],
        [[r["measure"], r["workload"], cell(r["before"]), cell(r["after"]), speedup(r), note(r)] for r in rows],
    ))
    log("done")


if __name__ == "__main__":
    sys.exit(main())
