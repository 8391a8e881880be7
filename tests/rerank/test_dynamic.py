"""The dynamic reranker's selection and its top-N reduction beyond one window."""

import pytest

from dynamicrag.rerank import DynamicReranker
from dynamicrag.schema import Example, Passage
from fakes import ScriptedBackend


def make_example(n: int, gold: dict[int, int]) -> Example:
    """n passages; passage at 1-based global position p holds GOLD-r when gold[p] == r."""
    passages = [
        Passage(id=f"p{p}", title=f"doc-{p}", text=f"GOLD-{gold[p]} evidence" if p in gold else "filler text")
        for p in range(1, n + 1)
    ]
    return Example(id="q", question="which passages?", passages=passages)


def test_single_window_selects_in_the_models_order():
    ex = make_example(10, {7: 1, 2: 2})
    sel = DynamicReranker(ScriptedBackend(), window=40).select([ex])[0]
    assert sel.ids == [7, 2] and sel.well_formed and sel.calls == 1
    assert sel.prompt_tokens > 0


@pytest.mark.parametrize("n", [50, 120, 500])
def test_top_n_maps_chunk_ids_back_to_global_passages(n):
    # Gold passages far past the first window: the original code's chunk-local ids would
    # point into the first 40 passages instead.
    gold = {n: 1, 45: 2, 3: 3, n - 41: 4}
    ex = make_example(n, gold)
    backend = ScriptedBackend()
    sel = DynamicReranker(backend, window=40).select([ex])[0]
    assert sel.ids == [n, 45, 3, n - 41]
    assert sel.well_formed and sel.error is None
    # one call per chunk of 40, then one final call over the 4 survivors
    assert sel.calls == len(backend.calls) == -(-n // 40) + 1
    assert sel.raw.count(" || ") == sel.calls - 1


def test_reduction_repeats_until_the_survivors_fit_one_window():
    # 200 passages, every 2nd is gold: 100 survive round 1, 40 round 2... until <= 10 remain.
    gold = {p: p for p in range(2, 201, 2)}
    ex = make_example(200, gold)
    sel = DynamicReranker(ScriptedBackend(), window=10).select([ex])[0]
    assert sel.ids == sorted(gold)[:10]  # the scripted policy keeps everything shown: the loop
    # still ends, by cutting each round that does not shrink to one window


def test_none_everywhere_selects_nothing():
    ex = make_example(90, {})
    sel = DynamicReranker(ScriptedBackend(), window=40).select([ex])[0]
    assert sel.ids == [] and sel.error is None and sel.calls == 3  # 3 chunks, no final call


def test_a_batch_of_examples_keeps_each_its_own_passages():
    exs = [make_example(60, {55: 1}), make_example(5, {2: 1, 4: 2}), make_example(0, {})]
    sels = DynamicReranker(ScriptedBackend(), window=40).select(exs)
    assert [s.ids for s in sels] == [[55], [2, 4], []]
    assert sels[2].calls == 0


def test_unusable_final_output_is_recorded_not_raised():
    ex = make_example(10, {3: 1})
    sel = DynamicReranker(ScriptedBackend(outputs={0: "1. Topic: doc-1"}), window=40).select([ex])[0]
    assert sel.ids == [] and not sel.well_formed
    assert sel.error.startswith("unusable") and sel.raw == "1. Topic: doc-1"


def test_malformed_chunk_output_marks_the_selection_but_keeps_going():
    ex = make_example(80, {70: 1})
    # call 0 is the first chunk (1..40): garbage; call 1 the second chunk finds 70 (local 30)
    sel = DynamicReranker(ScriptedBackend(outputs={0: "blah"}), window=40).select([ex])[0]
    assert sel.ids == [70] and not sel.well_formed and sel.error is None


def test_order_by_shows_the_best_scored_passage_first_and_maps_its_ids_back():
    from dynamicrag.rerank.pointwise import RetrieverScorer

    scores = [0.1, 0.5, 0.9, 0.3]  # the scorer's order: passages 3, 2, 4, 1
    ex = Example(id="q", question="which?", passages=[
        Passage(id=f"p{p}", title=f"doc-{p}", text="filler text", score=s) for p, s in enumerate(scores, 1)])
    backend = ScriptedBackend(outputs={0: "[1], [2]", 1: "[2]", 2: "[4]"})
    reranker = DynamicReranker(backend, window=40, order_by=RetrieverScorer())
    sel = reranker.select([ex])[0]
    shown = backend.calls[0][-1]["content"]
    assert shown.index("doc-3") < shown.index("doc-2") < shown.index("doc-4") < shown.index("doc-1")
    assert sel.ids == [3, 2]  # the model's [1], [2] are the scorer's first two: passages 3 and 2
    # Sampling (the DPO stage) reads the same order and maps back the same way.
    assert [s.ids for s in reranker.sample([ex], n=1)[0]] == [[2]]
    # Without a scorer the reranker reads the retriever's order, as in the paper.
    assert DynamicReranker(ScriptedBackend(outputs={0: "[4]"}), window=40).select([ex])[0].ids == [4]
