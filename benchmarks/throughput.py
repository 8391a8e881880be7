"""Throughput of the ``infer`` path: one by one vs batched, and per backend.

    python benchmarks/throughput.py                  # full: 100 questions, every variant
    python benchmarks/throughput.py --quick          # smoke run, about two minutes
    python benchmarks/throughput.py --variants transformers-b1,transformers-b8

Each variant answers the same first --questions shared NQ questions end to end, as
``dynamicrag infer --index`` does: BM25 top --top-n over the shared NQ corpus (3600
passages), the dynamic reranker (decoding constrained to the id grammar unless ``--free``: the
untrained bundled model otherwise writes no usable id list and most questions would skip the
generator), then the generator (--max-new-tokens, 200 as in the paper), all on the bundled
SmolLM2-135M-Instruct.

Variants (``--variants``, comma-separated):

* ``transformers-b1``: transformers backend, one question at a time (batch 1).
* ``transformers-b8`` / ``transformers-b16``: batches of 8 / 16 questions (the backend's
  batch size matches, so each LLM call runs them in one padded forward batch).
* ``llamacpp``: the llama.cpp backend on the bundled Q4_1 GGUF as shipped (no fp32
  conversion); it answers one prompt at a time, so batching does not apply. With the
  backend's default threads llama-cpp-python generates on cpu_count // 2 threads;
  ``llamacpp-allcores`` passes ``n_threads=os.cpu_count()``. Skipped with a note when
  ``import llama_cpp`` fails (extra ``[llamacpp]``).
* ``openai-b16``: the OpenAI-compatible HTTP backend against the project's own server
  (``dynamicrag.serve.create_openai_app``) on loopback, which serves the transformers backend
  (batch 16) and gathers concurrent requests into one batch; 16 questions per pipeline batch,
  16 requests in flight. Client and server share one process, so its RSS and CPU are the two
  together.

Every variant runs in its own subprocess, so peak RSS (from ``os.wait4``) is that variant's
alone. Model load and one warm-up question are timed apart and excluded from the rates.
Reported: questions/s, generated and prompt tokens/s (reranker + generator, as the backend
reports them), CPU seconds per question, load seconds, failed records, mean k, peak RSS, and
the batched/one-by-one speedup (target: at least 2x). Prints a markdown table last and writes
JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from _common import (
    MODEL_NAME,
    Timer,
    UsageMeter,
    add_common_args,
    fmt,
    log,
    markdown_table,
    mean,
    nq_setup,
    parse_args,
    peak_rss_mb,
    print_header,
    run_child,
    write_result,
)

VARIANTS = {
    "transformers-b1": {"backend": "transformers", "batch": 1},
    "transformers-b8": {"backend": "transformers", "batch": 8},
    "transformers-b16": {"backend": "transformers", "batch": 16},
    "llamacpp": {"backend": "llamacpp", "batch": 8},
    "llamacpp-allcores": {"backend": "llamacpp", "batch": 8, "n_threads": os.cpu_count()},
    "openai-b16": {"backend": "openai", "batch": 16},
}
QUICK = {"questions": 1, "top_n": 2, "max_new_tokens": 4, "corpus_limit": 500,
         "variants": "transformers-b1,transformers-b8,llamacpp-allcores,openai-b16"}


def load(spec: dict):
    """The variant's backend, and the loopback server behind it (None but for ``openai``)."""
    from dynamicrag.llm import load_backend

    if spec["backend"] == "transformers":
        return load_backend("transformers", batch_size=spec["batch"]), None
    if spec["backend"] == "llamacpp":
        return load_backend("llamacpp", n_threads=spec.get("n_threads")), None
    from dynamicrag.serve.openai_server import BackgroundServer, create_openai_app

    served = load_backend("transformers", batch_size=spec["batch"])
    server = BackgroundServer(create_openai_app(served, max_batch=spec["batch"])).start()
    # A long timeout: one server batch of 16 reranker prompts can take minutes on 2 busy
    # cores, and a timed-out request would be retried (and timed) again.
    backend = load_backend("openai", model=served.model, base_url=server.base_url,
                           guided_decoding="dynamicrag", max_concurrency=spec["batch"], timeout=900)
    return backend, server


def child(args: argparse.Namespace) -> dict:
    """Measure one variant in this process."""
    from dynamicrag.generate import Generator
    from dynamicrag.pipeline import Pipeline
    from dynamicrag.rerank import DynamicReranker

    spec = VARIANTS[args.variant]
    batch = spec["batch"]
    setup = nq_setup(args, extra_questions=1)
    # Without their own passages, so the pipeline retrieves (as spine.py and `infer --index`).
    questions = [ex.model_copy(update={"passages": []}) for ex in setup.examples]
    with Timer() as loading:
        backend, server = load(spec)
    meter = UsageMeter(backend)
    pipeline = Pipeline(
        DynamicReranker(meter, constrained=not args.free),
        Generator(meter, max_new_tokens=args.max_new_tokens),
        retriever=setup.retriever, top_n=args.top_n,
    )
    try:
        with Timer() as warmup:
            pipeline.run(questions[:1])  # first passes, the id grammar's token table
        meter.reset()
        todo = questions[1:]
        with Timer() as t:
            records = [r for i in range(0, len(todo), batch) for r in pipeline.run(todo[i : i + batch])]
    finally:
        if server is not None:
            server.stop()
    usage = meter.totals()
    ok = [r for r in records if not r["error"]]
    return {
        "variant": args.variant, "backend": spec["backend"], "batch": batch, "questions": len(records),
        "seconds": t.wall, "cpu_seconds_per_question": t.cpu / len(records),
        "questions_per_second": len(records) / t.wall,
        "generated_tokens_per_second": usage["completion_tokens"] / t.wall,
        "prompt_tokens_per_second": usage["prompt_tokens"] / t.wall,
        "llm_requests": usage["requests"], "load_seconds": loading.wall, "warmup_seconds": warmup.wall,
        "failed": len(records) - len(ok), "mean_k": mean(len(r["selected"]) for r in ok),
        "self_peak_rss_mb": peak_rss_mb(),
    }


def run_variant(name: str, args: argparse.Namespace) -> tuple[dict | None, list[str]]:
    """One variant in a fresh subprocess: its figures with the child's own peak RSS, and notes."""
    shared = ["--questions", str(args.questions), "--top-n", str(args.top_n),
              "--max-new-tokens", str(args.max_new_tokens)]
    shared += ["--free"] if args.free else []
    shared += ["--corpus-limit", str(args.corpus_limit)] if args.corpus_limit else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        run = run_child([sys.executable, __file__, "--variant", name, "--child-out", str(out), *shared])
        if run.returncode != 0 or not out.is_file():
            return None, [f"{name}: failed (exit {run.returncode}): {run.error_tail()}"]
        row = json.loads(out.read_text())
    row.update(peak_rss_mb=run.peak_rss_mb, process_seconds=run.seconds)
    retried = run.stderr.count("retrying its")  # Pipeline.run's warning when a batch raised
    notes = [f"{name}: {retried} batch(es) raised and were rerun one by one (timed as they ran)"] if retried else []
    return row, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, questions=100)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated, of {sorted(VARIANTS)}")
    ap.add_argument("--top-n", type=int, default=10, help="Passages retrieved for the reranker")
    ap.add_argument("--max-new-tokens", type=int, default=200, help="Generator's answer cap (paper: 200)")
    ap.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parse_args(ap, QUICK)
    if args.variant:
        args.child_out.write_text(json.dumps(child(args)))
        return

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    rows, notes = [], []
    for name in names:
        if VARIANTS[name]["backend"] == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
            found, more = None, [f"{name}: skipped, llama-cpp-python is not installed (extra [llamacpp])"]
        else:
            log(f"{name}: {args.questions} questions")
            found, more = run_variant(name, args)
        rows += [found] if found else []
        for note in more:
            log(note)
        notes += more

    by_name = {r["variant"]: r for r in rows}
    batched = [r for r in rows if r["backend"] == "transformers" and r["batch"] > 1]
    speedup = None
    if "transformers-b1" in by_name and batched:
        best = max(batched, key=lambda r: r["questions_per_second"])
        speedup = {"variant": best["variant"],
                   "times_b1": best["questions_per_second"] / by_name["transformers-b1"]["questions_per_second"]}
    result = {
        "model": f"{MODEL_NAME}; transformers fp32, llama.cpp Q4_1 GGUF",
        "questions": args.questions, "top_n": args.top_n, "max_new_tokens": args.max_new_tokens,
        "constrained": not args.free, "rows": rows, "batched_speedup": speedup, "notes": notes,
    }
    path = write_result("throughput", result, args)

    print_header(
        args,
        f"`infer` path: {args.questions} NQ questions (+1 warm-up), BM25 top-{args.top_n} of the shared NQ corpus, "
        f"dynamic reranker ({'free' if args.free else 'constrained'} decoding), generator cap {args.max_new_tokens} "
        f"tokens; each variant in its own process; JSON: {path}",
        *[f"- {note}" for note in notes],
        f"Batched vs one by one (target >= 2x): {speedup['variant']} is {speedup['times_b1']:.2f}x transformers-b1"
        if speedup else "Batched vs one by one: not measured in this run",
    )
    print(markdown_table(
        ["variant", "batch", "questions/s", "generated tok/s", "prompt tok/s", "CPU s/question", "load s", "failed",
         "mean k", "peak RSS MB"],
        [[r["variant"], r["batch"] if r["backend"] != "llamacpp" else "1 (sequential)",
          f"{r['questions_per_second']:.3f}", f"{r['generated_tokens_per_second']:.1f}",
          f"{r['prompt_tokens_per_second']:.0f}", f"{r['cpu_seconds_per_question']:.1f}", f"{r['load_seconds']:.1f}",
          f"{r['failed']}/{r['questions']}", fmt(r["mean_k"]), f"{r['peak_rss_mb']:.0f}"]
         for r in rows],
    ))


if __name__ == "__main__":
    main()
