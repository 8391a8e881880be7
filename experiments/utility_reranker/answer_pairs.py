"""Reranker pairs decided by the generator's answer only (a check on variant E of the reranker issue).

`dynamicrag pairs` takes, per question, the best and the worst sampled list by total reward, so
most of variant E's pairs taught `[1]` over `None` or a malformed list (what the adapter already
does), and others were decided by ROUGE-L or MiniLM noise. This keeps only what the hypothesis
needs: a well-formed, non-empty list whose answer contains a gold answer (chosen; the highest
total among them) against a well-formed, non-empty list whose answer does not (rejected; the
lowest total). Prompts and targets are built as the `pairs` stage builds them (the record's
prompt style and passage cap), so they are the ones training and inference use.

    python experiments/utility_reranker/answer_pairs.py runs/dpo_b/rewarded.jsonl --out runs/dpo_b/answer_pairs.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from dynamicrag.prompts import load_style, reranker_chat, reranker_target
from dynamicrag.schema import Example


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rewarded", type=Path, help="`dynamicrag reward` output")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    rows, chosen_first = [], collections.Counter()
    for line in args.rewarded.open():
        record = json.loads(line)
        usable = [s for s in record["samples"]
                  if s.get("well_formed") and s.get("ids") and s.get("error") is None and s.get("reward")]
        right = [s for s in usable if s["reward"]["match"] == 1]
        wrong = [s for s in usable if s["reward"]["match"] == 0]
        if not right or not wrong:
            continue
        best = max(right, key=lambda s: s["reward"]["total"])
        worst = min(wrong, key=lambda s: s["reward"]["total"])
        style = load_style(record.get("prompt_style") or "default")
        example = Example.model_validate({k: record[k] for k in Example.model_fields if k in record})
        rows.append({
            "id": example.id, "role": "reranker",
            "prompt": reranker_chat(style, example.question, example.passages, record.get("passage_words")),
            "chosen": [{"role": "assistant", "content": reranker_target(style, best["ids"])}],
            "rejected": [{"role": "assistant", "content": reranker_target(style, worst["ids"])}],
            "chosen_ids": best["ids"], "rejected_ids": worst["ids"],
        })
        chosen_first[best["ids"][0]] += 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} answer-decided pairs -> {args.out}; chosen list's first id: {dict(sorted(chosen_first.items()))}")


if __name__ == "__main__":
    main()
