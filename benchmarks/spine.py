"""Inference-spine figures on the shared NQ data, side by side in one run.

    python benchmarks/spine.py [--questions 20] [--top-n 10] [--json benchmarks/results/spine.json]
    python benchmarks/spine.py --quick      # smoke run: 2 questions, top-3, 16-token answers

1. BM25 index build over the NQ corpus (2655 gold passages of nq-open-oracle, each kept once,
   plus the 1000-passage Wikipedia sample), through the same code as `dynamicrag index`.
2. Retrieval recall@20 over all 2655 NQ questions: gold passage retrieved, and a gold answer
   contained in some retrieved passage.
3. `infer` seconds per question with the default (bundled) model, free and constrained
   reranker decoding, on the first --questions questions with the index's top-N passages.
Prints a markdown table last and writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import DATA, parse_args, peak_rss_mb, print_header, write_result

from dynamicrag.data import load_corpus, load_examples
from dynamicrag.evaluate import contains_answer
from dynamicrag.generate import Generator
from dynamicrag.llm import load_backend
from dynamicrag.pipeline import Pipeline
from dynamicrag.rerank import DynamicReranker
from dynamicrag.retrieve import build_index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=200, help="Generator's answer cap (paper: 200)")
    ap.add_argument("--json", type=Path, default=None, help="Default: results/spine.json (.quick.json with --quick)")
    args = parse_args(ap, {"questions": 2, "top_n": 3, "max_new_tokens": 16})

    oracle = DATA / "nq" / "nq-open-oracle.jsonl.gz"
    examples = load_examples(oracle)
    start = time.perf_counter()
    passages = load_corpus(oracle) + load_corpus(DATA / "nq" / "flashrag_wiki_sample.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        retriever = build_index(passages, Path(tmp) / "nq", kind="bm25", show_progress=False)
        build_s = time.perf_counter() - start

        start = time.perf_counter()
        hits = retriever.search([ex.question for ex in examples], k=20)
        search_s = time.perf_counter() - start
    gold_text = [ex.passages[0].text for ex in examples]
    gold_recall = sum(any(p.text == g for p in row) for row, g in zip(hits, gold_text)) / len(examples)
    answer_recall = sum(
        any(contains_answer(p.text, ex.answers) for p in row) for row, ex in zip(hits, examples)
    ) / len(examples)

    backend = load_backend("transformers")
    runs = {}
    subset = [ex.model_copy(update={"passages": []}) for ex in examples[: args.questions]]
    for label, constrained in (("free", False), ("constrained", True)):
        pipeline = Pipeline(
            DynamicReranker(backend, constrained=constrained), Generator(backend, max_new_tokens=args.max_new_tokens),
            retriever=retriever, top_n=args.top_n,
        )
        start = time.perf_counter()
        records = [r for i in range(0, len(subset), 8) for r in pipeline.run(subset[i : i + 8])]
        seconds = time.perf_counter() - start
        ok = [r for r in records if not r["error"]]
        runs[label] = {
            "seconds_per_question": seconds / len(records),
            "well_formed": sum(bool(r["well_formed"]) for r in records) / len(records),
            "failed": len(records) - len(ok),
            "mean_k": sum(len(r["selected"]) for r in ok) / max(len(ok), 1),
            "match": sum(contains_answer(r["answer"] or "", r["answers"]) for r in records) / len(records),
        }

    result = {
        "corpus_passages": len(passages),
        "bm25_build_seconds": build_s,
        "bm25_search_questions_per_second": len(examples) / search_s,
        "recall_at_20_gold_passage": gold_recall,
        "recall_at_20_answer": answer_recall,
        "infer_questions": len(subset),
        "infer_top_n": args.top_n,
        "infer_max_new_tokens": args.max_new_tokens,
        "infer": runs,
        "peak_rss_mb": peak_rss_mb(),
    }
    path = write_result("spine", result, args)

    print_header(args, f"corpus {len(passages)} passages; {len(examples)} NQ questions; JSON: {path}")
    print("| figure | value |\n|---|---|")
    print(f"| BM25 index build (load + index) | {build_s:.2f} s |")
    print(f"| BM25 search | {result['bm25_search_questions_per_second']:.0f} questions/s |")
    print(f"| recall@20, gold passage | {gold_recall:.1%} |")
    print(f"| recall@20, answer in a passage | {answer_recall:.1%} |")
    for label, r in runs.items():
        print(
            f"| infer, {label} reranker, top-{args.top_n}, {len(subset)} q | {r['seconds_per_question']:.1f} s/question; "
            f"well-formed {r['well_formed']:.0%}; failed {r['failed']}; mean k {r['mean_k']:.2f}; match {r['match']:.0%} |"
        )
    print(f"| peak RSS | {result['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
