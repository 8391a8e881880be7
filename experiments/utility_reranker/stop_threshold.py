"""What a calibrated stop decision would give: K's continue/stop log-odds against a threshold set on its training prompts.

Variant K writes `[1]` everywhere, yet its continue/stop log-odds after `[1` (``stop_after_first.py``)
separate the kinds of question (held apart: HotpotQA 70-99 above NQ 0-199, AUC 0.959): all sit
below 0, so greedy decoding always stops. A bias on the continue token would move the threshold.
This script estimates what that would do without decoding again: the threshold is the highest
log-odds among K's *training* prompts whose target is `[1]` (no held-apart question chooses
it); a held-apart question above it reads on, and is given the record of ``--further`` (the
query-likelihood top-3: K's targets stop at 3 ids), the others the record of ``--first`` (K's own
`[1]`, which is query likelihood's top-1). The composed run is written as an ``infer`` JSONL,
for ``dynamicrag evaluate --baseline``. An estimate: a biased decoder could stop at 2 ids or
write another list. The decoder was built afterwards (``SamplingParams.continue_bias``, set by
``dynamicrag train calibrate-stop``; K+stop in README.md): it read on for 8 of 30, at the
estimate's 0.233.

    python experiments/utility_reranker/stop_threshold.py --log-odds runs/stop_k3.json --task hotpotqa \
        --first runs/utility_bench_k/runs/hotpotqa/evidence-prefix-ql-k3.jsonl \
        --further runs/utility_bench_k/runs/hotpotqa/ql-top-3.jsonl --out runs/stop_threshold/hotpotqa.jsonl
    dynamicrag evaluate runs/stop_threshold/hotpotqa.jsonl --baseline runs/utility_bench_k/runs/hotpotqa/top-1.jsonl \
        --out runs/stop_threshold/eval_hotpotqa
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def records(path: Path) -> dict[str, dict]:
    from dynamicrag.data import read_jsonl

    return {r["id"]: r for _, r in read_jsonl(path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-odds", type=Path, required=True, help="stop_after_first.py's --json (with --sft and --orders)")
    parser.add_argument("--task", required=True, help="nq or hotpotqa: the held-apart log-odds to read")
    parser.add_argument("--first", type=Path, required=True, help="Run whose record a question that stops gets")
    parser.add_argument("--further", type=Path, required=True, help="Run whose record a question that reads on gets")
    parser.add_argument("--out", type=Path, required=True, help="The composed run (JSONL)")
    args = parser.parse_args()

    summary = json.loads(args.log_odds.read_text())
    threshold = summary["sft"]["k=1"]["max"]
    log_odds = summary["held_apart_log_odds"][args.task]
    first, further = records(args.first), records(args.further)
    on = sorted(q for q, x in log_odds.items() if x > threshold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(further[q] if q in on else first[q], ensure_ascii=False) + "\n" for q in first),
                        encoding="utf-8")
    print(f"threshold {threshold:.3f} (highest training `[1]` target); {args.task}: {len(on)} of {len(log_odds)} "
          f"questions read on: {', '.join(on)}; written {args.out}")


if __name__ == "__main__":
    main()
