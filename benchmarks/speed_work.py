"""Before/after of each speed measure in the inference path, side by side in one process.

Each row runs the same inputs twice on the bundled SmolLM2 (transformers, CPU), once the way
the code ran before the measure and once as it runs now, after one warm-up call:

- **length-sorted batches**: prompts of mixed length (generator prompts over 1..10 BM25
  passages) batched in input order (before) vs sorted by length (now), so a batch pads to
  similar lengths; the padded tokens computed over are counted too.
- **batched decoding**: the questions alone (short prompts) with long answers, one by one vs
  one batch: where decoding, not prefill, dominates, as on a server with short requests.
- **torch.inference_mode**: the same batches under ``torch.no_grad`` (what ``generate`` does by
  itself) vs ``inference_mode`` (no autograd bookkeeping at all).
- **shared prefill for n samples**: ``n`` reranker samples of one 10-passage prompt, the prompt
  encoded ``n`` times (``num_return_sequences``, before) vs once with its KV cache repeated.
- **model loaded once**: a second ``load_backend`` in the process (a cache hit) vs the first.
- **index loaded once**: a second ``load_index`` vs the first.

    python benchmarks/speed_work.py            # 16 prompts, n = 8
    python benchmarks/speed_work.py --quick    # smoke sizes
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    MODEL_NAME,
    Timer,
    add_common_args,
    current_rss_mb,
    fmt,
    log,
    markdown_table,
    nq_setup,
    parse_args,
    print_header,
    write_result,
)

QUICK = {"questions": 4, "samples": 2, "max_new_tokens": 4, "corpus_limit": 500, "repeats": 1}


def timed(fn, repeats: int) -> dict:
    """Best-of-``repeats`` wall and CPU seconds of ``fn()`` (the least disturbed run)."""
    runs = []
    for _ in range(repeats):
        with Timer() as t:
            fn()
        runs.append(t)
    best = min(runs, key=lambda t: t.wall)
    return {"wall_s": best.wall, "cpu_s": best.cpu}


def row(measure: str, workload: str, before: dict, after: dict, **extra) -> dict:
    return {"measure": measure, "workload": workload, "before": before, "after": after,
            "speedup": before["wall_s"] / after["wall_s"] if after["wall_s"] > 0 else None, **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, questions=16, llm=False)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8, help="n of the sampling row (paper: 8)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="Tokens generated per prompt")
    ap.add_argument("--repeats", type=int, default=2, help="Timed runs per variant (best kept)")
    args = parse_args(ap, QUICK)

    import torch

    from dynamicrag.llm import SamplingParams, load_backend
    from dynamicrag.prompts import generator_chat, load_style, reranker_chat
    from dynamicrag.retrieve import build_index, clear_index_cache, load_index

    setup = nq_setup(args)
    style = load_style("default")
    rows = []

    # Model loaded once per process: load_backend caches by (name, model, options).
    rss = current_rss_mb()
    with Timer() as first:
        llm = load_backend("transformers", batch_size=args.batch_size)
    grown = current_rss_mb() - rss
    with Timer() as second:
        again = load_backend("transformers", batch_size=args.batch_size)
    assert again is llm
    rows.append(row("model loaded once", "load_backend twice", {"wall_s": first.wall, "cpu_s": first.cpu},
                    {"wall_s": second.wall, "cpu_s": second.cpu}, rss_growth_mb=grown))

    # Index loaded once per process.
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

    # Mixed lengths: question i gets 1 + i % 10 passages, in an order that mixes short and long.
    examples = setup.top(10)
    chats = [generator_chat(style, ex.question, ex.passages[: 1 + (i * 7) % 10], ex.task) for i, ex in enumerate(examples)]
    prompts = [llm.encode(c) for c in chats]
    greedy = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    b = args.batch_size

    def padded_tokens(order: list[int]) -> int:
        return sum(len(chunk) * max(len(prompts[i]) for i in chunk)
                   for chunk in (order[s:s + b] for s in range(0, len(order), b)))

    def input_order() -> None:
        with torch.inference_mode():
            for s in range(0, len(prompts), b):
                llm._generate_batch(prompts[s:s + b], greedy)

    def sorted_order() -> None:
        llm.generate(chats, greedy)

    llm.generate(chats[:2], greedy)  # warm-up
    identity = list(range(len(prompts)))
    by_length = sorted(identity, key=lambda i: len(prompts[i]))
    real = sum(len(p) for p in prompts)
    rows.append(row(
        "length-sorted batches", f"{len(prompts)} generator prompts of 1-10 passages, batch {b}",
        {**timed(input_order, args.repeats), "padded_tokens": padded_tokens(identity)},
        {**timed(sorted_order, args.repeats), "padded_tokens": padded_tokens(by_length)},
        prompt_tokens=real,
    ))

    def batches(grad_context) -> None:
        with grad_context():
            for s in range(0, len(by_length), b):
                llm._generate_batch([prompts[i] for i in by_length[s:s + b]], greedy)

    rows.append(row(
        "torch.inference_mode", f"the same {len(prompts)} prompts, sorted batches",
        timed(lambda: batches(torch.no_grad), args.repeats), timed(lambda: batches(torch.inference_mode), args.repeats),
    ))

    # Batching where decoding dominates: short prompts (the question alone), long answers.
    # (infer's prompts are ~1.5k tokens for ~50 generated: prefill-bound, see throughput.py.)
    short = [[{"role": "user", "content": ex.question}] for ex in examples]
    decode = SamplingParams(max_new_tokens=4 * args.max_new_tokens, temperature=0.0)

    def one_by_one() -> None:
        for chat in short:
            llm.generate([chat], decode)

    rows.append(row(
        "batched decoding", f"{len(short)} questions alone, {decode.max_new_tokens} new tokens, batch 1 vs {b}",
        timed(one_by_one, args.repeats), timed(lambda: llm.generate(short, decode), args.repeats),
    ))

    # n samples of one reranker prompt over 10 passages (DPO sampling: n = 8, temperature 0.4).
    rerank = [reranker_chat(style, ex.question, ex.passages) for ex in examples[:2]]
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.4, n=args.samples, seed=0)
    rerank_tokens = sum(llm.count_tokens(c) for c in rerank)

    def sample(shared: bool) -> None:
        llm.share_prefill = shared
        try:
            llm.generate(rerank, sampling)
        finally:
            llm.share_prefill = True

    rows.append(row(
        "shared prefill for n samples", f"{len(rerank)} reranker prompts x n = {args.samples}, temperature 0.4",
        timed(lambda: sample(False), args.repeats), timed(lambda: sample(True), args.repeats),
        prompt_tokens=rerank_tokens,
    ))

    result = {"model": MODEL_NAME, "batch_size": b, "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats, "rows": rows}
    path = write_result("speed_work", result, args)
    print_header(args, f"{MODEL_NAME}, transformers fp32; {args.max_new_tokens} new tokens per prompt; "
                       f"best of {args.repeats} timed runs after a warm-up; JSON: {path}")

    def seconds(s: float) -> str:
        return f"{s * 1000:.1f} ms" if s < 0.1 else f"{s:.2f} s"

    def cell(side: dict) -> str:
        text = f"{seconds(side['wall_s'])} ({seconds(side['cpu_s'])} CPU)"
        return text + (f", {side['padded_tokens']:,} padded tokens" if "padded_tokens" in side else "")

    def speedup(r: dict) -> str:  # a cache hit costs microseconds: a ratio would mean nothing
        return "cache hit" if r["after"]["wall_s"] < 1e-3 else fmt(r["speedup"], ".2f") + "x"

    print(markdown_table(
        ["measure", "workload", "before", "after", "speedup (wall)"],
        [[r["measure"], r["workload"], cell(r["before"]), cell(r["after"]), speedup(r)] for r in rows],
    ))
    log("done")


if __name__ == "__main__":
    sys.exit(main())
