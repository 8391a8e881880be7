"""Pipeline bookkeeping with a scripted model: records, errors, None selections."""

from dynamicrag.generate import Generator
from dynamicrag.pipeline import Pipeline
from dynamicrag.rerank import DynamicReranker, TopKReranker
from dynamicrag.schema import Example, Passage
from fakes import ScriptedBackend


def example(i: int, gold: list[int], n: int = 5, **extra) -> Example:
    passages = [
        Passage(id=f"{i}-{p}", title=f"t{p}", text=f"GOLD-{gold.index(p) + 1}" if p in gold else "filler")
        for p in range(1, n + 1)
    ]
    return Example(id=str(i), question=f"q{i}", answers=["a"], task="nq", passages=passages, extra=extra)


def pipeline(backend, **kw) -> Pipeline:
    return Pipeline(DynamicReranker(backend), Generator(backend), **kw)


def test_records_carry_input_fields_selection_and_answer_in_order():
    backend = ScriptedBackend()
    records = pipeline(backend).run([example(0, [4, 2], source="nq-dev"), example(1, [])])
    assert [r["id"] for r in records] == ["0", "1"]
    first, second = records
    assert first["source"] == "nq-dev"  # input fields kept
    assert first["selected"] == [4, 2] and first["reranker_output"] == "[4], [2]"
    assert first["answer"] == "t4|t2"  # generator saw the chosen passages in the chosen order
    assert first["error"] is None and len(first["passages"]) == 5
    # None: the generator gets the no-passage prompt
    assert second["selected"] == [] and second["answer"] == "no passages" and second["error"] is None
    assert "Retrieved Content: None" in backend.calls[-1][-1]["content"]


def test_unusable_reranker_output_is_a_failed_record_without_answer():
    backend = ScriptedBackend(outputs={0: "1. Topic: t1"})
    records = pipeline(backend).run([example(0, [1]), example(1, [3])])
    assert records[0]["error"].startswith("unusable reranker output") and records[0]["answer"] is None
    assert records[1]["selected"] == [3] and records[1]["answer"] == "t3"


def test_an_exception_fails_only_its_own_example():
    backend = ScriptedBackend(fail_on="q1")
    records = pipeline(backend).run([example(0, [2]), example(1, [2]), example(2, [1])])
    assert [r["error"] is None for r in records] == [True, False, True]
    assert "scripted failure" in records[1]["error"]
    assert records[2]["answer"] == "t1"


def test_top_n_caps_the_examples_own_passages():
    records = Pipeline(TopKReranker(2), Generator(ScriptedBackend()), top_n=3).run([example(0, [], n=10)])
    assert len(records[0]["passages"]) == 3 and records[0]["selected"] == [1, 2]
