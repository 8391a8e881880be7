"""Quality of the kept speed settings against fp32: the reranker's selections and the answers.

    python benchmarks/dtype_quality.py                # NQ 0-199, BM25 top-10, fp32 vs the default
    python benchmarks/dtype_quality.py --variants fp32,default,bf16-plain,fp32-cache,int8
    python benchmarks/dtype_quality.py --quick        # smoke run
    python benchmarks/dtype_quality.py --shipped      # the same for the default pipeline of ask and infer
    python benchmarks/dtype_quality.py --shipped --variants fp32,default,bf16-decode --against bf16-decode

Each variant runs the same questions through the same pipeline: the dynamic reranker with
decoding constrained to the id grammar, then the generator (--max-new-tokens), --chunk
questions per pipeline call decoded --batch-size rows at a time (a finished row's place goes to
the next prompt of the call), on the bundled SmolLM2 over the same BM25 top --top-n passages of the
shared NQ corpus. The reference is ``fp32``: the transformers backend as it ran before issue
18 (fp32, no prefix cache, the padded batch encoded in one pass, every row decoded until the
batch's longest answer ends). Variants:

* ``default``: the backend's defaults (the kept settings: bf16 where the CPU has native
  bf16, shared-prefix KV cache, prompts prefilled one at a time, finished rows dropped from
  a batch).
* ``bf16-plain``: bf16 without the prefix cache, padded batch prefill, finished rows kept (the
  dtype alone).
* ``fp32-cache``: fp32 with the prefix cache, row prefill and finished rows dropped (the
  cache and the batch layout alone; expected identical to fp32 up to float rounding).
* ``bf16-decode``: the default with decoding in the model's weights, not their int8 copy
  (``decode_weights="model"``: the default before that lever).
* ``sdpa-prefill``: the default with every prompt prefilled by transformers' SDPA attention,
  not in causal blocks (the default before that lever; ``_CHUNKED_MIN_POSITIONS`` set past any
  prompt while this variant runs).
* ``int8``: int8 dynamic quantisation of the linear layers (``torch.ao``, deprecated), on the
  fp32 model, with the default cache settings.

Reported per variant: share of questions whose selection (the ids, in order) is identical to
fp32's (the target: >= 95 % for the kept settings), identical answers, match (a gold answer
in the answer) and its paired difference to fp32 with a 95 % paired bootstrap CI (the target: the
difference stays within the CI, i.e. the CI includes 0), mean k, failed records and seconds per
question. Records are appended per variant to JSONL files under --work (default: the
project's cache, ``~/.cache/dynamicrag/benchmarks/``), so an interrupted run resumes where it
stopped. ``--against NAME`` adds the default's paired match difference to variant NAME, with its
win/tie/loss counts and shares of identical selections and answers: one lever's before/after.
Prints a markdown table last and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
from _common import (
    MODEL_NAME,
    Timer,
    fmt,
    int8_backend,
    log,
    markdown_table,
    mean,
    nq_setup,
    parse_args,
    print_header,
    write_result,
)

VARIANTS = {
    "fp32": {"dtype": "float32", "prefix_cache": False, "prefill": "batch", "shrink_batch": False},
    "default": {},
    "bf16-plain": {"dtype": "bfloat16", "prefix_cache": False, "prefill": "batch", "shrink_batch": False},
    "fp32-cache": {"dtype": "float32"},
    "int8": {"int8": True},
    "bf16-decode": {"decode_weights": "model"},
    "sdpa-prefill": {"sdpa_prefill": True},
}
REFERENCE = "fp32"
QUICK = {"questions": 4, "top_n": 3, "max_new_tokens": 8, "corpus_limit": 500}
TARGET_IDENTICAL = 0.95  # the target share of NQ 0-199 with the reranker's selection unchanged


def paired_ci(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` and its 95 % paired bootstrap CI (scipy, installed with bm25s; percentile method)."""
    from scipy.stats import bootstrap

    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(diff) == 0:
        return float("nan"), float("nan"), float("nan")
    if np.all(diff == diff[0]):  # no spread: the interval is the point
        return float(diff[0]), float(diff[0]), float(diff[0])
    res = bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=10_000, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(diff.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


@contextlib.contextmanager
def prefill_of(name: str):
    """While variant ``name`` runs: SDPA for every prompt's prefill if it asks for it (the
    models are shared between variants, so the setting is put back afterwards)."""
    from dynamicrag.llm import transformers_backend

    kept = transformers_backend._CHUNKED_MIN_POSITIONS
    if VARIANTS[name].get("sdpa_prefill"):
        transformers_backend._CHUNKED_MIN_POSITIONS = sys.maxsize  # no prompt is long enough
    try:
        yield
    finally:
        transformers_backend._CHUNKED_MIN_POSITIONS = kept


def backend_options(name: str) -> dict:
    return {k: v for k, v in VARIANTS[name].items() if k != "sdpa_prefill"}


def backend_for(name: str, batch_size: int):
    from dynamicrag.llm import load_backend

    options = backend_options(name)
    if options.pop("int8", False):
        return int8_backend(load_backend("transformers", batch_size=batch_size, dtype="float32"), batch_size)
    return load_backend("transformers", batch_size=batch_size, **options)


def run_variant(name: str, examples: list, args: argparse.Namespace, path: Path) -> tuple[list[dict], dict]:
    """Answer ``examples`` with variant ``name``, resuming the records already in ``path``."""
    from dynamicrag.data import ResumableJsonlWriter, read_jsonl
    from dynamicrag.evaluate.answer_metrics import match
    from dynamicrag.generate import Generator
    from dynamicrag.pipeline import Pipeline
    from dynamicrag.rerank import DynamicReranker

    if args.shipped:
        # What ask and infer run by default: the shipped reranker adapter with its manifest's
        # settings (free decoding, passage cap, query-likelihood order) on the variant's backend.
        from dynamicrag.build import PipelineConfig, build_pipeline, role_configs

        if VARIANTS[name].get("int8"):
            raise SystemExit("--shipped runs the transformers backend's own settings; int8 is not one")
        options = {**backend_options(name), "batch_size": args.batch_size}
        config = PipelineConfig(**role_configs(backend_options=options), top_n=args.top_n,
                                answer_max_tokens=args.max_new_tokens)
        pipeline = build_pipeline(config)
        llm = pipeline.reranker.backend
    else:
        llm = backend_for(name, args.batch_size)
        pipeline = Pipeline(DynamicReranker(llm, constrained=True), Generator(llm, max_new_tokens=args.max_new_tokens),
                            top_n=args.top_n)
    with ResumableJsonlWriter(path) as writer:
        if writer.done:
            log(f"{name}: resuming after {writer.done} records in {path}")
        todo = examples[writer.done:]
        for start in range(0, len(todo), args.chunk):
            batch = todo[start:start + args.chunk]
            with Timer() as t:
                records = pipeline.run(batch)
            for record in records:
                writer.write({
                    "id": record["id"], "selected": record["selected"], "reranker_output": record["reranker_output"],
                    "answer": record["answer"], "error": record["error"],
                    "match": match(record["answer"] or "", record["answers"]) if not record["error"] else 0.0,
                    "batch_seconds": t.wall / len(batch),
                })
            log(f"{name}: {start + len(batch)}/{len(todo)} questions this run")
    records = [r for _, r in read_jsonl(path)]
    if [r["id"] for r in records] != [ex.id for ex in examples]:
        raise SystemExit(f"{path}: its records are not those of these questions; delete it or choose another --work")
    return records, llm.describe()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=200, help="NQ questions from --skip (the target slice: 0-199)")
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--corpus-limit", type=int, default=None, help="First N corpus passages only (smoke runs)")
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="Generator's answer cap (default: 200 as in the paper; --shipped: each task's default, as infer)")
    ap.add_argument("--batch-size", type=int, default=8, help="Rows the backend decodes at a time (its default)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="Questions per pipeline call (infer's --batch-size, 64 by default; default here: --batch-size, "
                    "one LLM batch per call, as infer ran before its prompts queued for free places)")
    ap.add_argument("--variants", default="fp32,default", help=f"Comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--work", type=Path, default=None,
                    help="Folder of the per-variant records (resumed); default <DYNAMICRAG_CACHE>/benchmarks/dtype_quality[.quick]/")
    ap.add_argument("--shipped", action="store_true",
                    help="The default pipeline of ask and infer (shipped reranker adapter, its free decoding, passage cap "
                    "and query-likelihood order) instead of the untrained model constrained")
    ap.add_argument("--against", default=None,
                    help="Also the default's paired match difference to this variant (e.g. bf16-decode: one lever's before/after)")
    ap.add_argument("--json", type=Path, default=None)
    args = parse_args(ap, QUICK)
    args.chunk = args.chunk or args.batch_size
    if args.max_new_tokens is None and not args.shipped:
        args.max_new_tokens = 200
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    if args.against and ("default" not in names or args.against not in names):
        ap.error(f"--against {args.against} compares the default with it: list both in --variants")

    setup = nq_setup(argparse.Namespace(questions=args.skip + args.questions, corpus_limit=args.corpus_limit))
    examples = setup.top(args.top_n, setup.examples[args.skip:])
    from dynamicrag.llm.models import cache_dir

    work = args.work or cache_dir() / "benchmarks" / f"dtype_quality{'.quick' if args.quick else ''}"
    tag = ("shipped_" if args.shipped else "") + f"q{args.skip}-{args.skip + args.questions - 1}_top{args.top_n}_tok{args.max_new_tokens}_b{args.batch_size}" + (
        f"_c{args.chunk}" if args.chunk != args.batch_size else "") + (f"_corpus{args.corpus_limit}" if args.corpus_limit else "")
    runs, described = {}, {}
    for name in names:
        log(f"{name}: {len(examples)} questions")
        with prefill_of(name):
            runs[name], described[name] = run_variant(name, examples, args, work / f"{name}_{tag}.jsonl")

    ref = runs[REFERENCE]
    rows = []
    for name in names:
        recs = runs[name]
        ok = [r for r in recs if not r["error"]]
        diff, low, high = paired_ci([r["match"] for r in ref], [r["match"] for r in recs])
        rows.append({
            "variant": name, "backend": described[name], "questions": len(recs),
            "identical_selections": mean(a["selected"] == b["selected"] and a["error"] == b["error"]
                                         for a, b in zip(ref, recs)),
            "identical_answers": mean(a["answer"] == b["answer"] for a, b in zip(ref, recs)),
            "match": mean(r["match"] for r in recs), "match_diff": diff, "match_diff_ci95": [low, high],
            "within_ci": bool(low <= 0 <= high) if name != REFERENCE else None,
            "mean_k": mean(len(r["selected"]) for r in ok), "failed": len(recs) - len(ok),
            "seconds_per_question": mean(r["batch_seconds"] for r in recs),
        })
    kept = next((r for r in rows if r["variant"] == "default"), None)
    verdict = None
    if kept is not None:
        verdict = {"identical_selections": kept["identical_selections"], "target": TARGET_IDENTICAL,
                   "identical_met": kept["identical_selections"] >= TARGET_IDENTICAL,
                   "match_within_ci": kept["within_ci"]}
    against = None
    if args.against:
        before, after = runs[args.against], runs["default"]
        diff, low, high = paired_ci([r["match"] for r in before], [r["match"] for r in after])
        wins = sum(b["match"] > a["match"] for a, b in zip(before, after))
        losses = sum(b["match"] < a["match"] for a, b in zip(before, after))
        against = {"variant": args.against, "match_diff": diff, "match_diff_ci95": [low, high],
                   "wins": wins, "ties": len(after) - wins - losses, "losses": losses,
                   "identical_selections": mean(a["selected"] == b["selected"] for a, b in zip(before, after)),
                   "identical_answers": mean(a["answer"] == b["answer"] for a, b in zip(before, after))}
    result = {"model": MODEL_NAME, "shipped": args.shipped, "questions": f"NQ {args.skip}-{args.skip + args.questions - 1}",
              "top_n": args.top_n, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "chunk": args.chunk,
              "reference": REFERENCE, "rows": rows, "issue18": verdict, "default_against": against,
              "work": str(work)}
    path = write_result("dtype_quality", result, args)

    reranker = ("the shipped reranker adapter (free decoding, its passage cap and order)" if args.shipped
                else "dynamic reranker (constrained)")
    cap = f"{args.max_new_tokens} tokens" if args.max_new_tokens else "each task's default"
    lines = [f"NQ {args.skip}-{args.skip + args.questions - 1}, BM25 top-{args.top_n}, {reranker}, "
             f"generator cap {cap}, batch {args.batch_size}, {args.chunk} questions per call; reference {REFERENCE} "
             f"({described[REFERENCE]['dtype_reason']}, no prefix cache, padded batch prefill, finished rows kept); "
             f"JSON: {path}"]
    for row in rows:
        b = row["backend"]
        lines.append(f"- {row['variant']}: {b.get('dtype_reason')}, prefix cache {b.get('prefix_cache')}, "
                     f"prefill {b.get('prefill')}, kv cache {b.get('kv_cache')}, shrink batch {b.get('shrink_batch')}, "
                     f"decode weights {b.get('decode_weights')}")
    if verdict is not None:
        lines.append(f"Kept settings: identical selections {100 * verdict['identical_selections']:.1f}% (target >= "
                     f"{100 * TARGET_IDENTICAL:.0f}%): {'met' if verdict['identical_met'] else 'NOT met'}; the paired 95% CI "
                     f"of the match difference {'includes' if verdict['match_within_ci'] else 'EXCLUDES'} 0")
    if against is not None:
        lines.append(f"default against {against['variant']}: match {100 * against['match_diff']:+.1f} "
                     f"[{100 * against['match_diff_ci95'][0]:+.1f}, {100 * against['match_diff_ci95'][1]:+.1f}] "
                     f"(paired 95% CI), W/T/L {against['wins']}/{against['ties']}/{against['losses']}, identical "
                     f"selections {100 * against['identical_selections']:.1f}%, answers {100 * against['identical_answers']:.1f}%")
    print_header(args, *lines)
    print(markdown_table(
        ["variant", "identical selections", "identical answers", "match", "match - fp32 [95% CI]", "mean k", "failed",
         "s/question"],
        [[r["variant"], f"{100 * r['identical_selections']:.1f}%", f"{100 * r['identical_answers']:.1f}%",
          f"{100 * r['match']:.1f}%",
          f"{100 * r['match_diff']:+.1f} [{100 * r['match_diff_ci95'][0]:+.1f}, {100 * r['match_diff_ci95'][1]:+.1f}]",
          fmt(r["mean_k"]), f"{r['failed']}/{r['questions']}", fmt(r["seconds_per_question"])] for r in rows],
    ))


if __name__ == "__main__":
    sys.exit(main())
