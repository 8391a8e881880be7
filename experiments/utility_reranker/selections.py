"""Where the trained reranker's selections differ from top-1, and what that did to match.

    python experiments/utility_reranker/selections.py runs/utility_bench/runs

Reads each benchmark's utility-sft.jsonl and top-1.jsonl (the benchmark's run files) and prints
JSON: questions whose selection is not [1], the k distribution, the commonest lists, and on the
differing questions how often each row alone is right.
"""
import collections
import json
import sys

from dynamicrag.evaluate.normalize import contains_answer

def load(path):
    return {r["id"]: r for r in map(json.loads, open(path))}

def match(r):
    return bool(r.get("answer")) and contains_answer(r["answer"], r.get("answers", []))

root = sys.argv[1]
out = {}
for bench in ("nq", "hotpotqa", "nq-0-49"):
    try:
        dyn, top1 = load(f"{root}/{bench}/utility-sft.jsonl"), load(f"{root}/{bench}/top-1.jsonl")
    except FileNotFoundError:
        continue
    ids = [i for i in dyn if i in top1]
    ks = collections.Counter(len(dyn[i]["selected"] or []) for i in ids)
    lists = collections.Counter(str(dyn[i]["selected"]) for i in ids)
    differ = [i for i in ids if (dyn[i]["selected"] or []) != [1]]
    gain = sum(match(dyn[i]) and not match(top1[i]) for i in differ)
    loss = sum(match(top1[i]) and not match(dyn[i]) for i in differ)
    out[bench] = {"n": len(ids), "differ_from_top1": len(differ), "k_distribution": dict(sorted(ks.items())),
                  "top_lists": lists.most_common(8), "on_differing": {"dynamic_right_top1_wrong": gain,
                  "top1_right_dynamic_wrong": loss},
                  "well_formed": sum(bool(dyn[i]["well_formed"]) for i in ids) / len(ids),
                  "failed": sum(dyn[i]["error"] is not None for i in ids)}
print(json.dumps(out, indent=1))
