"""Cost per query of the rerankers, side by side, with the same LLM and the same passages.

    python benchmarks/rerank_cost.py                 # full: 20 questions, N = 20, 40, 100
    python benchmarks/rerank_cost.py --quick         # smoke run, about two minutes

Passages: BM25 top-N over the shared NQ corpus (2655 nq-open-oracle gold passages, each kept
once, + the 1000-passage Wikipedia sample = 3600) for the first --questions NQ questions.
Model: the bundled SmolLM2-135M-Instruct on the transformers backend (fp32, CPU), batches of
--batch-size prompts; every LLM reranker runs on that one loaded model.

Rerankers (each on the same N passages per question):

* dynamic: DynamicRAG, one listwise call writing the needed ids; window 40 as in the paper, so
  N > 40 goes through the top-N reduction (chunks of 40, survivors, one final call; a second
  table gives chunks and survivors). Decoding is constrained to the id grammar unless --free.
* listwise: RankGPT sliding window (window 20, stride 10, one back-to-front pass), top k kept.
* pointwise-llm: monoT5-style true/false scoring of every passage with the same causal LM
  (``make_scorer("causal")``): one forward pass per passage, nothing generated; top k kept.
* top-k: no reranker (the fixed-k baseline): only the generator tokens that follow.

Per question: LLM calls (pointwise: sequences scored), prompt and generated tokens as the
backend reports them (its own tokenizer; ``Selection.calls/prompt_tokens/completion_tokens``),
reranking wall and CPU seconds (model load and a warm-up excluded), and **passage reads**:
(prompt tokens - calls x the reranker's fixed prompt) / the passages' own tokens, where the
fixed prompt is the reranker's chat for this question with no passage (counted by the same
tokenizer) and a passage's own tokens are ``title\\ntext``. About 1.0 means each passage was
read once (the dynamic reranker's target: within 10%); sliding windows read most passages
twice. Last, the generator's prompt tokens over the passages kept (k chosen vs fixed top-k).
The embedding scorer (bundled all-MiniLM-L6-v2, no LLM) gets its own small table.
Prints markdown tables, the main one last, and writes JSON.
"""

from __future__ import annotations

import argparse

from _common import (
    MODEL_NAME,
    Timer,
    UsageMeter,
    add_common_args,
    fmt,
    int_list,
    log,
    markdown_table,
    mean,
    nq_setup,
    parse_args,
    peak_rss_mb,
    print_header,
    reduction_summary,
    write_result,
)

from dynamicrag.generate import Generator
from dynamicrag.llm import load_backend
from dynamicrag.prompts import load_style, reranker_chat
from dynamicrag.rerank import DynamicReranker, TopKReranker
from dynamicrag.rerank.listwise import ListwiseReranker, window_chat
from dynamicrag.rerank.pointwise import MONOT5_TEMPLATE, EmbeddingScorer, MonoT5Scorer, PointwiseReranker
from dynamicrag.retrieve import passage_text

QUICK = {"questions": 1, "sizes": "4,8", "window": 4, "listwise_window": 4, "stride": 2,
         "corpus_limit": 500}


def own_tokens(tokenizer, example) -> int:
    """The passages' own tokens: each as ``title\\ntext``, no special tokens."""
    return sum(len(tokenizer(passage_text(p), add_special_tokens=False)["input_ids"]) for p in example.passages)


# Usage functions: (example, selection) -> (calls, prompt tokens, generated tokens, fixed prompt
# tokens per call), each counted by the backend's own tokenizer.


def chat_usage(count_tokens, empty_chat):
    """Dynamic and listwise: the Selection's own totals; fixed = the chat without passages."""
    return lambda ex, sel: (sel.calls, sel.prompt_tokens, sel.completion_tokens, count_tokens(empty_chat(ex.question)))


def monot5_usage(scorer: MonoT5Scorer):
    """Pointwise: one sequence per passage (monoT5 shows the text without its title)."""
    def tokens(text: str) -> int:
        return min(scorer.max_length, len(scorer.tokenizer(text)["input_ids"]))

    return lambda ex, sel: (
        len(ex.passages),
        sum(tokens(MONOT5_TEMPLATE.format(query=ex.question, document=p.text)) for p in ex.passages),
        0,
        tokens(MONOT5_TEMPLATE.format(query=ex.question, document="")),
    )


def no_usage(ex, sel):
    return 0, 0, 0, 0


def measure(reranker, usage_of, batch, tokenizer, generator) -> tuple[dict, list]:
    """Run one reranker over ``batch`` and its cost per question."""
    with Timer() as t:
        selections = reranker.select(batch)
    usage = [usage_of(ex, sel) for ex, sel in zip(batch, selections)]
    own = [own_tokens(tokenizer, ex) for ex in batch]
    kept = [(ex, sel) for ex, sel in zip(batch, selections) if sel.error is None]
    return {
        "calls": mean(u[0] for u in usage),
        "prompt_tokens": mean(u[1] for u in usage),
        "completion_tokens": mean(u[2] for u in usage),
        "fixed_tokens_per_call": mean(u[3] for u in usage if u[0]),
        "passage_tokens": mean(own),
        "passage_reads": (sum(u[1] - u[0] * u[3] for u in usage) / sum(own)) if any(u[0] for u in usage) else None,
        "seconds_per_query": t.wall / len(batch),
        "cpu_seconds_per_query": t.cpu / len(batch),
        "mean_k": mean(sel.k for _, sel in kept),
        "failed": len(batch) - len(kept),
        "generator_prompt_tokens": mean(generator.backend.count_tokens(generator.chat(ex, sel)) for ex, sel in kept),
    }, selections


def embedding_rows(setup, sizes: list[int], k: int) -> list[dict]:
    """The embedding scorer's cost: encoder sequences and tokens (MiniLM's, capped) per question."""
    scorer = EmbeddingScorer()
    tok, limit = scorer.encoder.tokenizer, scorer.encoder.max_seq_length
    reranker = PointwiseReranker(scorer, k=k)
    reranker.select(setup.top(3, setup.examples[:1]))  # warm-up
    rows = []
    for n in sizes:
        batch = setup.top(n)
        with Timer() as t:
            reranker.select(batch)
        tokens = [sum(min(limit, len(tok(passage_text(p))["input_ids"])) for p in ex.passages)
                  + len(tok(ex.question)["input_ids"]) for ex in batch]
        rows.append({"n": n, "sequences": n + 1, "encoder_tokens": mean(tokens),
                     "seconds_per_query": t.wall / len(batch), "limit": limit})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, questions=20)
    ap.add_argument("--sizes", default="20,40,100", help="Comma-separated N (passages per question)")
    ap.add_argument("--window", type=int, default=40, help="Dynamic reranker window (paper: 40)")
    ap.add_argument("--listwise-window", type=int, default=20, help="RankGPT window (20)")
    ap.add_argument("--stride", type=int, default=10, help="RankGPT stride (10)")
    ap.add_argument("--k", type=int, default=5, help="Passages kept by listwise, pointwise and top-k")
    ap.add_argument("--batch-size", type=int, default=8, help="Prompts per forward batch")
    ap.add_argument("--no-embedding", action="store_true", help="Skip the embedding scorer")
    args = parse_args(ap, QUICK)
    sizes = int_list(args.sizes)

    setup = nq_setup(args)
    backend = load_backend("transformers", batch_size=args.batch_size)
    meter = UsageMeter(backend)
    style = load_style("default")
    generator = Generator(backend, style)
    monot5 = MonoT5Scorer(backend.lm, backend.tokenizer, batch_size=args.batch_size)  # = make_scorer("causal")
    count = backend.count_tokens
    rerankers = {
        "dynamic": (DynamicReranker(meter, style, window=args.window, constrained=not args.free),
                    chat_usage(count, lambda q: reranker_chat(style, q, []))),
        "listwise": (ListwiseReranker(meter, k=args.k, window=args.listwise_window, stride=args.stride),
                     chat_usage(count, lambda q: window_chat(q, []))),
        "pointwise-llm": (PointwiseReranker(monot5, k=args.k), monot5_usage(monot5)),
        f"top-{args.k}": (TopKReranker(args.k), no_usage),
    }
    warm = setup.top(3, setup.examples[:1])  # first passes and the id grammar's token table
    for reranker, _ in rerankers.values():
        reranker.select(warm)

    rows, reductions = [], {}
    for n in sizes:
        batch = setup.top(n)
        for name, (reranker, usage_of) in rerankers.items():
            log(f"N={n}: {name}, {len(batch)} questions")
            meter.reset()
            row, selections = measure(reranker, usage_of, batch, backend.tokenizer, generator)
            if name in ("dynamic", "listwise"):  # the Selection's accounting = what the backend was asked
                assert meter.totals()["prompt_tokens"] == sum(s.prompt_tokens for s in selections), name
            if name == "dynamic" and n > args.window:
                reductions[n] = reduction_summary(selections, n, args.window, style)
            rows.append({"reranker": name, "n": n, **row})
    embedding = [] if args.no_embedding else embedding_rows(setup, sizes, args.k)

    result = {
        "model": backend.model, "backend": "transformers", "batch_size": args.batch_size,
        "questions": len(setup.examples), "corpus_passages": len(setup.passages),
        "dynamic_window": args.window, "dynamic_constrained": not args.free,
        "listwise_window": args.listwise_window, "listwise_stride": args.stride, "k": args.k,
        "rows": rows, "dynamic_reduction": {str(n): r for n, r in reductions.items()},
        "embedding_scorer": embedding, "peak_rss_mb": peak_rss_mb(),
    }
    path = write_result("rerank_cost", result, args)

    print_header(
        args,
        f"{len(setup.examples)} NQ questions, BM25 top-N over {len(setup.passages)} passages; {MODEL_NAME} fp32 on "
        f"transformers, batch {args.batch_size}; dynamic window {args.window}, "
        f"{'free' if args.free else 'constrained'} decoding; listwise window {args.listwise_window} stride "
        f"{args.stride}; k = {args.k}; peak RSS {result['peak_rss_mb']:.0f} MB; JSON: {path}",
        "Passage reads = (prompt tokens - calls x fixed prompt) / passages' own tokens; target: dynamic <= 1.10.",
    )
    if embedding:
        print(f"Embedding scorer (all-MiniLM-L6-v2, no LLM; MiniLM tokens, capped at {embedding[0]['limit']}):\n")
        print(markdown_table(["N", "encoder sequences/q", "encoder tokens/q", "s/q"],
                             [[r["n"], r["sequences"], f"{r['encoder_tokens']:.0f}", f"{r['seconds_per_query']:.2f}"]
                              for r in embedding]))
        print()
    if reductions:
        print(f"Dynamic reranker, top-N reduction (window {args.window}), means per question:\n")
        print(markdown_table(
            ["N", "rounds", "round-1 chunks", "round-1 survivors", "final window", "no final call", "unreadable"],
            [[n, fmt(r["rounds"], ".1f"), fmt(r["round1_chunks"], ".1f"), fmt(r["round1_survivors"]),
              fmt(r["final_window"]), f"{r['no_final_call']}/{len(setup.examples)}", r["unreadable"]]
             for n, r in reductions.items()],
        ))
        print()
    print(markdown_table(
        ["reranker", "N", "LLM calls/q", "prompt tok/q", "generated tok/q", "s/q", "CPU s/q", "passage tok/q",
         "fixed tok/call", "passage reads", "k", "failed", "generator prompt tok/q"],
        [[r["reranker"], r["n"], f"{r['calls']:.1f}", f"{r['prompt_tokens']:.0f}", f"{r['completion_tokens']:.1f}",
          f"{r['seconds_per_query']:.2f}", f"{r['cpu_seconds_per_query']:.2f}", f"{r['passage_tokens']:.0f}",
          fmt(r["fixed_tokens_per_call"], ".0f"), fmt(r["passage_reads"]), fmt(r["mean_k"]), r["failed"],
          fmt(r["generator_prompt_tokens"], ".0f")]
         for r in rows],
    ))


if __name__ == "__main__":
    main()
