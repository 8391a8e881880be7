"""Does a reranker adapter rank the right passage first, below its greedy choice? First-id probabilities.

A greedy reranker that writes `[1]` everywhere may still give the right passage more weight
than it gives it without training. This reads, for each prompt, the model's distribution over
the first item of its answer: `None`, or `[j]` for j = 1..9 (one forward pass of the prompt
followed by `[`: p(`[`) x p(digit j | `[`); `[10]` shares its first digit with `[1]` and is
left out). Two sets of prompts, the reranker prompt of the recipe (--passage-words, 60):

* ``--sft``: the recipe's SFT reranker records; the target is the first id of the record's
  expert list (the utility teacher's), `None` included.
* ``--nq N``: held-apart NQ questions 0..N-1 over BM25's top 10 (the benchmark's retrieval);
  the target is the first gold passage among the first 9 (questions without one are skipped).

For each prompt set it reports how often the target is the argmax (the greedy choice), its
mean rank among the 10 options, and the same after a per-option calibration (each option's
mean log-probability over the prompt set subtracted, contextual calibration as in Zhao et
al. 2021): a signal hidden under a strong prior on `[1]` shows up there. The reference is
retrieval order (always `[1]`).

    python experiments/utility_reranker/first_id.py --adapter none \
        --sft runs/recipe_balanced/prepare/sft.jsonl --nq 200 --json first_id_base.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from tqdm import tqdm

OPTIONS = ["None", *[f"[{j}]" for j in range(1, 10)]]


def first_item_logprobs(backend, chats: Sequence) -> list[list[float]]:
    """log p of each of OPTIONS as the first item of the answer, per chat."""
    import torch

    from dynamicrag.llm.lora import adapter_active

    tok = backend.tokenizer
    bracket, none = tok.convert_tokens_to_ids("["), tok.encode("None", add_special_tokens=False)[0]
    digits = [tok.encode(str(j), add_special_tokens=False)[0] for j in range(1, 10)]
    out = []
    # At rest the shared model is the base model: the backend switches its adapter on per call.
    with torch.inference_mode(), adapter_active(backend.lm, backend.adapter_name):
        for chat in tqdm(chats, desc="first-id distributions"):
            ids = torch.tensor([[*backend.encode(chat), bracket]])
            logp = backend.lm(input_ids=ids, logits_to_keep=2).logits[0].float().log_softmax(-1)
            out.append([float(logp[0, none]), *[float(logp[0, bracket] + logp[1, d]) for d in digits]])
    return out


def summarise(rows: Sequence[list[float]], targets: Sequence[int]) -> dict:
    """Top-1 accuracy and mean rank of the target option, raw and calibrated, on every prompt
    and on those whose target is not `[1]` (where retrieval order is wrong)."""
    import numpy as np

    scores, targets = np.array(rows), np.array(targets)
    # Retrieval order ranks [j] j-th and None last (10th).
    retrieval_rank = np.where(targets == 0, len(OPTIONS), targets)
    result: dict = {"n": len(targets), "retrieval_order_target_is_[1]": float(np.mean(targets == 1)),
                    "retrieval_order_mean_rank_not_[1]": float(retrieval_rank[targets != 1].mean())}
    for name, s in (("raw", scores), ("calibrated", scores - scores.mean(axis=0))):
        ranks = np.array([int((s[i] > s[i, t]).sum()) + 1 for i, t in enumerate(targets)])
        other = targets != 1
        result[name] = {"target_is_argmax": float(np.mean(ranks == 1)), "mean_rank": float(ranks.mean()),
                        "argmax_is_[1]": float(np.mean(s.argmax(axis=1) == 1)),
                        "not_[1]": {"n": int(other.sum()), "target_is_argmax": float(np.mean(ranks[other] == 1)),
                                    "mean_rank": float(ranks[other].mean())}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="LoRA adapter folder, or 'none' for the base model")
    parser.add_argument("--sft", help="The recipe's prepare/sft.jsonl")
    parser.add_argument("--nq", type=int, default=0, help="Held-apart NQ questions 0..N-1")
    parser.add_argument("--passage-words", type=int, default=60, help="Words a passage in the NQ prompts (the recipe's cap)")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--json", help="Write the summary here")
    args = parser.parse_args()

    from dynamicrag.llm import load_backend
    from dynamicrag.rerank.parse import parse_selection
    from shared import reranker_records  # this folder's helpers

    adapter = None if args.adapter == "none" else args.adapter
    backend = load_backend("transformers", adapter=adapter, batch_size=1)
    report: dict = {"adapter": args.adapter}
    if args.sft:
        chats, targets = [], []
        for r in reranker_records(args.sft):
            target = parse_selection(r["messages"][-1]["content"], 10)  # the pipeline's own reading
            first = target.ids[0] if target.ids else 0  # 0: None, OPTIONS' first
            if target.error is None and first < len(OPTIONS):
                chats.append(r["messages"][:2])
                targets.append(first)
        report["sft"] = summarise(first_item_logprobs(backend, chats), targets)
    if args.nq:
        from pathlib import Path

        from dynamicrag.data import load_corpus, load_examples
        from dynamicrag.pipeline import with_passages
        from dynamicrag.prompts import load_style, reranker_chat
        from dynamicrag.retrieve import BM25Retriever

        nq = Path(args.data) / "nq"
        examples = load_examples(nq / "nq-open-oracle.jsonl.gz", limit=args.nq)
        corpus = load_corpus(nq / "nq-open-oracle.jsonl.gz") + load_corpus(nq / "flashrag_wiki_sample.jsonl")
        retriever = BM25Retriever.build(corpus, show_progress=False)
        style = load_style("default")
        chats, targets = [], []
        for ex in with_passages(examples, retriever, 10, retrieve=True):
            gold = [i for i, p in enumerate(ex.passages[:9], 1) if p.extra.get("isgold")]
            if gold:
                chats.append(reranker_chat(style, ex.question, ex.passages, args.passage_words))
                targets.append(gold[0])
        report["nq"] = summarise(first_item_logprobs(backend, chats), targets)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
