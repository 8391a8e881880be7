"""Does a reranker adapter know when to go on after `[1]`? Continue/stop log-odds below its greedy choice.

Variant H was taught k alone (the utility teacher's `prefix` rule over the query-likelihood
order) and writes `[1]` everywhere. A signal too weak for the argmax could still be there, as
`first_id.py` asked of the first id. After the prompt and `[1` the model either closes the list
(`]`, then the end of the turn) or goes on (`],` then ` [2]`: SmolLM2's tokenizer spells the two
differently from the first token on). One forward pass per prompt reads

    log-odds = log p(`],` | prompt, `[1`) - log p(`]` | prompt, `[1`) - log p(<|im_end|> | prompt, `[1]`)

and the script asks whether it ranks the questions that need more than one passage above the
others (the AUC, 0.5 = no signal):

* ``--sft``: the recipe's SFT reranker records (already in the order the reranker read them):
  targets with k >= 2 against k = 1 (`None` targets left out: they never start with `[1]`).
* ``--orders``: ``ql_words.py``'s JSON (each held-apart question's query-likelihood order at 100
  words, as inference orders them); the prompts are rebuilt with --passage-words (the recipe's
  60). Compared: HotpotQA 70-99 against NQ 0-199 (the kind of question), and, with ``--runs``
  (the benchmark folder holding ``{nq,hotpotqa}/ql-top-{1,2,3}.jsonl``), the questions where two
  or three passages in that order are answered right and one is not against the rest.

    python experiments/utility_reranker/stop_after_first.py --adapter runs/recipe_prefix/sft/adapter \
        --sft runs/recipe_prefix/prepare/sft.jsonl --orders experiments/utility_reranker/results/ql_words.json \
        --index runs/utility_bench/indexes/nq --runs runs/utility_bench_h/runs --json stop_h.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm


def continue_log_odds(backend, chats: Sequence) -> list[float]:
    """Per chat: log p(go on after `[1`) - log p(close the list after `[1` and end the turn)."""
    import torch

    from dynamicrag.llm.lora import adapter_active

    tok = backend.tokenizer
    ids = {s: tok.convert_tokens_to_ids(s) for s in ("[", "1", "]", "],")}
    end = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    # At rest the shared model is the base model: the backend switches its adapter on per call.
    with torch.inference_mode(), adapter_active(backend.lm, backend.adapter_name):
        for chat in tqdm(chats, desc="continue/stop log-odds"):
            seq = torch.tensor([[*backend.encode(chat), ids["["], ids["1"], ids["]"]]])
            logp = backend.lm(input_ids=seq, logits_to_keep=2).logits[0].float().log_softmax(-1)
            out.append(float(logp[0, ids["],"]] - logp[0, ids["]"]] - logp[1, end]))
    return out


def auc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(a positive scores above a negative), ties half: the Mann-Whitney U over n1 * n2."""
    from scipy.stats import mannwhitneyu

    if not positive or not negative:
        return None
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def describe(scores: Sequence[float]) -> dict:
    import numpy as np

    s = np.array(scores)
    return {"n": len(s), "mean": float(s.mean()), "max": float(s.max()), "share_above_0": float((s > 0).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="LoRA adapter folder")
    parser.add_argument("--sft", help="The recipe's prepare/sft.jsonl")
    parser.add_argument("--orders", type=Path, help="ql_words.py's JSON (held-apart query-likelihood orders)")
    parser.add_argument("--index", help="BM25 index of the NQ corpus (the benchmark's indexes/nq), with --orders")
    parser.add_argument("--runs", type=Path, help="Benchmark runs folder with {nq,hotpotqa}/ql-top-{1,2,3}.jsonl")
    parser.add_argument("--passage-words", type=int, default=60, help="Words a passage in the prompts (the recipe's cap)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--json", help="Write the summary and the per-question log-odds here")
    args = parser.parse_args()

    from dynamicrag.data import read_jsonl
    from dynamicrag.evaluate.answer_metrics import match as match_metric
    from dynamicrag.llm import load_backend
    from dynamicrag.prompts import load_style, reranker_chat
    from dynamicrag.rerank.parse import parse_selection
    from shared import held_apart, reranker_records  # this folder's helpers

    backend = load_backend("transformers", adapter=args.adapter, batch_size=1)
    report: dict = {"adapter": args.adapter}
    rows = []
    if args.sft:
        chats, ks = [], []
        for r in reranker_records(args.sft):
            target = parse_selection(r["messages"][-1]["content"], 10)  # the pipeline's own reading
            if target.error is None and target.ids and target.ids[0] == 1:
                chats.append(r["messages"][:2])
                ks.append(len(target.ids))
        scores = continue_log_odds(backend, chats)
        more = [s for s, k in zip(scores, ks) if k >= 2]
        one = [s for s, k in zip(scores, ks) if k == 1]
        report["sft"] = {"k>=2": describe(more), "k=1": describe(one), "auc": auc(more, one)}
        rows.append(["training prompts: target k >= 2 vs k = 1", f"{len(more)} / {len(one)}",
                     f"{describe(more)['mean']:.2f} / {describe(one)['mean']:.2f}", report["sft"]["auc"]])
    if args.orders:
        orders = json.loads(args.orders.read_text(encoding="utf-8"))["sets"]
        nq, hotpot = held_apart(args.data, args.index)
        style = load_style("default")
        held: dict[str, dict[str, float]] = {}
        for name, key, examples in (("nq", "NQ 0-199", nq), ("hotpotqa", "HotpotQA 70-99", hotpot)):
            first_cap = next(iter(orders[key]["orders"]))  # the reference cap (100 words)
            chats = [reranker_chat(style, ex.question, [ex.passages[i] for i in order], args.passage_words)
                     for ex, order in zip(examples, orders[key]["orders"][first_cap])]
            held[name] = dict(zip([ex.id for ex in examples], continue_log_odds(backend, chats)))
        report["held_apart"] = {name: describe(list(s.values())) for name, s in held.items()}
        report["held_apart"]["auc_hotpotqa_vs_nq"] = auc(list(held["hotpotqa"].values()), list(held["nq"].values()))
        rows.append(["held apart: HotpotQA 70-99 vs NQ 0-199", f"{len(held['hotpotqa'])} / {len(held['nq'])}",
                     f"{report['held_apart']['hotpotqa']['mean']:.2f} / {report['held_apart']['nq']['mean']:.2f}",
                     report["held_apart"]["auc_hotpotqa_vs_nq"]])
        if args.runs:
            more, rest = [], []
            for name, scores in held.items():
                match = {}
                for k in (1, 2, 3):
                    for _, r in read_jsonl(args.runs / name / f"ql-top-{k}.jsonl"):
                        match[(r["id"], k)] = match_metric(r["answer"] or "", r["answers"]) > 0  # the tables' metric
                for qid, s in scores.items():
                    needs_more = not match[(qid, 1)] and (match[(qid, 2)] or match[(qid, 3)])
                    (more if needs_more else rest).append(s)
            report["held_apart"]["more_passages_answer"] = {"yes": describe(more), "no": describe(rest),
                                                            "auc": auc(more, rest)}
            rows.append(["held apart: 2 or 3 passages answer and 1 does not, vs the rest", f"{len(more)} / {len(rest)}",
                         f"{describe(more)['mean']:.2f} / {describe(rest)['mean']:.2f}", auc(more, rest)])
        report["held_apart_log_odds"] = held
    print("| prompts | n (positive / negative) | mean log-odds (positive / negative) | AUC |")
    print("|---|---:|---:|---:|")
    for name, n, means, a in rows:
        print(f"| {name} | {n} | {means} | {'-' if a is None else f'{a:.3f}'} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
