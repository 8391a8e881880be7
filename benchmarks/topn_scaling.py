"""How the dynamic reranker's cost grows with N (passages per question), at a 40-passage window.

    python benchmarks/topn_scaling.py                # full: 10 questions, N = 50, 100, 200, 500
    python benchmarks/topn_scaling.py --quick        # smoke run, about two minutes

Passages: BM25 top-N over the shared NQ corpus (3600 passages) for the first --questions NQ
questions. The dynamic reranker (bundled SmolLM2-135M-Instruct, transformers, fp32 CPU;
decoding constrained to the id grammar unless ``--free``) sees all N: past one window it runs
the top-N reduction (chunks of --window passages, survivors, a final call), so calls grow as
ceil(N / window) + 1 and prompt tokens about linearly in N.

Figures per N: LLM calls, prompt and generated tokens per question (the Selection's own
accounting, counted by the backend's tokenizer), wall and CPU seconds per question (batch time
/ questions; model load and a warm-up excluded), and the reduction's rounds and survivors. A
least-squares line of each figure against N gives the per-passage cost (slope) and R^2; the
plot (PNG) shows points and lines. Prints a markdown table last and writes JSON.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from _common import (
    MODEL_NAME,
    RESULTS,
    Timer,
    add_common_args,
    fmt,
    int_list,
    log,
    markdown_table,
    mean,
    nq_setup,
    parse_args,
    peak_rss_mb,
    print_header,
    reduction_summary,
    write_result,
)

from dynamicrag.llm import load_backend
from dynamicrag.prompts import load_style
from dynamicrag.rerank import DynamicReranker

QUICK = {"questions": 1, "sizes": "4,8", "window": 4, "corpus_limit": 500}
FIGURES = {
    "calls": "LLM calls / question",
    "prompt_tokens": "prompt tokens / question",
    "seconds_per_query": "seconds / question",
}


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares ``y = slope * x + intercept`` and its R^2 (1.0 for a perfect line)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (slope * x + intercept)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def plot(rows: list[dict], fits: dict[str, dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    grid = np.linspace(0, max(ns) * 1.05, 50)
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(4.2 * len(FIGURES), 3.6))
    for ax, (key, label) in zip(axes, FIGURES.items()):
        fit = fits[key]
        ax.plot(ns, [r[key] for r in rows], "o", label="measured")
        ax.plot(grid, fit["slope"] * grid + fit["intercept"], "-", alpha=0.7,
                label=f"{fit['slope']:.3g}/passage, R²={fit['r2']:.3f}")
        ax.set_xlabel("N (passages reranked)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, questions=10)
    ap.add_argument("--sizes", default="50,100,200,500", help="Comma-separated N")
    ap.add_argument("--window", type=int, default=40, help="Passages per call (paper: 40)")
    ap.add_argument("--batch-size", type=int, default=8, help="Prompts per forward batch")
    ap.add_argument("--plot", type=Path, default=None,
                    help="PNG (default: results/topn_scaling.png, or .quick.png with --quick)")
    args = parse_args(ap, QUICK)
    sizes = sorted(int_list(args.sizes))
    if len(sizes) < 2:
        ap.error("--sizes needs at least two values for a fit")
    plot_path = args.plot or RESULTS / f"topn_scaling{'.quick' if args.quick else ''}.png"

    setup = nq_setup(args)
    if max(sizes) > len(setup.passages):
        ap.error(f"N={max(sizes)} is more than the corpus' {len(setup.passages)} passages")
    backend = load_backend("transformers", batch_size=args.batch_size)
    style = load_style("default")
    reranker = DynamicReranker(backend, style, window=args.window, constrained=not args.free)
    reranker.select(setup.top(3, setup.examples[:1]))  # warm-up: first passes, the grammar's token table

    rows = []
    for n in sizes:
        log(f"N={n}: {len(setup.examples)} questions")
        batch = setup.top(n)
        with Timer() as t:
            selections = reranker.select(batch)
        rows.append({
            "n": n,
            "calls": mean(s.calls for s in selections),
            # Chunks of one reduction round plus the final call: the calls when the survivors
            # fit one window (more rounds add calls; no survivors, one fewer).
            "calls_one_round": math.ceil(n / args.window) + 1 if n > args.window else 1,
            "prompt_tokens": mean(s.prompt_tokens for s in selections),
            "completion_tokens": mean(s.completion_tokens for s in selections),
            "seconds_per_query": t.wall / len(batch),
            "cpu_seconds_per_query": t.cpu / len(batch),
            "reduction": reduction_summary(selections, n, args.window, style),
            "mean_k": mean(s.k for s in selections),
            "failed": sum(s.error is not None for s in selections),
        })

    fits = {key: linear_fit([r["n"] for r in rows], [r[key] for r in rows]) for key in FIGURES}
    title = f"Dynamic reranker cost vs N (window {args.window})" + (" - QUICK/SMOKE RUN" if args.quick else "")
    plot(rows, fits, title, plot_path)
    result = {
        "model": backend.model, "backend": "transformers", "batch_size": args.batch_size,
        "questions": len(setup.examples), "corpus_passages": len(setup.passages), "window": args.window,
        "constrained": not args.free, "rows": rows, "fits": fits, "plot": str(plot_path),
        "peak_rss_mb": peak_rss_mb(),
    }
    path = write_result("topn_scaling", result, args)

    print_header(
        args,
        f"{len(setup.examples)} NQ questions, BM25 top-N over {len(setup.passages)} passages; {MODEL_NAME} fp32, "
        f"transformers batch {args.batch_size}; window {args.window}; {'free' if args.free else 'constrained'} "
        f"decoding; peak RSS {result['peak_rss_mb']:.0f} MB; JSON: {path}; plot: {plot_path}",
    )
    print("Linear fit against N:\n")
    print(markdown_table(
        ["figure", "per passage (slope)", "intercept", "R²"],
        [[label, f"{fits[k]['slope']:.4g}", f"{fits[k]['intercept']:.4g}", f"{fits[k]['r2']:.4f}"]
         for k, label in FIGURES.items()],
    ))
    print()
    print(markdown_table(
        ["N", "LLM calls/q", "calls, 1 round + final", "prompt tok/q", "generated tok/q", "s/q", "CPU s/q",
         "rounds", "round-1 survivors", "no final call", "k", "failed"],
        [[r["n"], f"{r['calls']:.2f}", r["calls_one_round"], f"{r['prompt_tokens']:.0f}",
          f"{r['completion_tokens']:.1f}", f"{r['seconds_per_query']:.2f}", f"{r['cpu_seconds_per_query']:.2f}",
          fmt(r["reduction"]["rounds"], ".1f"), fmt(r["reduction"]["round1_survivors"]),
          f"{r['reduction']['no_final_call']}/{len(setup.examples)}", fmt(r["mean_k"]), r["failed"]]
         for r in rows],
    ))


if __name__ == "__main__":
    main()
