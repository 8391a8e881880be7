"""BM25 over the NQ test corpus: build time, gold-passage recall, persistence, edge cases."""

from __future__ import annotations

import json
import time

import pytest

from dynamicrag.retrieve import BM25Retriever, build_index, clear_index_cache, load_index
from dynamicrag.schema import Passage


@pytest.fixture(scope="module")
def nq_bm25(nq):
    start = time.perf_counter()
    retriever = BM25Retriever.build(nq.passages, show_progress=False)
    return retriever, time.perf_counter() - start


def gold_recall(results, gold_ids):
    return sum(gold in {p.id for p in row} for row, gold in zip(results, gold_ids)) / len(gold_ids)


def test_nq_build_time_and_gold_recall_at_20(nq, nq_bm25):
    retriever, seconds = nq_bm25
    assert len(retriever) == 3655
    results = retriever.search(nq.questions[:300], k=20)
    recall = gold_recall(results, nq.gold_ids[:300])
    print(f"BM25 build of {len(retriever)} passages: {seconds:.2f}s; recall@20: {recall:.3f}")
    assert seconds < 60
    assert recall >= 0.9
    assert all(len(row) == 20 for row in results)
    # Best first, with the BM25 score on each copy.
    scores = [p.score for p in results[0]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_first_question_finds_its_gold_passage_first(nq, nq_bm25):
    retriever, _ = nq_bm25
    (top,) = retriever.search(["who got the first nobel prize in physics"], k=1)[0:1]
    assert top[0].id == nq.gold_ids[0]
    assert top[0].title == "List of Nobel laureates in Physics"
    assert top[0].extra["isgold"] is True


def test_save_and_load_give_identical_results(nq, nq_bm25, tmp_path):
    retriever, _ = nq_bm25
    out = retriever.save(tmp_path / "bm25")
    clear_index_cache()  # read the files back, not the cached object
    loaded = load_index(out)
    assert loaded is not retriever and loaded.kind == "bm25" and len(loaded) == len(retriever)
    questions = nq.questions[:100]
    before = retriever.search(questions, k=20)
    after = loaded.search(questions, k=20)
    assert [[(p.id, p.score) for p in row] for row in after] == [
        [(p.id, p.score) for p in row] for row in before
    ]
    assert after[0][0] == before[0][0]  # title, text and extra fields survive the round trip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "bm25" and meta["format_version"] == 1
    assert meta["counts"]["passages"] == 3655 and meta["counts"]["vocabulary"] > 10_000
    assert meta["options"]["stemmer"] == "english" and meta["options"]["stopwords"] == "en"
    assert len((out / "passages.jsonl").read_text().splitlines()) == 3655


TINY = [
    Passage(id="cats", title="Cat", text="Cats purr and sleep most of the day."),
    Passage(id="dogs", title="Dog", text="Dogs bark at the postman.", extra={"tag": ["pet"]}),
    Passage(id="fish", title="Goldfish", text="A goldfish swims in a bowl of water."),
]


def test_k_larger_than_corpus_returns_every_passage_once():
    retriever = BM25Retriever.build(TINY, show_progress=False)
    (row,) = retriever.search(["why do dogs bark"], k=50)
    assert [p.id for p in row][0] == "dogs"
    assert sorted(p.id for p in row) == ["cats", "dogs", "fish"]
    assert row[0].score > 0 and row[1].score == 0 and row[2].score == 0


def test_query_without_indexed_words_still_returns_k_zero_score_passages():
    retriever = BM25Retriever.build(TINY, show_progress=False)
    stopwords_only, unknown_only, empty = retriever.search(["the of and", "zebra quokka", ""], k=2)
    for row in (stopwords_only, unknown_only, empty):
        assert len(row) == 2 and all(p.score == 0 for p in row)


def test_results_are_copies_of_the_corpus_passages():
    retriever = BM25Retriever.build(TINY, show_progress=False)
    (row,) = retriever.search(["dogs"], k=1)
    row[0].extra["tag"].append("edited")
    row[0].text = "edited"
    assert retriever.passages[1].extra == {"tag": ["pet"]}
    assert retriever.passages[1].text == "Dogs bark at the postman."
    assert retriever.passages[1].score is None


def test_bad_search_arguments_are_refused():
    retriever = BM25Retriever.build(TINY, show_progress=False)
    with pytest.raises(TypeError, match=r"wrap a single query"):
        retriever.search("dogs", k=1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.search(["dogs"], k=0)
    assert retriever.search([], k=3) == []


def test_stemming_is_on_by_default_and_can_be_turned_off(tmp_path):
    plain = BM25Retriever.build(TINY, stemmer=None, show_progress=False)
    assert plain.search(["swimming goldfishes"], k=1)[0][0].score == 0  # no shared word
    retriever = build_index(TINY, tmp_path / "stem", show_progress=False)
    (row,) = retriever.search(["swimming goldfishes"], k=1)  # stems to "swim", "goldfish"
    assert row[0].id == "fish" and row[0].score > 0
    clear_index_cache()
    assert load_index(tmp_path / "stem").search(["swimming goldfishes"], k=1)[0][0].id == "fish"
