"""Does a reranker adapter reproduce its own SFT targets? Greedy id lists on the training prompts.

Tells underfitting (the training targets are not reproduced either) from a failure to
generalise (they are, the held-apart questions are not). Reads the recipe's ``sft.jsonl``
(TRL messages; oversampled copies count once) and decodes each reranker prompt greedily, free
decoding, with the adapter on:

    python experiments/utility_reranker/fit_check.py runs/recipe/prepare/sft.jsonl \
        --adapter src/dynamicrag/adapters/smollm2-135m-reranker --json fit_b.json

Prints, per target class (`[1]` or anything else), how many outputs select the target's ids
(read with the pipeline's own parser) and how many select `[1]`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from tqdm import tqdm

from dynamicrag.llm import SamplingParams, load_backend
from dynamicrag.rerank.parse import parse_selection
from shared import reranker_records  # this folder's helpers (the script's directory is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sft", help="The recipe's prepare/sft.jsonl")
    parser.add_argument("--adapter", required=True, help="LoRA adapter folder")
    parser.add_argument("--top1", type=int, default=20, help="`[1]` targets checked (all others always are)")
    parser.add_argument("--top-n", type=int, default=10, help="Passages in each prompt (ids 1..top-n)")
    parser.add_argument("--json", help="Write the per-record outputs and the counts here")
    args = parser.parse_args()

    records = reranker_records(args.sft)
    top1 = [r for r in records if r["messages"][-1]["content"] == "[1]"][: args.top1]
    others = [r for r in records if r["messages"][-1]["content"] != "[1]"]
    backend = load_backend("transformers", adapter=args.adapter, batch_size=1)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    rows, counts = [], Counter()
    for r in tqdm(top1 + others, desc="greedy id lists"):
        target = r["messages"][-1]["content"]
        [[out]] = backend.generate([r["messages"][:2]], params)
        chosen = parse_selection(out.text, args.top_n)
        kind = "[1]" if target == "[1]" else "other"
        counts[(kind, "n")] += 1
        counts[(kind, "equal to target")] += chosen.error is None and chosen.ids == parse_selection(target, args.top_n).ids
        counts[(kind, "wrote [1]")] += chosen.ids == [1]
        rows.append({"id": r["id"], "target": target, "output": out.text, "ids": chosen.ids})
    print("| target | n | output = target | output = [1] |\n|---|---:|---:|---:|")
    for kind in ("[1]", "other"):
        print(f"| {kind} | {counts[(kind, 'n')]} | {counts[(kind, 'equal to target')]} | {counts[(kind, 'wrote [1]')]} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"adapter": args.adapter, "sft": args.sft,
                       "counts": {f"{k} {m}": v for (k, m), v in counts.items()}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
