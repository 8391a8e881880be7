"""A million-vector sharded IVF-PQ index: build time, memory, disk, queries/s, recall@10.

    python benchmarks/index_1m.py                      # 1M x 768 (Contriever's dimension)
    python benchmarks/index_1m.py --quick              # smoke run: 20k vectors
    python benchmarks/index_1m.py --n 100000 --nprobe 8,32,128

What the Wikipedia index (21M x 768 Contriever vectors, see docs/scaling.md) costs, measured
on --n vectors through the same code (:func:`dynamicrag.retrieve.build_sharded_index`). Nothing
is read from disk: the vectors are synthetic, generated chunk by chunk from a seed (each pass
of the build regenerates the same chunks), so memory holds one chunk, never the 3 GB of
float32 vectors; the passages are short generated ones (``"synthetic passage i"``), streamed.

Data: --groups topic centres (N(0, 1) per dimension; default n / 100, so ~100 vectors a topic);
each vector is a random centre plus N(0, --spread) noise, so it has near neighbours as passages
on one topic do. Queries are centres plus N(0, --spread / 2) noise. Inner product on
unnormalised vectors, as Contriever's, is the metric.

Reported, for each --nprobe (IVF cells visited per query):

* the estimate printed *before* building (:func:`dynamicrag.retrieve.sharded.estimate`);
* build time (count + sample pass, passages, training, adding pass, merge) and its parts;
* peak RSS of the process over the build and its growth, against the estimated build peak;
* disk size of the index folder against the estimate;
* queries/s of ``search_vectors`` (top 10) in batches of 100 precomputed query vectors (no
  encoder);
* recall@10 against exact inner-product search on --exact-queries queries (the share of the
  exact top 10 in the index's top 10), the exact top 10 computed by brute force over the same
  chunks; and the share of the exact top 10 in the index's top 40, the candidates the
  DynamicRAG reranker sees;
* known-item recall: for --exact-queries queries made by adding noise to a stored vector (which
  is then the exact top 1), the share whose vector is the index's top 1 and in its top 10
  (FAISS's "1-recall@1" and "1-recall@10").

On this data the vectors of one topic are near-ties for a query of that topic (their order is
set by their noise), the hardest case for product quantisation: recall@10 is limited by the
PQ code (``--pq-m``), not by ``nprobe``, and is a floor for real embeddings, whose neighbours
are better separated. The known-item queries show the other end: one clear answer.

Prints a markdown table last and writes ``benchmarks/results/index_1m.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    current_rss_mb,
    int_list,
    log,
    markdown_table,
    parse_args,
    peak_rss_mb,
    print_header,
    write_result,
)

from dynamicrag.retrieve import build_sharded_index
from dynamicrag.retrieve.sharded import format_estimate
from dynamicrag.schema import Passage

K = 10


class SyntheticVectors:
    """A re-iterable source of ``(ids, vectors)`` chunks, the same on every call (seeded per chunk)."""

    __name__ = "synthetic vectors"

    def __init__(self, n: int, dim: int, groups: int, spread: float, chunk: int, seed: int = 0) -> None:
        self.n, self.dim, self.spread, self.chunk, self.seed = n, dim, spread, chunk, seed
        self.centres = np.random.default_rng(seed).standard_normal((groups, dim), dtype=np.float32)

    def __call__(self):
        for start in range(0, self.n, self.chunk):
            stop = min(start + self.chunk, self.n)
            rng = np.random.default_rng((self.seed, start))
            topic = rng.integers(0, len(self.centres), stop - start)
            noise = rng.standard_normal((stop - start, self.dim), dtype=np.float32)
            yield np.arange(start, stop), self.centres[topic] + self.spread * noise  # (chunk, dim)

    def queries(self, count: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self.n + 1))  # a key no chunk uses
        topic = rng.integers(0, len(self.centres), count)
        noise = rng.standard_normal((count, self.dim), dtype=np.float32)
        return self.centres[topic] + self.spread / 2 * noise  # (count, dim)

    def near_stored(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, queries): ``count`` stored vectors plus N(0, spread / 2) noise, and their rows.

        A known-item search: the stored vector scores far above its topic's other vectors
        (``|x|^2`` vs ``x . y``), as a passage written about the question stands out from
        passages on its topic, so the query has one clear exact answer.
        """
        rng = np.random.default_rng((self.seed, self.n + 2))
        rows = np.sort(rng.choice(self.n, count, replace=False))
        picked = np.empty((count, self.dim), dtype=np.float32)
        for ids, vectors in self():
            inside = (rows >= ids[0]) & (rows <= ids[-1])
            picked[inside] = vectors[rows[inside] - ids[0]]
        return rows, picked + self.spread / 2 * rng.standard_normal(picked.shape, dtype=np.float32)


def synthetic_passages(n: int):
    """Passage i for vector i, in vector order (so a hit's position is its vector's row)."""
    return (Passage(id=str(i), text=f"synthetic passage {i}") for i in range(n))


def exact_top_k(source: SyntheticVectors, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows by inner product, brute force chunk by chunk (a running merge)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, vectors in source():
        scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)  # (n_queries, k + chunk)
        rows = np.concatenate([best_rows, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)
    return best_rows


def recall(found: list, exact: np.ndarray, depth: int = K) -> float:
    """Mean share of the exact top K among the first ``depth`` hits."""
    return float(np.mean([len({i for i, _ in f[:depth]} & set(e.tolist())) / K for f, e in zip(found, exact)]))


def index_steps(out: Path) -> str:
    steps = json.loads((out / "meta.json").read_text())["build"]["steps"]
    return ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())


def queries_per_second(index, queries: np.ndarray, batch: int = 100) -> float:
    index.search_vectors(queries[:batch], K)  # warm-up: first touch of the memory-mapped lists
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        index.search_vectors(queries[i : i + batch], K)
    return len(queries) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="Vectors")
    ap.add_argument("--dim", type=int, default=768, help="Dimension (Contriever: 768)")
    ap.add_argument("--nprobe", type=int_list, default=[4, 16, 64], help="IVF cells visited per query, comma-separated")
    ap.add_argument("--nlist", type=int, default=None, help="IVF cells (default: about 4 sqrt(n))")
    ap.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantizers (default: dim / 8)")
    ap.add_argument("--train-size", type=int, default=None, help="Training sample (default: 64 a cell)")
    ap.add_argument("--shard-size", type=int, default=250_000, help="Vectors per shard")
    ap.add_argument("--chunk-size", type=int, default=50_000, help="Vectors generated and added per step")
    ap.add_argument("--groups", type=int, default=None, help="Topic centres of the synthetic data (default: n / 100)")
    ap.add_argument("--spread", type=float, default=0.5, help="Noise std of a vector around its centre")
    ap.add_argument("--queries", type=int, default=1000, help="Queries timed for queries/s")
    ap.add_argument("--exact-queries", type=int, default=200, help="Queries with an exact top 10 for recall")
    ap.add_argument("--out", type=Path, default=None, help="Keep the index here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="Output JSON (default: results/index_1m.json)")
    args = parse_args(ap, {"n": 20_000, "shard_size": 8_000, "chunk_size": 5_000, "queries": 200, "exact_queries": 100})

    groups = args.groups or max(1, args.n // 100)  # ~100 vectors a topic: the top 10 share the query's topic
    source = SyntheticVectors(args.n, args.dim, groups, args.spread, args.chunk_size)
    queries = source.queries(max(args.queries, args.exact_queries))
    start = time.perf_counter()
    exact = exact_top_k(source, queries[: args.exact_queries], K)
    log(f"exact top {K} of {args.exact_queries} queries by brute force in {time.perf_counter() - start:.1f} s")
    known_rows, known_queries = source.near_stored(args.exact_queries)

    options = {"shard_size": args.shard_size, "chunk_size": args.chunk_size, "nlist": args.nlist,
               "pq_m": args.pq_m, "train_size": args.train_size}
    estimates: list[dict] = []

    def show(est: dict) -> None:
        estimates.append(est)
        log("estimate before building:\n" + format_estimate(est))

    out = args.out or Path(tempfile.mkdtemp(prefix="index_1m-")) / "index"
    rss_before = current_rss_mb()
    try:
        start = time.perf_counter()
        index = build_sharded_index(
            source, out, passages=synthetic_passages(args.n), encoder=None, overwrite=True, on_estimate=show,
            show_progress=False, **{k: v for k, v in options.items() if v is not None},
        )
        build_s = time.perf_counter() - start
        build_peak = peak_rss_mb()
        disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        est = estimates[0]
        passages_disk = (out / "passages.jsonl").stat().st_size
        est_disk = est["index_disk_bytes"] + est["offsets_disk_bytes"] + passages_disk  # passages: measured
        steps = json.loads((out / "meta.json").read_text())["build"]["steps"]
        log(f"built in {build_s:.1f} s ({index_steps(out)}), {disk / 2**20:.1f} MiB on disk, peak RSS {build_peak:.0f} MB")
        results, rows = [], []
        for nprobe in args.nprobe:
            index.config.nprobe = nprobe
            found = index.search_vectors(queries[: args.exact_queries], 40)
            r, r40 = recall(found, exact), recall(found, exact, 40)
            known = index.search_vectors(known_queries, K)
            k1 = float(np.mean([bool(h) and h[0][0] == row for h, row in zip(known, known_rows)]))
            k10 = float(np.mean([row in {i for i, _ in h} for h, row in zip(known, known_rows)]))
            qps = queries_per_second(index, queries[: args.queries])
            log(f"nprobe={nprobe}: recall@{K} {r:.3f}, exact top {K} in top 40 {r40:.3f}, "
                f"known item top 1 {k1:.3f} / top {K} {k10:.3f}, {qps:.0f} queries/s")
            results.append({"nprobe": nprobe, f"recall_at_{K}": round(r, 4), f"top{K}_in_top40": round(r40, 4),
                            "known_item_at_1": round(k1, 4), f"known_item_at_{K}": round(k10, 4),
                            "queries_per_s": round(qps, 1)})
            rows.append([nprobe, f"{r:.3f}", f"{r40:.3f}", f"{k1:.3f}", f"{k10:.3f}", f"{qps:.0f}"])
    finally:
        if args.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)

    summary = {
        "n": args.n, "dim": args.dim, "factory": est["factory"], "shards": est["n_shards"],
        "train_size": est["train_size"], "build_s": round(build_s, 1), "build_steps_s": steps,
        "peak_rss_mb": round(build_peak, 1), "build_rss_growth_mb": round(build_peak - rss_before, 1),
        "estimated_build_peak_mb": round(est["build_peak_bytes"] / 2**20, 1),
        "disk_mb": round(disk / 2**20, 1), "estimated_disk_mb": round(est_disk / 2**20, 1),
        "index_disk_mb": round((disk - passages_disk) / 2**20, 1),
        "estimate": est,
    }
    path = write_result("index_1m", {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                     "summary": summary, "results": results}, args)
    log(f"wrote {path}")
    print_header(
        args,
        f"{args.n:,} x {args.dim} synthetic vectors, {est['factory']}, {est['n_shards']} shard(s) of "
        f"{args.shard_size:,}, trained on {est['train_size']:,}; recall@{K} against exact search on "
        f"{args.exact_queries} queries, queries/s in batches of 100 query vectors.",
    )
    print(markdown_table(
        ["build s", "peak RSS MB (est. build peak)", "RSS growth MB", "disk MB (est.)", "index MB (no passages)"],
        [[f"{build_s:.1f}", f"{build_peak:.0f} ({est['build_peak_bytes'] / 2**20:.0f})",
          f"{build_peak - rss_before:.0f}", f"{disk / 2**20:.1f} ({est_disk / 2**20:.1f})",
          f"{(disk - passages_disk) / 2**20:.1f}"]],
    ))
    print()
    print(markdown_table(["nprobe", f"recall@{K}", f"exact top {K} in top 40", "known item top 1",
                          f"known item in top {K}", "queries/s"], rows))


if __name__ == "__main__":
    main()
