"""Retrieval speed side by side: BM25 (bm25s vs rank_bm25) and dense FAISS (flat, HNSW, IVF),
on the shared NQ corpus and on a 100k-passage corpus built from it.

    python benchmarks/retrieval.py                   # full: 1000 queries, 3.6k and 100k passages
    python benchmarks/retrieval.py --quick           # smoke run, about two minutes

Corpora:

* ``nq``: the shared NQ corpus, 2655 nq-open-oracle gold passages (each kept once) + the
  1000-passage Wikipedia sample = 3600 passages.
* ``nq-100k`` (--large-size): the 3600 passages, then synthetic ones up to the size. BM25:
  synthetic passage i takes a random source passage (seeded), shuffles its sentences and
  swaps one of them for a random sentence of another random passage; it keeps the source's
  title. So vocabulary and length statistics are the real ones and no passage is an exact
  copy. Dense: encoding 100k passages with all-MiniLM-L6-v2 on this CPU (~36 passages/s)
  would take most of an hour, so the vectors are the real embeddings of the 3600 passages
  plus, for each synthetic passage, the embedding of a random real passage with Gaussian
  noise (std --noise per dimension) added and the result L2-normalised again; the JSON
  records the mean cosine between such a copy and its source.

Each (corpus, retriever) runs in its own subprocess, so its peak RSS (``os.wait4``) is its
own; the child also reads its RSS once its inputs (passages, vectors, queries) are loaded and
again after the search, so "index RSS MB" is what the built index (and search) keeps resident.

Queries: the first --queries NQ questions (batched). BM25: build time (tokenise + index, the
project's BM25Retriever: stemming and stopwords) and queries/s for bm25s; rank_bm25's
BM25Okapi on the same tokens (bm25s' tokenizer, English stopwords, PyStemmer), on
--rank-bm25-queries queries as it scores the whole corpus in Python per query, with its top-10
overlap with bm25s. Dense: the index build from the vectors (DenseRetriever.build with
``embeddings=``), search queries/s on precomputed query vectors (MiniLM's own encoding rate is
reported once, apart), recall@10 of the approximate indexes against the exact flat one (mean
share of the flat top 10 found) and the index's serialised size. The corpus and query vectors
are cached in $DYNAMICRAG_CACHE/benchmarks/. Prints a markdown table last and writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import (
    Timer,
    add_common_args,
    current_rss_mb,
    fmt,
    log,
    markdown_table,
    nq_data,
    parse_args,
    print_header,
    run_child,
    write_result,
)

from dynamicrag.retrieve import passage_text
from dynamicrag.schema import Passage

K = 10
BM25 = ("bm25s", "rank_bm25")
DENSE = ("flat", "hnsw", "ivf")
LABELS = {"bm25s": "bm25s (BM25Retriever)", "rank_bm25": "rank_bm25 (BM25Okapi)",
          "flat": "FAISS flat (exact)", "hnsw": "FAISS HNSW", "ivf": "FAISS IVF"}
QUICK = {"queries": 50, "rank_bm25_queries": 20, "large_size": 5000, "corpus_limit": 300}
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


# --- the corpora ----------------------------------------------------------------------------


def synthetic_corpus(passages: list[Passage], size: int, seed: int = 0) -> list[Passage]:
    """``passages`` followed by sentence-shuffled, one-sentence-swapped copies up to ``size``."""
    rng = np.random.default_rng(seed)
    sentences = [_SENTENCE.split(p.text) for p in passages]
    out = list(passages)
    for i in range(len(passages), size):
        src = int(rng.integers(len(passages)))
        parts = list(sentences[src])
        rng.shuffle(parts)
        other = sentences[int(rng.integers(len(passages)))]
        parts[int(rng.integers(len(parts)))] = other[int(rng.integers(len(other)))]
        out.append(Passage(id=f"synthetic:{i}", title=passages[src].title, text=" ".join(parts)))
    return out


def noisy_embeddings(vectors: np.ndarray, size: int, noise: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """``vectors`` followed by noise-perturbed, renormalised copies up to ``size`` rows.

    Returns:
        ``(embeddings, mean cosine of a copy with its source)``.
    """
    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    src = rng.integers(n, size=size - n)
    copies = vectors[src] + rng.normal(0.0, noise, (size - n, dim)).astype(np.float32)  # (size - n, dim)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    cosine = float(np.mean(np.sum(copies * vectors[src], axis=1))) if size > n else 1.0
    return np.ascontiguousarray(np.concatenate([vectors, copies]), dtype=np.float32), cosine


def overlap_at_k(found: list[list[int]], exact: list[list[int]]) -> float:
    """Mean share of each exact top-k list that ``found`` also returned."""
    return float(np.mean([len(set(f) & set(e)) / max(len(e), 1) for f, e in zip(found, exact)]))


def cached_vectors(texts: list[str], kind: str, cache: Path) -> tuple[Path, float | None]:
    """Normalised MiniLM vectors of ``texts`` in a cached .npy (``kind``: document or query).

    Returns:
        The file, and the encoding rate in texts/s (None when it was already cached).
    """
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"minilm-{kind}-{len(texts)}-{key}.npy"
    if path.is_file():
        return path, None
    from dynamicrag.retrieve import load_encoder

    log(f"encoding {len(texts)} {kind} texts with all-MiniLM-L6-v2 (cached in {cache})")
    encode = getattr(load_encoder(None), f"encode_{kind}")
    with Timer() as t:
        vectors = encode(texts, batch_size=32, show_progress_bar=False, convert_to_numpy=True,
                         normalize_embeddings=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(vectors, dtype=np.float32))
    return path, len(texts) / t.wall


# --- one configuration, in a child process -------------------------------------------------


def child(args: argparse.Namespace) -> dict:
    """Build and search one index over one corpus; top-10 positions are returned for the parent."""
    examples, passages = nq_data(args.corpus_limit)
    queries = [ex.question for ex in examples[: args.queries]]
    large = args.corpus != "nq"
    corpus = synthetic_corpus(passages, args.large_size) if large else passages
    kind = args.child
    out: dict = {}
    if kind in BM25:
        from dynamicrag.retrieve import BM25Retriever

        # Warm-up outside the timings: bm25s and the stemmer load lazily on first use.
        BM25Retriever.build(passages[:100], show_progress=False).search_positions(queries[:2], 1)
        if kind == "rank_bm25":
            queries = queries[: args.rank_bm25_queries]
        inputs = current_rss_mb()
        if kind == "bm25s":
            with Timer() as build:
                retriever = BM25Retriever.build(corpus, show_progress=False)
            with Timer() as search:
                top = [[i for i, _ in row] for row in retriever.search_positions(queries, K)]
        else:
            build, search, top = rank_bm25_run(corpus, queries)
    else:
        from dynamicrag.retrieve import DenseRetriever, load_encoder

        load_encoder(None)  # build() loads it (once per process) even with vectors: not index time
        vectors = np.load(args.vectors)
        if large:
            vectors, out["copy_cosine_to_source"] = noisy_embeddings(vectors, len(corpus), args.noise)
        query_vectors = np.load(args.query_vectors)
        inputs = current_rss_mb()
        with Timer() as build:
            retriever = DenseRetriever.build(corpus, embeddings=vectors, faiss_index=kind, show_progress=False)
        # The project's search path (index parameters, -1 filtering) on precomputed query
        # vectors: encoding is timed once, apart, as it is the same for every index.
        retriever.encode_queries = lambda texts: query_vectors
        retriever.search_positions(queries[:1], K)  # warm-up: FAISS starts its thread pool on first use
        with Timer() as search:
            top = [[i for i, _ in row] for row in retriever.search_positions(queries, K)]
        import faiss

        out["index_mb"] = faiss.serialize_index(retriever.index).nbytes / 2**20
        out["options"] = {k: v for k, v in retriever.options().items()
                          if k in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe")}
    return {**out, "passages": len(corpus), "queries": len(queries), "build_seconds": build.wall,
            "build_cpu_seconds": build.cpu, "queries_per_second": len(queries) / search.wall,
            "inputs_rss_mb": inputs, "index_rss_mb": current_rss_mb() - inputs, "top": top}


def rank_bm25_run(corpus: list[Passage], queries: list[str]) -> tuple[Timer, Timer, list[list[int]]]:
    """rank_bm25's BM25Okapi on the tokens bm25s gets (its tokenizer, stopwords, stemmer)."""
    import bm25s
    import Stemmer
    from rank_bm25 import BM25Okapi

    from dynamicrag.retrieve.bm25 import STOPWORDS

    stemmer = Stemmer.Stemmer("english")  # BM25Retriever.build's default

    def tokenize(texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords=STOPWORDS, stemmer=stemmer, return_ids=False, show_progress=False)

    with Timer() as build:
        okapi = BM25Okapi(tokenize([passage_text(p) for p in corpus]))
    top = []
    with Timer() as search:
        for tokens in tokenize(queries):
            scores = okapi.get_scores(tokens)  # (n_passages,): the whole corpus, per query
            best = np.argpartition(-scores, K)[:K] if len(scores) > K else np.arange(len(scores))
            top.append(best[np.argsort(-scores[best])].tolist())
    return build, search, top


# --- the parent ----------------------------------------------------------------------------


def run_config(kind: str, corpus: str, args: argparse.Namespace, vectors: dict) -> dict | None:
    argv = [sys.executable, __file__, "--child", kind, "--corpus", corpus, "--queries", str(args.queries),
            "--rank-bm25-queries", str(args.rank_bm25_queries), "--large-size", str(args.large_size),
            "--noise", str(args.noise)]
    argv += ["--corpus-limit", str(args.corpus_limit)] if args.corpus_limit else []
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in vectors.items()]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        run = run_child([*argv, "--child-out", str(out)])
        if run.returncode != 0 or not out.is_file():
            log(f"{corpus} {kind}: failed (exit {run.returncode}): {run.error_tail()}")
            return None
        row = json.loads(out.read_text())
    return {**row, "corpus": corpus, "retriever": kind, "peak_rss_mb": run.peak_rss_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, llm=False)
    ap.add_argument("--queries", type=int, default=1000, help="NQ questions searched per index")
    ap.add_argument("--rank-bm25-queries", type=int, default=200, help="Queries for rank_bm25 (slow per query)")
    ap.add_argument("--large-size", type=int, default=100_000, help="Passages of the synthetic large corpus (0: skip)")
    ap.add_argument("--noise", type=float, default=0.05, help="Per-dimension noise std of the synthetic vectors")
    ap.add_argument("--no-dense", action="store_true", help="BM25 only")
    ap.add_argument("--embedding-cache", type=Path, default=None,
                    help="Folder for the MiniLM vectors between runs (default: $DYNAMICRAG_CACHE/benchmarks)")
    for hidden in ("--child", "--corpus", "--vectors", "--query-vectors", "--child-out"):  # child mode
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = parse_args(ap, QUICK)
    if args.child:
        Path(args.child_out).write_text(json.dumps(child(args)))
        return

    examples, passages = nq_data(args.corpus_limit)
    queries = [ex.question for ex in examples[: args.queries]]
    corpora = {"nq": len(passages)}
    if args.large_size > len(passages):
        corpora[f"nq-{args.large_size / 1000:g}k"] = args.large_size
    if importlib.util.find_spec("rank_bm25") is None:
        log("rank_bm25 is not installed (pip install rank-bm25): its rows are skipped")
        kinds = ["bm25s"]
    else:
        kinds = list(BM25)

    vectors, encoding = {}, {}
    if not args.no_dense:
        from dynamicrag.llm.models import cache_dir

        cache = args.embedding_cache or cache_dir() / "benchmarks"
        vectors["vectors"], encoding["corpus_passages_per_second"] = cached_vectors(
            [passage_text(p) for p in passages], "document", cache)
        vectors["query_vectors"], encoding["queries_per_second"] = cached_vectors(queries, "query", cache)
        kinds += list(DENSE)

    rows = []
    for corpus in corpora:
        for kind in kinds:
            log(f"{corpus} ({corpora[corpus]} passages): {LABELS[kind]}")
            row = run_config(kind, corpus, args, vectors)
            rows += [row] if row else []
    for corpus in corpora:  # agreement with the exact / reference run of the same corpus
        ref = {r["retriever"]: r["top"] for r in rows if r["corpus"] == corpus}
        for r in (r for r in rows if r["corpus"] == corpus):
            if r["retriever"] in ("hnsw", "ivf") and "flat" in ref:
                r["recall_at_10_vs_exact"] = overlap_at_k(r["top"], ref["flat"])
            if r["retriever"] == "rank_bm25" and "bm25s" in ref:
                r["top10_overlap_with_bm25s"] = overlap_at_k(r["top"], ref["bm25s"][: len(r["top"])])
    for r in rows:
        del r["top"]

    result = {"queries": len(queries), "k": K, "corpora": corpora, "noise_std": args.noise,
              "encoder": None if args.no_dense else "all-MiniLM-L6-v2 (bundled), normalised",
              "encoding": encoding, "rows": rows}
    path = write_result("retrieval", result, args)

    cosine = next((r["copy_cosine_to_source"] for r in rows if "copy_cosine_to_source" in r), None)
    print_header(
        args,
        f"{len(queries)} NQ questions, top-{K}; corpora {corpora}; each row in its own process; JSON: {path}",
        *([f"all-MiniLM-L6-v2 encoding (apart from the index rows): corpus "
           f"{fmt(encoding['corpus_passages_per_second'], '.1f')} passages/s, queries "
           f"{fmt(encoding['queries_per_second'], '.1f')}/s ('-': read from the cache)"
           + (f"; synthetic vectors' cosine to their source {cosine:.3f}" if cosine else "")] if encoding else []),
    )
    print(markdown_table(
        ["corpus", "passages", "retriever", "build s", "queries/s", "recall@10 vs exact", "top-10 overlap w/ bm25s",
         "index MB (serialised)", "peak RSS MB", "index RSS MB"],
        [[r["corpus"], r["passages"], LABELS[r["retriever"]], f"{r['build_seconds']:.2f}",
          f"{r['queries_per_second']:.0f} ({r['queries']} q)", fmt(r.get("recall_at_10_vs_exact"), ".3f"),
          fmt(r.get("top10_overlap_with_bm25s"), ".3f"), fmt(r.get("index_mb"), ".1f"), f"{r['peak_rss_mb']:.0f}",
          round(r["index_rss_mb"])]
         for r in rows],
    ))


if __name__ == "__main__":
    main()
