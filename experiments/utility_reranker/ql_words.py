"""How many words of each passage the query-likelihood order needs: its choices and its cost.

    python experiments/utility_reranker/ql_words.py --data ../shared/data \
        --index runs/utility_bench/indexes/nq --words 100,60,40 --json ql_words.json

The shipped reranker reads its 10 candidates in query-likelihood order (UPR: the base model's
mean log-probability of the question after the passage), and that order decides what it keeps
(variant G writes `[1]`). The scorer reads 100 words of each passage; the reranker's own prompt
reads 60. For the held-apart NQ 0-199 (BM25 top 10) and HotpotQA 70-99 (own 10 paragraphs),
each word cap orders every question's candidates. Reported per cap and data set: seconds per
question (the scoring pass alone, same process, same loaded model), how often its first passage
holds a gold answer (normalised containment, as `match`), and against the first cap: how often
the first passage is the same (what a reranker writing `[1]` would select) and the mean Kendall
tau of the whole order. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scipy.stats import kendalltau
from tqdm import tqdm

from dynamicrag.evaluate.normalize import contains_answer
from dynamicrag.llm import load_backend
from dynamicrag.rerank.cutoff import score_order
from dynamicrag.rerank.pointwise import QueryLikelihoodScorer
from dynamicrag.retrieve.base import passage_text
from shared import held_apart  # this folder's helpers (the script's directory is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--index", required=True, help="BM25 index of the NQ corpus (the benchmark's indexes/nq)")
    ap.add_argument("--words", default="100,60,40", help="Word caps, the reference first")
    ap.add_argument("--nq", type=int, default=200)
    ap.add_argument("--hotpot", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    caps = [int(w) for w in args.words.split(",")]

    nq, hotpot = held_apart(args.data, args.index, args.nq, args.hotpot)

    backend = load_backend("transformers")
    scorers = {w: QueryLikelihoodScorer(backend, passage_words=w) for w in caps}
    score_order(scorers[caps[0]], nq[0])  # warm-up: the first call pays one-time costs
    result: dict = {"words": caps, "sets": {}}
    rows = []
    for name, examples in (("NQ 0-199", nq), ("HotpotQA 70-99", hotpot)):
        orders = {w: [] for w in caps}
        seconds = {w: 0.0 for w in caps}
        for ex in tqdm(examples, desc=name):
            for w in caps:  # interleaved, so a change in the machine's load hits every cap alike
                start = time.perf_counter()
                orders[w].append(score_order(scorers[w], ex)[0])
                seconds[w] += time.perf_counter() - start
        ref = orders[caps[0]]
        per_cap = {}
        for w in caps:
            first_answers = sum(contains_answer(passage_text(ex.passages[o[0]]), ex.answers)
                                for ex, o in zip(examples, orders[w]))
            same_first = sum(a[0] == b[0] for a, b in zip(orders[w], ref))
            taus = [kendalltau([o.index(i) for i in range(len(o))], [r.index(i) for i in range(len(r))]).statistic
                    for o, r in zip(orders[w], ref)]
            per_cap[w] = {"seconds_per_question": seconds[w] / len(examples), "first_holds_answer": first_answers,
                          "same_first_as_reference": same_first, "mean_kendall_tau": sum(taus) / len(taus),
                          "questions": len(examples)}
            rows.append([name, w, f"{seconds[w] / len(examples):.2f}", f"{first_answers}/{len(examples)}",
                         f"{same_first}/{len(examples)}", f"{sum(taus) / len(taus):.3f}"])
        result["sets"][name] = {"caps": per_cap, "orders": {w: orders[w] for w in caps}}
    print(f"| data | words | s/question | first holds an answer | same first as {caps[0]} words | Kendall tau |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
