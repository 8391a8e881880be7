"""Variant I: does the base model know more about a passage than its query likelihood says?

    python experiments/utility_reranker/ql_head.py --data ../shared/data \
        --labels runs/recipe_prefix/label --index runs/utility_bench/indexes/nq --out runs/ql_head

Every trained variant (A-H) writes `[1]`; on its own training prompts it cannot fit the targets
that are not `[1]`, and its stop/continue log-odds carry no signal (stop_after_first.py). The
query-likelihood order (the base model's log p(question | passage)) is what moves the shipped
default off BM25's first passage. This script asks whether the same forward pass holds more:
a logistic-regression head on the hidden states of that pass (the question's tokens read after
the passage, mean over them, at a middle and the last layer), trained on the utility teacher's
per-passage labels (``teacher_relevant``: the gold answer's log-likelihood gains at least the
margin with this passage alone), orders the candidates better than the query likelihood does.

1. features: one forward pass per candidate (the query-likelihood prompt, as the shipped scorer
   builds it) for the training questions (the label stage's records: NQ 200-359, HotpotQA 0-69)
   and the held-apart ones (NQ 0-199 over BM25's top 10, HotpotQA 70-99 over their own 10).
2. head: logistic regression (scikit-learn) on the training features; AUC on the held-apart
   candidates against "the passage holds a gold answer" for BM25's rank, the query likelihood
   and the head, and how often each one's first passage holds an answer.
3. answers: the base generator answers every question from BM25's first passage, the query
   likelihood's and the head's, one question at a time in this one process (so no row's answer
   depends on what else was in its batch); match, and each row's paired difference from top-1
   (bootstrap 95 % CI, exact McNemar) beside the gold-passage ceiling's figure in the README.

Each stage writes its file into --out and is skipped when the file is there (resumable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dynamicrag.data import read_jsonl
from dynamicrag.evaluate.normalize import contains_answer
from dynamicrag.retrieve.base import passage_text
from dynamicrag.schema import Example, Passage

MIDDLE_LAYER = 15  # of SmolLM2-135M's 30: a middle layer's states often probe better than the last


def features(backend, question: str, passages: list[Passage], passage_words: int = 100) -> np.ndarray:
    """Per passage: [query likelihood, mean hidden state over the question's tokens at the middle
    and the last layer]. The prompt and the question's spelling are the shipped scorer's own."""
    import torch

    from dynamicrag.rerank.pointwise import QueryLikelihoodScorer

    scorer = QueryLikelihoodScorer(backend, passage_words=passage_words)
    tok = backend.tokenizer
    q = tok(scorer.as_question(question), add_special_tokens=False)["input_ids"]
    rows = []
    with torch.inference_mode():
        for p in passages:
            prompt = tok(scorer._prompt(p), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + q])
            out = backend.lm(input_ids=ids, output_hidden_states=True)
            logp = out.logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
            ql = float(logp.gather(1, torch.tensor(q)[:, None]).mean())
            span = slice(len(prompt), len(prompt) + len(q))
            mid = out.hidden_states[MIDDLE_LAYER][0, span].float().mean(0)
            last = out.hidden_states[-1][0, span].float().mean(0)
            rows.append(np.concatenate([[ql], mid.numpy(), last.numpy()]))
    return np.stack(rows)


def training_examples(labels: Path) -> list[tuple[Example, list[int]]]:
    """The label stage's questions with each candidate's utility label (1: relevant)."""
    out = []
    for name in ("nq.jsonl", "hotpotqa.jsonl"):
        for _, r in read_jsonl(labels / name):
            ex = Example.model_validate({k: r[k] for k in ("id", "question", "answers", "task", "passages")})
            tags = [int(bool(p["extra"].get("teacher_relevant"))) for p in r["passages"][:10]]
            out.append((ex, tags + [0] * (10 - len(tags))))
    return out


def stage_features(args, backend) -> None:
    from shared import held_apart  # this folder's helpers

    train = training_examples(args.labels)
    sets: dict[str, list[Example]] = {"train": [ex for ex, _ in train]}
    sets["nq"], sets["hotpotqa"] = held_apart(args.data, args.index)
    for name, examples in sets.items():
        path = args.out / f"features_{name}.npz"
        if path.exists():
            continue
        # Questions with fewer than 10 candidates (a few HotpotQA ones) are padded with NaN rows.
        x = np.full((len(examples), 10, 1 + 2 * backend.lm.config.hidden_size), np.nan)
        has_answer = np.zeros((len(examples), 10), dtype=bool)
        for q, ex in enumerate(tqdm(examples, desc=f"features {name}")):
            x[q, :len(ex.passages)] = features(backend, ex.question, ex.passages[:10])
            has_answer[q, :len(ex.passages)] = [contains_answer(passage_text(p), ex.answers) for p in ex.passages[:10]]
        arrays = {"x": x, "has_answer": has_answer}
        if name == "train":
            arrays["relevant"] = np.array([tags for _, tags in train])
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").rename(path)


def standardise(x: np.ndarray) -> np.ndarray:
    """Each feature relative to the question's other candidates (z-score within the question):
    the head compares candidates, and a question's own difficulty shifts all of them alike."""
    return (x - np.nanmean(x, 1, keepdims=True)) / (np.nanstd(x, 1, keepdims=True) + 1e-6)


def stage_head(args) -> dict:
    from scipy.stats import rankdata
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict

    d = {f"{name}_{k}": v for name in ("train", "nq", "hotpotqa")
         for k, v in np.load(args.out / f"features_{name}.npz").items()}
    xtr = d["train_x"]
    keep = ~np.isnan(xtr[..., 0]).ravel()
    flat = np.nan_to_num(standardise(xtr)).reshape(-1, xtr.shape[-1])[keep]
    ytr = d["train_relevant"].ravel()[keep]
    groups = np.repeat(np.arange(len(xtr)), xtr.shape[1])[keep]
    head = LogisticRegression(C=args.c, max_iter=2000)
    cv = cross_val_predict(head, flat, ytr, groups=groups, cv=GroupKFold(5), method="decision_function")
    # What k = 1 needs is the first passage: how often each rule's first candidate is one the
    # teacher calls relevant (the head's out of fold), against how often any candidate is.
    cv_scores = np.full(xtr.shape[:2], -np.inf).ravel()
    cv_scores[keep] = cv
    cv_scores = cv_scores.reshape(xtr.shape[:2])
    relevant = d["train_relevant"]
    rows = np.arange(len(xtr))
    report = {"train": {"questions": len(xtr), "candidates": int(keep.sum()), "positives": int(ytr.sum()),
                        "auc_cv_head": float(roc_auc_score(ytr, cv)),
                        "auc_ql": float(roc_auc_score(ytr, xtr[..., 0].ravel()[keep])),
                        "first_relevant_head_cv": float(relevant[rows, cv_scores.argmax(1)].mean()),
                        "first_relevant_ql": float(relevant[rows, np.nan_to_num(xtr[..., 0], nan=-np.inf).argmax(1)].mean()),
                        "any_relevant": float(relevant.any(1).mean())}}
    head.fit(flat, ytr)
    scores = {}
    for name in ("nq", "hotpotqa"):
        x, y = d[f"{name}_x"], d[f"{name}_has_answer"]
        valid = ~np.isnan(x[..., 0])
        z = np.nan_to_num(standardise(x))
        s_head = head.decision_function(z.reshape(-1, x.shape[-1])).reshape(x.shape[:2])
        s_ql = np.nan_to_num(x[..., 0])
        s_rank = -np.tile(np.arange(x.shape[1]), (len(x), 1)).astype(float)
        scores[name] = {k: np.where(valid, v, -np.inf) for k, v in (("top", s_rank), ("ql", s_ql), ("head", s_head))}
        rep = {"questions": len(x), "with an answer in the 10": int(y.any(1).sum())}
        for key, sc in scores[name].items():
            rep[f"auc_{key}"] = float(roc_auc_score(y[valid], sc[valid]))
            rep[f"first_has_answer_{key}"] = float(y[np.arange(len(y)), sc.argmax(1)].mean())
        rep["mean_rank_of_answer_head"] = float(np.mean([rankdata(-sc)[yy].min()
                                                         for sc, yy in zip(scores[name]["head"], y) if yy.any()]))
        report[name] = rep
    np.savez(args.out / "scores.npz", **{f"{n}_{k}": v for n, s in scores.items() for k, v in s.items()})
    return report


def stage_answers(args, backend) -> dict:
    """Answers from each rule's first passage, one question at a time; cached per (question, passage)."""
    from dynamicrag.evaluate.answer_metrics import match
    from dynamicrag.evaluate.compare import paired_stats
    from dynamicrag.generate import Generator
    from dynamicrag.schema import Selection
    from shared import held_apart

    cache_path = args.out / "answers.jsonl"
    cache = {}
    if cache_path.exists():
        cache = {(r["id"], r["passage"]): r["answer"] for _, r in read_jsonl(cache_path)}
    s = dict(np.load(args.out / "scores.npz"))
    generator = Generator(backend)
    sets = dict(zip(("nq", "hotpotqa"), held_apart(args.data, args.index)))
    report = {}
    with cache_path.open("a", encoding="utf-8") as f:
        for name, examples in sets.items():
            match_by_rule: dict[str, list[float]] = {}
            for rule in ("top", "ql", "head"):
                firsts = s[f"{name}_{rule}"].argmax(1)
                vals = []
                for ex, i in tqdm(list(zip(examples, firsts)), desc=f"answers {name} {rule}"):
                    key = (ex.id, int(i))
                    if key not in cache:
                        [cache[key]] = generator.answer([ex], [Selection(ids=[int(i) + 1])])
                        f.write(json.dumps({"id": ex.id, "passage": int(i), "answer": cache[key]}) + "\n")
                        f.flush()
                    vals.append(match(cache[key], ex.answers))
                match_by_rule[rule] = vals
            # match = P(the first passage holds an answer) x P(the generator answers from it):
            # how much of the room is the reranker's, and how much the generator's.
            has_answer = np.load(args.out / f"features_{name}.npz")["has_answer"]
            report[name] = {"any_candidate_holds_an_answer": int(has_answer.any(1).sum())}
            for rule, v in match_by_rule.items():
                holds = has_answer[np.arange(len(v)), s[f"{name}_{rule}"].argmax(1)]
                report[name][rule] = {
                    "match": float(np.mean(v)),
                    "differs_from_top": int((s[f"{name}_{rule}"].argmax(1) != 0).sum()),
                    "first_holds_an_answer": int(holds.sum()),
                    "match_when_first_holds_an_answer": float(np.mean(np.array(v)[holds])) if holds.any() else None,
                    **({} if rule == "top" else {"vs_top": paired_stats(match_by_rule["top"], v)}),
                }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--labels", type=Path, required=True, help="A recipe's label folder (nq.jsonl, hotpotqa.jsonl)")
    ap.add_argument("--index", required=True, help="BM25 index of the NQ corpus (the benchmark's indexes/nq)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--c", type=float, default=0.05, help="Inverse L2 strength of the logistic regression")
    ap.add_argument("--no-answers", action="store_true", help="Stop after the head's AUCs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from dynamicrag.llm import load_backend

    backend = load_backend("transformers", batch_size=1)
    stage_features(args, backend)
    report = {"head": stage_head(args)}
    print(json.dumps(report["head"], indent=1))
    if not args.no_answers:
        report["answers"] = stage_answers(args, backend)
        for name, rows in report["answers"].items():
            print(f"\n{name} ({rows['any_candidate_holds_an_answer']} questions with an answer among the candidates): "
                  "| rule | match | first passage not BM25's | first holds an answer | match when it does "
                  "| diff vs top-1 [95 % CI] | W/T/L |")
            for rule, r in rows.items():
                if rule == "any_candidate_holds_an_answer":
                    continue
                p = r.get("vs_top")
                print(f"| {rule} | {r['match']:.3f} | {r['differs_from_top']} | {r['first_holds_an_answer']} | "
                      f"{r['match_when_first_holds_an_answer']:.2f} | "
                      + (f"{p['diff']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] | {p['wins']}/{p['ties']}/{p['losses']} |"
                         if p else "(baseline) | |"))
    (args.out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
