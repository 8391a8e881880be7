"""Throughput of the ``infer`` path: one by one vs batched, the default backend vs the old one.

    python benchmarks/throughput.py                  # full: 100 questions, every variant
    python benchmarks/throughput.py --quick          # smoke run, about two minutes
    python benchmarks/throughput.py --variants transformers-b1,transformers-b8,transformers-fp32-b1,transformers-fp32-b8

Each variant answers the same NQ questions end to end, as ``dynamicrag infer --index`` does:
questions --skip .. --skip + --questions of the shared NQ set (0-99 by default, +1 for the
warm-up), BM25 top --top-n over the shared NQ corpus (3600 passages), the dynamic reranker
(decoding constrained to the id grammar unless ``--free``: the untrained bundled model
otherwise writes no usable id list and most questions would skip the generator), then the
generator (--max-new-tokens, 200 as in the paper), all on the bundled SmolLM2-135M-Instruct.

Variants (``--variants``, comma-separated):

* ``transformers-b1``: the default transformers backend (the kept settings: bf16 on a
  CPU with native bf16, shared-prefix KV cache, prompts prefilled one at a time, and
  OMP_WAIT_POLICY=PASSIVE as the CLI sets it), one question at a time (batch 1).
* ``transformers-b8`` / ``transformers-b16``: the same, decoding 8 / 16 rows at a time (the
  backend's ``batch_size``), with ``infer``'s default of 64 questions per pipeline call: each
  LLM call gets 64 prompts, and a row that ends gives its place to the next prompt.
* ``transformers-b8-chunk8``: batch 8 with 8 questions per pipeline call (``infer --batch-size
  8``, its default before): each LLM call is one batch, which decodes until its last row ends
  (the before of the refilled places).
* ``transformers-b8-full``: batch 8 with ``shrink_batch=False``, 8 questions per call: every row of
  a batch decoded until its longest answer ends, as transformers' ``generate`` does (the before of
  dropping finished rows).
* ``transformers-b1-bf16-decode`` / ``transformers-b8-bf16-decode``: the default with
  ``decode_weights="model"``: decoding reads the bf16 weights, not their int8 copy (the before
  of that lever).
* ``transformers-b1-sdpa-prefill`` / ``transformers-b8-sdpa-prefill``: the default with every
  prompt prefilled by transformers' SDPA attention, not in causal blocks
  (``_CHUNKED_MIN_POSITIONS`` set past any prompt; the before of that lever).
* ``transformers-fp32-b1`` / ``transformers-fp32-b8``: the backend as it was before the speed work
  (fp32, no prefix cache, padded batch prefill, finished rows kept, OpenMP's default wait policy), for the
  before/after of the same run.
* ``llamacpp``: the llama.cpp backend on the bundled Q4_1 GGUF as shipped (no fp32
  conversion); it answers one prompt at a time, so batching does not apply. With the
  backend's default threads llama-cpp-python generates on cpu_count // 2 threads;
  ``llamacpp-allcores`` passes ``n_threads=os.cpu_count()``. Skipped with a note when
  ``import llama_cpp`` fails (extra ``[llamacpp]``; this machine's PyPI has no binary wheel
  of llama-cpp-python, so it needs a compiler to install).
* ``openai-b16``: the OpenAI-compatible HTTP backend against the project's own server
  (``dynamicrag.serve.create_openai_app``) on loopback, which serves the transformers backend
  (batch 16) and gathers concurrent requests into one batch; 16 questions per pipeline batch,
  16 requests in flight. Client and server share one process, so its RSS and CPU are the two
  together.

Every variant runs in its own subprocess, so peak RSS (from ``os.wait4``) is that variant's
alone. Model load and one warm-up question are timed apart and excluded from the rates.
Reported: seconds and CPU seconds per question, questions/s, generated and prompt tokens/s
(reranker + generator, as the backend reports them), load seconds, failed records, mean k,
peak RSS, the share of decoding steps spent on rows that had already finished (as the
transformers backend counts them: it drops finished rows once half of a batch has ended, or
at once when a prompt waits for the place, see ``transformers-b8-full`` for a batch that
decodes until its longest answer ends; other backends: assumed to decode to the longest), and
the speed targets: at most 3.0 s per question for ``transformers-b8`` (infer's defaults: 8
rows, 64 questions per call) and batch 8 at least 1.3x faster per
question than batch 1, each with the old backend's figure beside it. Prints a markdown table
last and writes JSON (with each variant's backend settings).
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
    finished_row_share,
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

from dynamicrag.run_settings import run_settings

# The backend before the speed work: fp32, no prefix cache, the padded batch encoded in one pass,
# every row decoded until the batch's longest answer ends, OpenMP's own wait policy (an empty
# OMP_WAIT_POLICY is treated as unset), SDPA's attention for every prompt.
OLD = {"options": {"dtype": "float32", "prefix_cache": False, "prefill": "batch", "shrink_batch": False},
       "env": {"OMP_WAIT_POLICY": ""}, "sdpa_prefill": True}
# "batch": rows the backend decodes at a time; "chunk": questions per pipeline call (infer's
# --batch-size; default: CHUNK for a batched variant).
CHUNK = 64
VARIANTS = {
    "transformers-b1": {"backend": "transformers", "batch": 1, "chunk": 1},
    "transformers-b8": {"backend": "transformers", "batch": 8},
    "transformers-b16": {"backend": "transformers", "batch": 16},
    # Each LLM call one batch of 8 (infer's default before): no prompt waiting for a place.
    "transformers-b8-chunk8": {"backend": "transformers", "batch": 8, "chunk": 8},
    # The default without dropping finished rows from a batch (the lever's before/after).
    "transformers-b8-full": {"backend": "transformers", "batch": 8, "chunk": 8, "options": {"shrink_batch": False}},
    # The default decoding with the model's bf16 weights, not their int8 copy (that lever's before/after).
    "transformers-b1-bf16-decode": {"backend": "transformers", "batch": 1, "chunk": 1, "options": {"decode_weights": "model"}},
    "transformers-b8-bf16-decode": {"backend": "transformers", "batch": 8, "options": {"decode_weights": "model"}},
    # The default with every prompt prefilled by SDPA, not in causal blocks (that lever's before/after).
    "transformers-b1-sdpa-prefill": {"backend": "transformers", "batch": 1, "chunk": 1, "sdpa_prefill": True},
    "transformers-b8-sdpa-prefill": {"backend": "transformers", "batch": 8, "sdpa_prefill": True},
    "transformers-fp32-b1": {"backend": "transformers", "batch": 1, "chunk": 1, **OLD},
    "transformers-fp32-b8": {"backend": "transformers", "batch": 8, "chunk": 8, **OLD},
    "llamacpp": {"backend": "llamacpp", "batch": 8, "chunk": 8},
    "llamacpp-allcores": {"backend": "llamacpp", "batch": 8, "chunk": 8, "n_threads": os.cpu_count()},
    "openai-b16": {"backend": "openai", "batch": 16, "chunk": 16},
}
QUICK = {"questions": 1, "top_n": 2, "max_new_tokens": 4, "corpus_limit": 500,
         "variants": "transformers-b1,transformers-b8,transformers-fp32-b8,llamacpp-allcores,openai-b16"}
TARGET_S_PER_QUESTION, TARGET_BATCH_SPEEDUP = 3.0, 1.3  # the targets, at top-10 on this machine


def load(spec: dict):
    """The variant's backend, and the loopback server behind it (None but for ``openai``)."""
    from dynamicrag.llm import load_backend

    if spec["backend"] == "transformers":
        return load_backend("transformers", batch_size=spec["batch"], **spec.get("options", {})), None
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
    batch, chunk = spec["batch"], spec.get("chunk", CHUNK)
    if spec.get("sdpa_prefill"):
        from dynamicrag.llm import transformers_backend

        transformers_backend._CHUNKED_MIN_POSITIONS = sys.maxsize  # no prompt is long enough
    setup = nq_setup(args, extra_questions=1 + args.skip)
    # Without their own passages, so the pipeline retrieves (as spine.py and `infer --index`).
    questions = [ex.model_copy(update={"passages": []}) for ex in setup.examples[args.skip:]]
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
        steps_before = getattr(backend, "decoded_row_steps", None)
        todo = questions[1:]
        with Timer() as t:
            records = [r for i in range(0, len(todo), chunk) for r in pipeline.run(todo[i : i + chunk])]
    finally:
        if server is not None:
            server.stop()
    usage = meter.totals()
    ok = [r for r in records if not r["error"]]
    return {
        "variant": args.variant, "backend": spec["backend"], "batch": batch, "chunk": chunk, "questions": len(records),
        "seconds": t.wall, "seconds_per_question": t.wall / len(records),
        "cpu_seconds_per_question": t.cpu / len(records),
        "questions_per_second": len(records) / t.wall,
        "finished_row_steps": finished_row_share(
            meter.calls, None if steps_before is None else backend.decoded_row_steps - steps_before),
        "settings": run_settings(backend, command=[]),
        "generated_tokens_per_second": usage["completion_tokens"] / t.wall,
        "prompt_tokens_per_second": usage["prompt_tokens"] / t.wall,
        "llm_requests": usage["requests"], "load_seconds": loading.wall, "warmup_seconds": warmup.wall,
        "failed": len(records) - len(ok), "mean_k": mean(len(r["selected"]) for r in ok),
        "self_peak_rss_mb": peak_rss_mb(),
    }


def run_variant(name: str, args: argparse.Namespace) -> tuple[dict | None, list[str]]:
    """One variant in a fresh subprocess: its figures with the child's own peak RSS, and notes."""
    shared = ["--questions", str(args.questions), "--skip", str(args.skip), "--top-n", str(args.top_n),
              "--max-new-tokens", str(args.max_new_tokens)]
    shared += ["--free"] if args.free else []
    shared += ["--corpus-limit", str(args.corpus_limit)] if args.corpus_limit else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, **VARIANTS[name].get("env", {})}
        run = run_child([sys.executable, __file__, "--variant", name, "--child-out", str(out), *shared], env=env)
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
    ap.add_argument("--skip", type=int, default=0, help="Start at this NQ question (e.g. 100 for questions 100-199)")
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
    checks = issue18_checks(by_name)
    speedup = None
    batched = [r for r in rows if r["backend"] == "transformers" and r["batch"] > 1 and "fp32" not in r["variant"]]
    if "transformers-b1" in by_name and batched:
        best = max(batched, key=lambda r: r["questions_per_second"])
        speedup = {"variant": best["variant"],
                   "times_b1": best["questions_per_second"] / by_name["transformers-b1"]["questions_per_second"]}
    result = {
        "model": f"{MODEL_NAME}; transformers (default settings unless the variant says fp32), llama.cpp Q4_1 GGUF",
        "questions": args.questions, "skip": args.skip, "top_n": args.top_n, "max_new_tokens": args.max_new_tokens,
        "constrained": not args.free, "rows": rows, "batched_speedup": speedup, "issue18": checks, "notes": notes,
    }
    path = write_result("throughput", result, args)

    print_header(
        args,
        f"`infer` path: NQ questions {args.skip}-{args.skip + args.questions - 1} (+1 warm-up), BM25 top-{args.top_n} "
        f"of the shared NQ corpus, dynamic reranker ({'free' if args.free else 'constrained'} decoding), generator cap "
        f"{args.max_new_tokens} tokens; each variant in its own process; JSON: {path}",
        *[f"- {note}" for note in notes],
        *[f"- {line}" for line in checks["lines"]],
    )
    print(markdown_table(
        ["variant", "batch", "questions per call", "s/question", "CPU s/question", "questions/s", "generated tok/s", "prompt tok/s",
         "finished-row decode steps", "load s", "failed", "mean k", "peak RSS MB"],
        [[r["variant"], r["batch"] if r["backend"] != "llamacpp" else "1 (sequential)", r.get("chunk", r["batch"]),
          f"{r['seconds_per_question']:.2f}", f"{r['cpu_seconds_per_question']:.1f}", f"{r['questions_per_second']:.3f}",
          f"{r['generated_tokens_per_second']:.1f}", f"{r['prompt_tokens_per_second']:.0f}",
          percent(r.get("finished_row_steps")), f"{r['load_seconds']:.1f}", f"{r['failed']}/{r['questions']}", fmt(r["mean_k"]),
          f"{r['peak_rss_mb']:.0f}"]
         for r in rows],
    ))


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def issue18_checks(by_name: dict[str, dict]) -> dict:
    """Issue 18's two checks, on the default backend, with the old backend's figures beside them.

    Returns:
        ``s_per_question`` (transformers-b8), ``batch_speedup`` (b8 over b1, per question),
        their ``old`` values (the fp32 variants), whether each target is ``met``, and
        printable ``lines``.
    """
    def spq(name: str) -> float | None:
        return by_name[name]["seconds_per_question"] if name in by_name else None

    def ratio(b1: str, b8: str) -> float | None:
        return spq(b1) / spq(b8) if spq(b1) and spq(b8) else None

    out = {
        "s_per_question": spq("transformers-b8"), "s_per_question_old": spq("transformers-fp32-b8"),
        "batch_speedup": ratio("transformers-b1", "transformers-b8"),
        "batch_speedup_old": ratio("transformers-fp32-b1", "transformers-fp32-b8"),
    }
    out["s_per_question_met"] = out["s_per_question"] is not None and out["s_per_question"] <= TARGET_S_PER_QUESTION
    out["batch_speedup_met"] = out["batch_speedup"] is not None and out["batch_speedup"] >= TARGET_BATCH_SPEEDUP
    out["lines"] = [
        f"s/question at batch 8 (target <= {TARGET_S_PER_QUESTION:.1f}): {fmt(out['s_per_question'])} "
        f"(old backend: {fmt(out['s_per_question_old'])}): {'met' if out['s_per_question_met'] else 'NOT met'}",
        f"batch 8 vs batch 1, per question (target >= {TARGET_BATCH_SPEEDUP}x): {fmt(out['batch_speedup'])}x "
        f"(old backend: {fmt(out['batch_speedup_old'])}x): {'met' if out['batch_speedup_met'] else 'NOT met'}",
    ]
    return out


if __name__ == "__main__":
    main()
