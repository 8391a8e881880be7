"""The Python API: ``DynamicRAG`` answers as ``ask`` does, and ``import dynamicrag`` stays light."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_dynamicrag_loads_no_model_library_or_web_framework():
    code = ("import sys, dynamicrag\n"
            "from dynamicrag import Example, Passage\n"
            "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'bm25s', 'faiss') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert 'DynamicRAG' in dir(dynamicrag)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_top_level_name_is_an_attribute_error():
    import dynamicrag

    with pytest.raises(AttributeError, match="NoSuchThing"):
        dynamicrag.NoSuchThing  # noqa: B018


@pytest.mark.slow
def test_readme_python_example_runs_as_a_doctest():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 6 and result.failed == 0


@pytest.mark.slow
def test_run_answers_a_batch_with_the_ask_defaults():
    from dynamicrag import DynamicRAG, Example, Passage
    from dynamicrag.llm.adapters import read_manifest

    passages = [Passage(id="a", title="Hamlet", text="Hamlet is a tragedy written by William Shakespeare."),
                Passage(id="b", title="Faust", text="Faust is a tragic play by Johann Wolfgang von Goethe.")]
    rag = DynamicRAG.from_documents(passages)
    # ask's defaults: the shipped reranker adapter, with its manifest's prompt settings
    shipped = read_manifest(rag.config.reranker.adapter)
    assert shipped.role == "reranker" and rag.config.generator.adapter == "none"
    assert (rag.config.constrained, rag.config.top_n, rag.config.passage_words) == (
        shipped.constrained, shipped.top_n, shipped.passage_words)
    own = Example(id="own", question="Who wrote Faust?", passages=[passages[1]])
    answers = rag.run(["Who wrote Hamlet?", own])
    assert [a.question for a in answers] == ["Who wrote Hamlet?", "Who wrote Faust?"]
    for a in answers:
        assert a.error is None and a.well_formed is True and a.k == len(a.passages) <= len(a.candidates)
        assert a.timings.total_s > 0 and a.record["question"] == a.question
    assert [p.id for p in answers[1].candidates] == ["b"]  # an example's own passages: no search
