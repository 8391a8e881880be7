"""Issue 17: NQ match before and after the generator's decoding change, and the stop-rule and
n-gram measurements of docs/decoding.md, from two `dynamicrag benchmark` output folders.

Run the two configs of benchmarks/results/decoding_nq200/ first (about an hour each on a
contended 2-core CPU), then:

    python benchmarks/decoding_compare.py BEFORE_OUT AFTER_OUT --out benchmarks/results/decoding_nq200

Greedy decoding makes stop rules and caps cheap to measure: under a stop string or a shorter cap
an answer is a prefix of the free one, so the "before" run (no stop, no loop control) gives the
exact answer of every rule. Writes ``comparison.json`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from dynamicrag.evaluate.answer_metrics import match
from dynamicrag.generate import TASK_GENERATION

STOP_RULES = {
    "none": (),
    "\\n": ("\n",),
    "\\n\\n": ("\n\n",),
    ". (space)": (". ",),
    ".\\n !\\n ?\\n": (".\n", "!\n", "?\n"),
    ".\\n !\\n": (".\n", "!\n"),
    ".\\n\\n !\\n\\n": (".\n\n", "!\n\n"),
}


def most_repeated_8gram(text: str) -> int:
    words = text.lower().split()
    return max(Counter(tuple(words[i:i + 8]) for i in range(len(words) - 7)).values(), default=0)


def cut(text: str, stops: tuple[str, ...]) -> str:
    found = [text.find(s) for s in stops if s in text]
    return text[:min(found)] if found else text


def read(folder: Path, row: str) -> dict[str, dict]:
    lines = (folder / "runs" / "nq" / f"{row}.jsonl").read_text("utf-8").splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def ngram_change(ids: list[int], n: int) -> int | None:
    """Where a completion-only n-gram ban would first change this answer (token index), or None."""
    seen = set()
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i:i + n])
        if gram in seen:
            return i + n - 1
        seen.add(gram)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rows", nargs="+", default=["top-1", "top-3"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from dynamicrag.llm.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(None))
    ntok = lambda text: len(tok.encode(text))  # noqa: E731
    head = lambda text, k: tok.decode(tok.encode(text)[:k])  # noqa: E731
    chosen_stop = TASK_GENERATION["default"].stop
    result: dict = {"rows": {}, "stop_rules": {}, "ngram": {}, "caps": {}}
    for row in args.rows:
        before, after = read(args.before, row), read(args.after, row)
        ids = [i for i in before if i in after]
        mb = {i: match(before[i]["answer"] or "", before[i]["answers"]) for i in ids}
        ma = {i: match(after[i]["answer"] or "", after[i]["answers"]) for i in ids}
        m48 = {i: match(head(after[i]["answer"] or "", 48), after[i]["answers"]) for i in ids}
        result["rows"][row] = {
            "n": len(ids),
            "match_before": sum(mb.values()) / len(ids),
            "match_after": sum(ma.values()) / len(ids),
            "match_after_cut_to_48_tokens": sum(m48.values()) / len(ids),
            "mean_answer_tokens_before": sum(ntok(before[i]["answer"] or "") for i in ids) / len(ids),
            "mean_answer_tokens_after": sum(ntok(after[i]["answer"] or "") for i in ids) / len(ids),
            "answers_changed": sum(before[i]["answer"] != after[i]["answer"] for i in ids),
            "gained": [i for i in ids if ma[i] and not mb[i]],
            "lost": [i for i in ids if mb[i] and not ma[i]],
            "loops_before": sum(most_repeated_8gram(before[i]["answer"] or "") >= 3 for i in ids),
            "loops_after": sum(most_repeated_8gram(after[i]["answer"] or "") >= 3 for i in ids),
        }
        answers = {i: before[i]["answer"] or "" for i in ids}
        result["stop_rules"][row] = {}
        for name, stops in STOP_RULES.items():
            kept = {i: cut(a, stops) for i, a in answers.items()}
            result["stop_rules"][row][name] = {
                "match": sum(match(kept[i], before[i]["answers"]) for i in ids) / len(ids),
                "lost": [i for i in ids if mb[i] and not match(kept[i], before[i]["answers"])],
            }
        result["ngram"][row] = {}
        for n in (6, 8, 10, 12):
            changed, at_risk = 0, []
            for i in ids:
                text = cut(answers[i], chosen_stop)
                tokens = tok.encode(text)
                where = ngram_change(tokens, n)
                if where is None:
                    continue
                changed += 1
                if match(text, before[i]["answers"]) and not match(tok.decode(tokens[:where]), before[i]["answers"]):
                    at_risk.append(i)
            result["ngram"][row][n] = {"changed": changed, "at_risk": at_risk}
        result["caps"][row] = {k: sum(match(head(answers[i], k), before[i]["answers"]) for i in ids) for k in (16, 24, 32, 40, 48)}

    print("| row | match before | match after | after cut to 48 tokens | mean tokens before / after | changed | gained / lost | 8-gram x3 before / after |")
    print("|---|---|---|---|---|---|---|---|")
    for row, r in result["rows"].items():
        print(f"| {row} | {r['match_before']:.3f} | {r['match_after']:.3f} | {r['match_after_cut_to_48_tokens']:.3f} | "
              f"{r['mean_answer_tokens_before']:.1f} / {r['mean_answer_tokens_after']:.1f} | {r['answers_changed']} | "
              f"{len(r['gained'])} / {len(r['lost'])} | {r['loops_before']} / {r['loops_after']} |")
    print("\n| stop rule | " + " | ".join(f"{row}: match, lost" for row in args.rows) + " |")
    print("|---|" + "---|" * len(args.rows))
    for name in STOP_RULES:
        cells = [f"{result['stop_rules'][row][name]['match']:.3f}, {len(result['stop_rules'][row][name]['lost'])}" for row in args.rows]
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    print("\n| n | " + " | ".join(f"{row}: changed, at risk" for row in args.rows) + " |")
    print("|---|" + "---|" * len(args.rows))
    for n in (6, 8, 10, 12):
        print(f"| {n} | " + " | ".join(f"{result['ngram'][row][n]['changed']}, {len(result['ngram'][row][n]['at_risk'])}" for row in args.rows) + " |")
    print("\nmatches at caps 16/24/32/40/48:", result["caps"])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    main()
