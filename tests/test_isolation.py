"""Failure isolation: a failing batch is run item by item; only the bad items fail, with their error."""

from __future__ import annotations

import pytest

from dynamicrag.isolation import error_text, run_isolated
from dynamicrag.schema import Example, Passage
from dynamicrag.train.label import LABEL_ERROR, LabelConfig, label_examples, read_labelled


class Doubler:
    def __init__(self) -> None:
        self.calls: list[list] = []

    def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        if "bad" in items:
            raise ValueError("cannot double 'bad'")
        return [x * 2 for x in items]


def test_a_good_batch_runs_once():
    process = Doubler()
    assert run_isolated(process, [1, 2, 3], lambda item, err: None) == [2, 4, 6]
    assert process.calls == [[1, 2, 3]]


def test_a_failing_batch_is_run_item_by_item_and_only_the_bad_item_fails():
    process = Doubler()
    out = run_isolated(process, [1, "bad", 3], lambda item, err: ("failed", item, error_text(err)))
    assert out == [2, ("failed", "bad", "ValueError: cannot double 'bad'"), 6]
    assert process.calls == [[1, "bad", 3], [1], ["bad"], [3]]


def test_a_wrong_number_of_results_counts_as_a_failure():
    out = run_isolated(lambda items: [0], [1, 2], lambda item, err: str(err))
    assert out == [0, 0]  # each alone gives one result
    [message] = run_isolated(lambda items: [], [1], lambda item, err: str(err))
    assert message == "0 results for 1 items"


class FlakyScorer:
    """A pointwise teacher that raises on one question, as a real model may on odd input."""

    def score(self, query: str, passages: list[Passage]) -> list[float]:
        if query == "boom":
            raise RuntimeError("teacher exploded")
        return [1.0 if "Paris" in p.text else 0.0 for p in passages]


def test_label_keeps_going_past_a_teacher_exception_and_prepare_leaves_the_example_out(tmp_path):
    passages = [Passage(id="a", text="Paris is the capital."), Passage(id="b", text="Bread.")]
    examples = [Example(id=str(i), question=q, answers=["Paris"], passages=passages) for i, q in
                enumerate(["capital of France?", "boom", "where is Paris?"])]
    config = LabelConfig(scorer="cross-encoder", threshold=0.5)
    out = label_examples(examples, FlakyScorer(), config)
    assert [LABEL_ERROR in ex.extra for ex in out] == [False, True, False]
    assert out[1].extra[LABEL_ERROR] == "RuntimeError: teacher exploded"
    assert [p.extra["relevant"] for p in out[0].passages] == [True, False]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(ex.model_dump_json() + "\n" for ex in out))
    assert [ex.id for ex in read_labelled(path)] == ["0", "2"]


def test_an_empty_batch_is_not_run_alone():
    with pytest.raises(RuntimeError):
        run_isolated(lambda items: [1], [], lambda item, err: None)
