"""Reranker pairs decided by the generator's answer only (a check on variant E of the reranker issue).

`dynamicrag pairs` takes, per question, the best and the worst sampled list by total reward, so
most of variant E's pairs taught `[1]` over `None` or a malformed list (what the adapter already
does), and others were decided by ROUGE-L or MiniLM noise. This keeps only what the hypothesis
needs: a well-formed, non-empty list whose answer contains a gold answer (chosen; the highest
total among them) against a well-formed, non-empty list whose answer does not (rejected; the
lowest total). Prompts come from the `pairs` stage's own rows for the same question, so the
prompt text is the one training and inference use.

    python experiments/utility_reranker/answer_pairs.py runs/dpo_b/rewarded.jsonl runs/dpo_b/pairs/dpo.jsonl \
        --out runs/dpo_b/answer_pairs.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def format_ids(ids: list[int]) -> str:
    return ", ".join(f"[{i}]" for i in ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rewarded", type=Path, help="`dynamicrag reward` output")
    ap.add_argument("pairs", type=Path, help="`dynamicrag pairs` dpo.jsonl of the same samples (for the prompts)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    prompts = {}
    for line in args.pairs.open():
        row = json.loads(line)
        if row["role"] == "reranker":
            prompts[row["id"]] = row["prompt"]
    rows, chosen_first = [], collections.Counter()
    for line in args.rewarded.open():
        record = json.loads(line)
        usable = [s for s in record["samples"]
                  if s.get("well_formed") and s.get("ids") and s.get("error") is None and s.get("reward")]
        right = [s for s in usable if s["reward"]["match"] == 1]
        wrong = [s for s in usable if s["reward"]["match"] == 0]
        if not right or not wrong or record["id"] not in prompts:
            continue
        best = max(right, key=lambda s: s["reward"]["total"])
        worst = min(wrong, key=lambda s: s["reward"]["total"])
        rows.append({
            "id": record["id"], "role": "reranker", "prompt": prompts[record["id"]],
            "chosen": [{"role": "assistant", "content": format_ids(best["ids"])}],
            "rejected": [{"role": "assistant", "content": format_ids(worst["ids"])}],
            "chosen_ids": best["ids"], "rejected_ids": worst["ids"],
        })
        chosen_first[best["ids"][0]] += 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{len(rows)} answer-decided pairs -> {args.out}; chosen list's first id: {dict(sorted(chosen_first.items()))}")


if __name__ == "__main__":
    main()
