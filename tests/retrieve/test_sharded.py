"""Sharded IVF-PQ index from Contriever-layout vector files and a DPR tsv: the estimate comes
before the build, memory is bounded by a chunk, recall is close to exact search, ids reach the
right passages, and the folder loads and searches like every index."""

from __future__ import annotations

import json
import pickle
import tracemalloc

import numpy as np
import pytest

from dynamicrag.retrieve import ShardedDenseRetriever, build_sharded_index, clear_index_cache, load_index
from dynamicrag.retrieve.sharded import (
    embedding_files,
    estimate,
    format_estimate,
    read_embedding_file,
    reservoir_add,
)
from dynamicrag.schema import Passage

N, DIM, GROUPS, FILES = 4_000, 32, 400, 4
# Small IVF-PQ settings that train in about a second on one thread.
SMALL = {"nlist": 16, "pq_m": 8, "pq_nbits": 5, "train_size": 1500, "nprobe": 8}


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """FAISS's OpenMP threads spin-wait; on a busy 2-core machine one thread is faster."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    """4000 vectors in 400 tight groups (a query near a group centre has its group as exact top
    10), pickled as float16 in 4 Contriever files, and a DPR tsv in another order."""
    root = tmp_path_factory.mktemp("wiki")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(GROUPS, DIM)).astype(np.float32)
    vectors = np.repeat(centres, N // GROUPS, axis=0) + 0.1 * rng.normal(size=(N, DIM)).astype(np.float32)
    order = rng.permutation(N)
    vectors = vectors[order].astype(np.float16)
    ids = [str(i + 1) for i in order]  # DPR ids: 1-based integers written as text
    emb = root / "wikipedia_embeddings"
    emb.mkdir()
    per_file = N // FILES
    for f in range(FILES):
        part = slice(f * per_file, (f + 1) * per_file)
        with (emb / f"passages_{f:02d}").open("wb") as handle:
            pickle.dump((ids[part], vectors[part]), handle)
    tsv = root / "psgs_w100.tsv"
    with tsv.open("w", encoding="utf-8") as handle:
        handle.write("id\ttext\ttitle\n")
        for i in range(N + 2, 0, -1):  # reversed, plus two passages that have no vector
            handle.write(f'{i}\t"Passage number {i}, with ""quotes""."\tTitle {i}\n')
    queries = centres[rng.choice(GROUPS, 100, replace=False)] + 0.05 * rng.normal(size=(100, DIM)).astype(np.float32)
    exact = np.argsort(-(vectors.astype(np.float32) @ queries.T), axis=0)[:10].T  # (n_queries, 10) vector rows
    exact_ids = [[ids[r] for r in row] for row in exact]
    return {"root": root, "emb": emb, "tsv": tsv, "queries": queries, "exact_ids": exact_ids}


@pytest.fixture(scope="module")
def built(wiki):
    """The index of ``wiki`` (shards of 1500 vectors, chunks of 500), and the estimates seen."""
    out = wiki["root"] / "index"
    seen = []

    def on_estimate(est):
        seen.append((est, out.exists()))

    index = build_sharded_index(
        wiki["emb"], out, passages=wiki["tsv"], encoder=None, on_estimate=on_estimate,
        show_progress=False, chunk_size=500, shard_size=1500, **SMALL,
    )
    return index, seen


def hit_ids(index, queries, k=10):
    return [[index.passages[i].id for i, _ in row] for row in index.search_vectors(queries, k)]


def recall_at_10(found, exact):
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]))


def test_estimate_of_wikipedia_matches_hand_computed_sizes():
    wiki = estimate(21_015_324, 768)
    assert wiki["factory"] == "IVF18336,PQ96x8"  # 4 sqrt(n) cells, one byte per 8 dimensions
    lists = 21_015_324 * (96 + 8)  # PQ code + int64 passage line per vector
    centroids = (18336 + 256) * 768 * 4  # coarse centroids + PQ codebooks
    assert wiki["index_disk_bytes"] == lists + centroids
    assert round(wiki["index_disk_bytes"] / 2**30, 2) == 2.09  # vs 60 GiB of float32 vectors
    assert wiki["flat_bytes"] == 21_015_324 * 768 * 4 and wiki["n_shards"] == 11
    assert wiki["train_bytes"] == 2**20 * 768 * 4  # 64 a cell would be 1.17M: capped at 2**20
    assert wiki["search_bytes"] == centroids  # the lists are memory-mapped
    text = format_estimate(wiki)
    assert "IVF18336,PQ96x8 index of 21,015,324 x 768 vectors in 11 shard(s)" in text
    assert "disk: index 2.09 GiB" in text and "build RAM peak" in text and "search RAM" in text
    with pytest.raises(ValueError, match="pq_m=5 must divide the dimension 768"):
        from dynamicrag.retrieve.sharded import ShardedOptions

        estimate(10_000, 768, ShardedOptions(pq_m=5))


def test_reservoir_sample_is_uniform_over_the_stream():
    rng = np.random.default_rng(1)
    reservoir = np.empty((1000, 1), dtype=np.float32)
    filled = 0
    for start in range(0, 100_000, 7_000):  # uneven chunks, as files give
        chunk = np.arange(start, min(start + 7_000, 100_000), dtype=np.float32)[:, None]
        filled = reservoir_add(reservoir, filled, start, chunk, rng)
    values = reservoir[:, 0]
    assert filled == 1000 and len(np.unique(values)) == 1000
    assert abs(values.mean() - 50_000) < 4_000  # uniform over 0..99999: standard error ~900
    assert (values >= 90_000).sum() > 50  # the last tenth of the stream is represented


def test_contriever_files_are_read_in_shard_order(tmp_path, wiki):
    for name in ("passages_10", "passages_2", "passages_00", ".hidden"):
        (tmp_path / name).write_bytes(b"")
    assert [f.name for f in embedding_files(tmp_path)] == ["passages_00", "passages_2", "passages_10"]
    assert [f.name for f in embedding_files(str(tmp_path / "passages_1*"))] == ["passages_10"]
    with pytest.raises(FileNotFoundError, match="no embedding files"):
        embedding_files(tmp_path / "nothing_*")
    ids, vectors = read_embedding_file(wiki["emb"] / "passages_00")
    assert len(ids) == N // FILES and vectors.shape == (N // FILES, DIM) and vectors.dtype == np.float16
    (tmp_path / "passages_10").write_bytes(pickle.dumps({"ids": [1]}))
    with pytest.raises(ValueError, match="passages_10: expected a pickled pair"):
        read_embedding_file(tmp_path / "passages_10")


def test_estimate_is_given_before_building_and_matches_the_disk(built):
    index, seen = built
    (est, folder_existed), = seen
    assert not folder_existed and est["n"] == N and est["n_shards"] == 3 and est["factory"] == "IVF16,PQ8x5"
    files = index.index_dir / "sharded"
    actual = (files / "index.faiss").stat().st_size + (files / "index.ivfdata").stat().st_size
    assert abs(actual - est["index_disk_bytes"]) / est["index_disk_bytes"] < 0.05
    assert (files / "offsets.npy").stat().st_size == pytest.approx(est["offsets_disk_bytes"], abs=200)
    assert not (files / "shards").exists()  # merged into index.ivfdata, then removed
    assert json.loads((index.index_dir / "meta.json").read_text())["build"]["shards"] == 3
    assert index.counts() == {"passages": N + 2, "vectors": N, "dim": DIM}


def test_recall_against_exact_search_and_nprobe(built, wiki):
    import faiss

    index, _ = built
    assert index.config.nprobe == 8
    stats = faiss.cvar.indexIVF_stats  # FAISS's own count of vectors compared
    stats.reset()
    assert recall_at_10(hit_ids(index, wiki["queries"]), wiki["exact_ids"]) >= 0.9
    compared, stats.ndis = stats.ndis, 0
    index.config.nprobe = 1  # one cell of 16 per query: a fraction of the work
    try:
        hit_ids(index, wiki["queries"])
        assert 0 < stats.ndis < compared / 4
    finally:
        index.config.nprobe = 8


def test_hits_are_the_tsv_passages_of_their_vector_ids(built, wiki):
    index, _ = built
    hits = index.search_vectors(wiki["queries"][:5], 10)
    for row, exact in zip(hits, wiki["exact_ids"]):
        found = [index.passages[i] for i, _ in row]
        assert len(set(p.id for p in found) & set(exact)) >= 8
        # The tsv is in reverse id order with two extra rows on top: line = N + 2 - id.
        assert all(i == N + 2 - int(index.passages[i].id) for i, _ in row)
        assert all(p.text == f'Passage number {p.id}, with "quotes".' and p.title == f"Title {p.id}" for p in found)
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
    assert len(index) == N + 2 and index.passages[-1].id == "1"


def test_load_index_opens_it_and_a_saved_copy_searches_the_same(built, wiki, tmp_path):
    index, _ = built
    clear_index_cache()
    loaded = load_index(index.index_dir)
    assert isinstance(loaded, ShardedDenseRetriever) and loaded is load_index(index.index_dir)
    assert len(loaded) == N + 2 and loaded.config.nlist == 16
    want = hit_ids(index, wiki["queries"][:10])
    assert hit_ids(loaded, wiki["queries"][:10]) == want
    # save() copies it; the copy finds its own lists file (not the original's) after a move.
    copy = loaded.save(tmp_path / "copy")
    (tmp_path / "copy").rename(tmp_path / "moved")
    moved = ShardedDenseRetriever.load(tmp_path / "moved")
    assert copy == tmp_path / "copy" and hit_ids(moved, wiki["queries"][:10]) == want
    assert moved.passages[5] == index.passages[5]


def test_build_memory_is_bounded_by_the_chunk_not_the_corpus(tmp_path):
    """4000 vectors of 1024-d (16 MB as float32) from a generator and a tsv of 1 kB passages
    (4 MB): the build's peak of Python and numpy memory is below either."""
    n, dim, chunk = 4_000, 1024, 100

    def vectors():  # a callable source, called once per pass
        for start in range(0, n, chunk):
            rng = np.random.default_rng(start)
            yield [str(i) for i in range(start, start + chunk)], rng.normal(size=(chunk, dim)).astype(np.float32)

    tsv = tmp_path / "psgs.tsv"
    with tsv.open("w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        for i in range(n):
            f.write(f"{i}\t{'word ' * 200}{i}\tT{i}\n")
    tracemalloc.start()
    try:
        index = build_sharded_index(
            vectors, tmp_path / "index", passages=tsv, encoder=None, show_progress=False,
            nlist=8, pq_m=64, pq_nbits=4, train_size=300, chunk_size=chunk, shard_size=1500,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == n and index.counts()["vectors"] == n
    assert peak < min(n * dim * 4 / 4, tsv.stat().st_size), f"peak {peak / 2**20:.1f} MiB"
    assert index.passages[n - 1].text.endswith(f"word {n - 1}")


def test_text_search_is_close_to_the_exact_dense_retriever(nq, tmp_path):
    """The same MiniLM vectors in an exact index and in the sharded IVF-PQ one: nearly the same
    top 5, and ``search`` on the loaded folder encodes the questions and returns passages."""
    from dynamicrag.retrieve import DenseRetriever

    passages = nq.passages[:12] + nq.passages[2655:2667]  # 12 gold passages + 12 Wikipedia ones
    exact = DenseRetriever.build(passages, show_progress=False)
    emb = tmp_path / "emb"
    emb.mkdir()
    for f, part in enumerate((slice(0, 10), slice(10, 24))):
        with (emb / f"passages_{f:02d}").open("wb") as handle:
            pickle.dump(([p.id for p in passages[part]], exact.embeddings()[part]), handle)
    # 384 sub-quantizers of one dimension: fine enough for 24 training vectors.
    build_sharded_index(emb, tmp_path / "index", passages=iter(passages), encoder=None, show_progress=False,
                        nlist=1, pq_m=384, pq_nbits=4, shard_size=15)
    sharded = load_index(tmp_path / "index")
    queries = exact.encode_queries(nq.questions[:12])
    got, want = sharded.search_vectors(queries, 5), exact.search_vectors(queries, 5)
    overlap = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 5 for g, w in zip(got, want)])
    assert overlap >= 0.9 and np.mean([g[0][0] == w[0][0] for g, w in zip(got, want)]) >= 0.9

    found = sharded.search(nq.questions[:2], 5)
    assert [[p.id for p in row] for row in found] == [[passages[i].id for i, _ in row] for row in got[:2]]
    assert all(isinstance(p, Passage) and p.text and p.score is not None for row in found for p in row)
    assert found[0][0].id == nq.gold_ids[0]  # the first question's gold passage comes first


def test_bad_inputs_are_named_and_leave_nothing_behind(wiki, tmp_path):
    def blocks():
        yield ["1", "2", "3"], np.eye(3, 4, dtype=np.float32)
        yield ["999999"], np.ones((1, 4), dtype=np.float32)

    with pytest.raises(ValueError, match=r"1 vector id\(s\) have no passage in .*psgs_w100.tsv, e.g. '999999' \(vector 3\)"):
        build_sharded_index(blocks, tmp_path / "a", passages=wiki["tsv"], encoder=None, nlist=1, pq_m=2, pq_nbits=1)
    with pytest.raises(ValueError, match="id '2' occurs more than once in the embeddings"):
        build_sharded_index(lambda: [(["1", "2", "2"], np.eye(3, 4))], tmp_path / "b", passages=wiki["tsv"],
                            encoder=None, nlist=1, pq_m=2, pq_nbits=1)
    bad = tmp_path / "emb"
    bad.mkdir()
    with (bad / "passages_00").open("wb") as f:
        pickle.dump((["1"], np.ones((1, 4))), f)
    with (bad / "passages_01").open("wb") as f:
        pickle.dump((["2"], np.ones((1, 5))), f)
    with pytest.raises(ValueError, match=r"passages_01: vectors of dimension 5, earlier ones have 4"):
        build_sharded_index(bad, tmp_path / "c", passages=wiki["tsv"], encoder=None)
    with pytest.raises(ValueError, match=r"3 training vectors for 1 IVF cells and 256 PQ centroids: need at least 256"):
        build_sharded_index(lambda: [(["1", "2", "3"], np.eye(3, 4))], tmp_path / "d", passages=wiki["tsv"],
                            encoder=None, nlist=1, pq_m=2)
    with pytest.raises(TypeError, match=r"unknown sharded index option\(s\): \['kind'\]"):
        build_sharded_index(bad, tmp_path / "e", passages=wiki["tsv"], encoder=None, kind="hnsw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]  # nothing half-written


def test_index_command_builds_from_contriever_files_and_prints_the_estimate_first(wiki, tmp_path):
    from typer.testing import CliRunner

    from dynamicrag.cli import app

    out = tmp_path / "cli-index"
    argv = ["index", str(wiki["tsv"]), "--embeddings", str(wiki["emb"]), "--out", str(out),
            "--nlist", "16", "--pq-m", "8", "--nprobe", "8", "--shard-size", "1500"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert result.output.index("IVF16,PQ8x8 index of 4,000 x 32 vectors in 3 shard(s)") < result.output.index("indexed")
    assert "indexed 4002 passages (sharded IVF-PQ of 4000 vectors)" in " ".join(result.output.split())
    clear_index_cache()
    index = load_index(out)
    assert isinstance(index, ShardedDenseRetriever) and index.config.nprobe == 8 and len(index) == N + 2
    assert recall_at_10(hit_ids(index, wiki["queries"]), wiki["exact_ids"]) >= 0.8

    again = CliRunner().invoke(app, argv)  # an index is there: named, kept, not rebuilt
    assert again.exit_code == 2 and str(out) in again.output.replace("\n", "")
    assert load_index(out) is index
    two = CliRunner().invoke(app, ["index", str(wiki["tsv"]), str(wiki["tsv"]), "--embeddings", str(wiki["emb"]),
                                   "--out", str(tmp_path / "two")])
    assert two.exit_code == 2 and "one passage file" in two.output and not (tmp_path / "two").exists()
