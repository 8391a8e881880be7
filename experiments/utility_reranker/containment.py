"""Where BM25's top 10 hold a gold answer: the room an answer-containment teacher has on NQ.

    python experiments/utility_reranker/containment.py --data ../shared/data --index runs/shared_bench/indexes/nq

For the held-apart NQ 0-199 and the training slice NQ 200-2654: per question, the first of the
retrieved passages (1-10) whose text contains a gold answer (the evaluation's normalised
containment), or 0 when none does. A reranker taught "the first passage with the answer" can only
move off BM25's #1 on the questions counted at 2-10.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from dynamicrag.data import load_examples
from dynamicrag.evaluate.normalize import contains_answer
from dynamicrag.retrieve.base import passage_text
from dynamicrag.retrieve.index import load_index


def first_answer_positions(examples, index, top_n: int) -> Counter:
    hits = index.search([ex.question for ex in examples], top_n)
    positions = Counter()
    for ex, passages in zip(examples, hits):
        found = [contains_answer(passage_text(p), ex.answers) for p in passages]
        positions[found.index(True) + 1 if any(found) else 0] += 1
    return positions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--index", required=True, help="BM25 index of the NQ corpus (the benchmark's indexes/nq)")
    ap.add_argument("--top-n", type=int, default=10)
    args = ap.parse_args()
    examples = load_examples(args.data / "nq" / "nq-open-oracle.jsonl.gz", task="nq")
    index = load_index(args.index)
    out = {name: dict(sorted(first_answer_positions(part, index, args.top_n).items()))
           for name, part in [("NQ 0-199 (held apart)", examples[:200]), ("NQ 200-2654 (training)", examples[200:])]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
