"""Reciprocal-rank fusion, by hand and through real BM25 + MiniLM retrievers on 5 passages."""

from __future__ import annotations

import json

import pytest

from dynamicrag.retrieve import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    build_index,
    clear_index_cache,
    load_index,
    rrf_fuse,
)
from dynamicrag.schema import Passage

PASSAGES = [
    Passage(
        id="car",
        title="Jaguar Cars",
        text="Jaguar is a British maker of luxury cars; its badge shows a leaping jaguar.",
    ),
    Passage(
        id="jaguar",
        title="Jaguar",
        text="The jaguar is a large wild cat of the Americas that hunts deer and caimans "
        "in the rainforest.",
    ),
    Passage(
        id="leopard",
        title="Leopard",
        text="Leopards are spotted felines that climb trees to store their prey.",
    ),
    Passage(
        id="cheetah",
        title="Cheetah",
        text="The cheetah is the fastest land animal, a wild cat of African savannas.",
    ),
    Passage(id="bread", title="Bread", text="Bakers knead dough and bake loaves in an oven."),
]
QUERY = "which jaguar is fastest"


def test_rrf_prefers_agreement_over_a_single_first_place():
    # 7 is first in one ranking but fifth in the other; 1 is never first but high in both.
    fused = rrf_fuse([[7, 3, 1], [3, 1, 9, 8, 7]], k=10, k_rrf=60)
    scores = dict(fused)
    assert scores[3] == pytest.approx(1 / 62 + 1 / 61)  # 0.03252
    assert scores[1] == pytest.approx(1 / 63 + 1 / 62)  # 0.03200
    assert scores[7] == pytest.approx(1 / 61 + 1 / 65)  # 0.03178
    assert scores[9] == pytest.approx(1 / 63)
    assert scores[8] == pytest.approx(1 / 64)
    assert [p for p, _ in fused] == [3, 1, 7, 9, 8]
    assert [p for p, _ in rrf_fuse([[7, 3, 1], [3, 1, 9, 8, 7]], k=2)] == [3, 1]
    # A small k_rrf lets first places dominate: 7 now beats 1 (1 + 1/5 > 1/3 + 1/2).
    assert [p for p, _ in rrf_fuse([[7, 3, 1], [3, 1, 9, 8, 7]], k=3, k_rrf=0)] == [3, 7, 1]


def test_rrf_ties_go_to_the_better_best_rank_then_the_first_ranking():
    # 5 and 6 are each first once and second once: equal scores, 5 was first in ranking 0.
    assert [p for p, _ in rrf_fuse([[5, 6], [6, 5]], k=2)] == [5, 6]
    assert [p for p, _ in rrf_fuse([[6, 5], [5, 6]], k=2)] == [6, 5]
    # With k_rrf=0, 1 scores 1/4 + 1 and 2 scores 1/2 + 1/2 + 1/4: both 1.25. 1 reached
    # rank 1 (in the second ranking), 2 only rank 2, so 1 goes first although 2 appears in
    # an earlier ranking.
    fused = rrf_fuse([[3, 2, 4, 1], [1, 2], [5, 6, 7, 2]], k=2, k_rrf=0)
    assert fused == [(1, 1.25), (2, 1.25)]


@pytest.fixture(scope="module")
def sides():
    return (
        BM25Retriever.build(PASSAGES, show_progress=False),
        DenseRetriever.build(PASSAGES, show_progress=False),
    )


def test_hybrid_fuses_known_bm25_and_dense_rankings(sides):
    bm25, dense = sides
    names = [p.id for p in PASSAGES]
    # The two rankings, checked first so that the fused order below is computed by hand.
    bm25_hits = bm25.search_positions([QUERY], 5)[0]
    assert [names[i] for i, s in bm25_hits if s > 0] == ["cheetah", "car", "jaguar"]
    assert all(s == 0 for _, s in bm25_hits[3:])  # no query term in leopard or bread
    assert [names[i] for i, _ in dense.search_positions([QUERY], 5)[0]] == [
        "car",
        "jaguar",
        "cheetah",
        "leopard",
        "bread",
    ]
    hybrid = HybridRetriever(bm25, dense, k_rrf=60, pool=100)
    (row,) = hybrid.search([QUERY], k=5)
    # car 1/62 + 1/61 > cheetah 1/61 + 1/63 > jaguar 1/63 + 1/62 > leopard 1/64 > bread 1/65:
    # BM25 alone puts cheetah first, dense alone puts jaguar second; fusion does neither.
    assert [p.id for p in row] == ["car", "cheetah", "jaguar", "leopard", "bread"]
    expected = [1 / 62 + 1 / 61, 1 / 61 + 1 / 63, 1 / 63 + 1 / 62, 1 / 64, 1 / 65]
    assert [p.score for p in row] == pytest.approx(expected)
    # k larger than the per-side pool still searches deep enough for k results.
    assert len(HybridRetriever(bm25, dense, pool=2).search([QUERY], k=5)[0]) == 5


def test_hybrid_needs_both_sides_over_the_same_corpus(sides):
    bm25, _ = sides
    other = DenseRetriever.build(PASSAGES[:4], show_progress=False)
    with pytest.raises(ValueError, match="same passages"):
        HybridRetriever(bm25, other)


def test_hybrid_index_round_trip_keeps_one_corpus_and_two_sub_indexes(tmp_path):
    out = tmp_path / "hybrid"
    built = build_index(PASSAGES, out, kind="hybrid", k_rrf=30, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["bm25", "dense", "meta.json", "passages.jsonl"]
    assert (out / "dense" / "index.faiss").is_file() and (
        out / "bm25" / "params.index.json"
    ).is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "hybrid" and meta["options"]["k_rrf"] == 30
    assert meta["options"]["dense"]["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["counts"] == {"passages": 5, "vocabulary": meta["counts"]["vocabulary"], "dim": 384}
    clear_index_cache()
    loaded = load_index(out)
    assert isinstance(loaded, HybridRetriever) and loaded is not built and loaded.k_rrf == 30
    queries = [QUERY, "bread baking", "spotted wild cat"]
    assert [[(p.id, p.score) for p in r] for r in loaded.search(queries, k=3)] == [
        [(p.id, p.score) for p in r] for r in built.search(queries, k=3)
    ]
