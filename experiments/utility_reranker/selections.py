"""Where the trained reranker's selections differ from top-1, and what that did to match.

    python experiments/utility_reranker/selections.py runs/utility_bench/runs

Reads each benchmark's utility-sft.jsonl and top-1.jsonl (the benchmark's run files) and prints
JSON: questions whose selection is not [1], the k distribution, the commonest lists, and on the
differing questions how often each row alone is right.
"""
import collections
import json
import sys
from pathlib import Path

from dynamicrag.data import read_jsonl
from dynamicrag.evaluate.answer_metrics import match


def load(path: Path) -> dict[str, dict]:
    return {r["id"]: r for _, r in read_jsonl(path)}


def right(record: dict) -> bool:
    return bool(record.get("answer")) and match(record["answer"], record.get("answers", [])) > 0


out = {}
for folder in sorted(Path(sys.argv[1]).iterdir()):
    if not (folder / "utility-sft.jsonl").exists() or not (folder / "top-1.jsonl").exists():
        continue
    dyn, top1 = load(folder / "utility-sft.jsonl"), load(folder / "top-1.jsonl")
    ids = [i for i in dyn if i in top1]
    if not ids:  # a run stopped before its first record
        continue
    differ = [i for i in ids if (dyn[i]["selected"] or []) != [1]]
    out[folder.name] = {
        "n": len(ids), "differ_from_top1": len(differ),
        "k_distribution": dict(sorted(collections.Counter(len(dyn[i]["selected"] or []) for i in ids).items())),
        "top_lists": collections.Counter(str(dyn[i]["selected"]) for i in ids).most_common(8),
        "on_differing": {"dynamic_right_top1_wrong": sum(right(dyn[i]) and not right(top1[i]) for i in differ),
                         "top1_right_dynamic_wrong": sum(right(top1[i]) and not right(dyn[i]) for i in differ)},
        "well_formed": sum(bool(dyn[i]["well_formed"]) for i in ids) / len(ids),
        "failed": sum(dyn[i]["error"] is not None for i in ids),
    }
print(json.dumps(out, indent=1))
