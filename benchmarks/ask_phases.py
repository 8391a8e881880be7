"""Where the seconds of a warm ``dynamicrag ask`` go, phase by phase.

    python benchmarks/ask_phases.py                 # 3 fresh processes, the default ask
    python benchmarks/ask_phases.py --quick         # 1 process, 16-token answers

Each run is a fresh Python process (as a warm ``ask`` is: the model converted and the index
built already, everything else paid again) that does what ``ask`` does, with a clock between the
phases: interpreter start and the CLI's imports, ``import torch``, the rest of the library imports
(transformers, peft), building the pipeline (model, tokenizer, adapter, index), then the question:
retrieval, the query-likelihood order of the candidates, the reranker's own call (its prefill
and id list), and the generator's answer. The phases of the question are timed by wrapping the
pipeline's own methods, so nothing is computed twice. Then a new question (--next-question) in
the same process, timed by phase: what a question costs once imports, load and any first-call
cost are paid (as to a running ``dynamicrag serve``). Not the same question again: a batch of
one learns its cached prefix from the prompts seen before, so a question repeated right away
finds its whole reranker prompt cached and costs less than a new one. Each round also runs a process as the backend was before
its output projection was handed contiguous rows (``strided``: the pre-hook removed; with the
reranker adapter attached, a batched scoring pass then copies the vocabulary projection per
row; ``--no-compare-strided`` skips it) and one with transformers' own SDPA attention instead
of the backend's packed attention for a lone decoding position (``sdpa``; ``--no-compare-sdpa``
skips it) and one decoding with the model's bf16 weights instead of their int8 copy
(``bf16-decode``: ``decode_weights="model"``; ``--no-compare-decode-weights`` skips it). Prints a markdown table of the mean seconds per phase
and writes JSON. ``benchmarks/cold_start.py`` times the whole command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import fmt, log, markdown_table, mean, parse_args, print_header, write_result

QUICK = {"runs": 1, "max_new_tokens": 16}

# The child: the phases of `ask`, timed. Run with -c so the interpreter's own start is counted
# apart (the parent measures the process's wall time; the child reports its clocks from start).
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
question, max_new_tokens, variant, next_question = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
marks = {}
from dynamicrag.runtime import set_thread_env_defaults
set_thread_env_defaults()  # before torch loads, as the CLI does
import dynamicrag.cli  # the CLI's own imports (typer, rich, the package)
marks["cli imports"] = time.perf_counter()
import torch
marks["import torch"] = time.perf_counter()
import peft, transformers  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (lazy modules resolved)
marks["import transformers, peft"] = time.perf_counter()
from dynamicrag.api import DynamicRAG
options = {"answer_max_tokens": max_new_tokens} if max_new_tokens else {}
if variant == "bf16-decode":  # the backend before int8 decoding weights: bf16 for every product
    options["backend_options"] = {"decode_weights": "model"}
rag = DynamicRAG.from_documents(None, retriever="bm25", **options)
marks["load model, adapter, index"] = time.perf_counter()
lm = rag.pipeline.generator.backend.lm
if variant == "strided":  # the backend before the fix: no pre-hook making the output projection's input contiguous
    lm.get_output_embeddings()._forward_pre_hooks.clear()
if variant == "sdpa":  # the backend before the packed decoding attention: transformers' own SDPA
    lm.set_attn_implementation("sdpa")
spent = {"order": 0.0, "select": 0.0, "generate": 0.0}
def timed(name, fn):
    def wrapper(*a, **k):
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[name] += time.perf_counter() - start
    return wrapper
p = rag.pipeline
if p.reranker.order_by is not None:
    p.reranker.order_by.score = timed("order", p.reranker.order_by.score)
p.reranker.select = timed("select", p.reranker.select)
p.generator.complete = timed("generate", p.generator.complete)
start = time.perf_counter()
answer = rag.ask(question)
end = time.perf_counter()
phases = {}
last = t0
for name, at in marks.items():
    phases[name] = at - last
    last = at
phases["retrieve"] = (end - start) - spent["select"] - spent["generate"]
phases["query-likelihood order"] = spent["order"]
phases["reranker call"] = spent["select"] - spent["order"]
phases["generator"] = spent["generate"]
# A new question in this process: what a question costs once imports, load and any first-call
# cost are paid, i.e. a question to a running `serve`.
for name in spent:
    spent[name] = 0.0
start = time.perf_counter()
rag.ask(next_question)
new = {"total": time.perf_counter() - start, "query-likelihood order": spent["order"],
       "reranker call": spent["select"] - spent["order"], "generator": spent["generate"]}
print(json.dumps({"phases": phases, "in_process": end - t0, "new_question": new, "k": answer.k,
                  "error": answer.error, "answer": answer.text,
                  "order_by": type(p.reranker.order_by).__name__ if p.reranker.order_by else None}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question", default="What does the dynamic reranker write?")
    ap.add_argument("--next-question", default="How is the reranker trained?",
                    help="Asked second in each process: a warm question that is not a repeat")
    ap.add_argument("--runs", type=int, default=3, help="Fresh processes, after one that fills the caches")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="The answer's cap (0: ask's own, 64 for a short answer)")
    ap.add_argument("--no-compare-strided", dest="compare_strided", action="store_false",
                    help="Skip the processes run as before the output projection's input was made contiguous")
    ap.add_argument("--no-compare-sdpa", dest="compare_sdpa", action="store_false",
                    help="Skip the processes run with transformers' own SDPA attention (before the packed decoding attention)")
    ap.add_argument("--no-compare-decode-weights", dest="compare_decode_weights", action="store_false",
                    help="Skip the processes that decode with the model's bf16 weights (before the int8 decoding weights)")
    ap.add_argument("--json", type=Path, default=None)
    args = parse_args(ap, QUICK)

    runs = []
    with tempfile.TemporaryDirectory(prefix="dynamicrag-phases-") as cache:
        env = {**os.environ, "DYNAMICRAG_CACHE": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        variants = ["shipped"] + ["strided"] * args.compare_strided + ["sdpa"] * args.compare_sdpa
        variants += ["bf16-decode"] * args.compare_decode_weights
        for i in range(args.runs + 1):
            # Alternating the variants within each round spreads any drift of the machine over both.
            for variant in variants[:1] if i == 0 else variants:
                label = "fill caches" if i == 0 else f"warm {i} ({variant})"
                log(label)
                argv = [sys.executable, "-c", CHILD, args.question, str(args.max_new_tokens), variant, args.next_question]
                done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{label} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
                if i:
                    runs.append({"variant": variant, **json.loads(done.stdout.strip().splitlines()[-1])})
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in variants}
    names = list(runs[0]["phases"])
    means = {v: {name: mean(r["phases"][name] for r in rs) for name in names} for v, rs in by_variant.items()}
    total = {v: mean(r["in_process"] for r in rs) for v, rs in by_variant.items()}
    new = {v: {name: mean(r["new_question"][name] for r in rs) for name in runs[0]["new_question"]}
           for v, rs in by_variant.items()}
    result = {"question": args.question, "next_question": args.next_question, "runs": runs,
              "mean_seconds": means["shipped"], "mean_in_process": total["shipped"],
              "mean_new_question_same_process": new["shipped"],
              "variants": {v: {"mean_seconds": means[v], "mean_in_process": total[v],
                               "mean_new_question_same_process": new[v]}
                           for v in variants}}
    path = write_result("ask_phases", result, args)
    rows = [[name, *(fmt(means[v][name]) for v in variants), f"{100 * means['shipped'][name] / total['shipped']:.0f} %"]
            for name in names]
    rows.append(["total (in process, after interpreter start)", *(fmt(total[v]) for v in variants), "100 %"])
    rows += [[f"then a new question, same process: {name}", *(fmt(new[v][name]) for v in variants), ""]
             for name in ("query-likelihood order", "reranker call", "generator", "total")]
    print_header(args, f"`ask` phases, {len(by_variant['shipped'])} fresh process(es) per variant, the question "
                 f"{args.question!r}; JSON: {path}",
                 f"k {runs[0]['k']}, order_by {runs[0]['order_by']}, answer: {runs[0]['answer']!r}")
    headers = {"shipped": "seconds (mean)", "strided": "seconds, head input strided (before)",
               "sdpa": "seconds, transformers' SDPA (before)", "bf16-decode": "seconds, bf16 decoding weights (before)"}
    print(markdown_table(["phase", *(headers[v] for v in variants), "share"], rows))


if __name__ == "__main__":
    main()
