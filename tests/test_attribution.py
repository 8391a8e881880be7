"""Which chosen passages an answer draws on (dynamicrag.attribution), and ask showing it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dynamicrag.attribution import attribute
from dynamicrag.cli import app
from dynamicrag.schema import Passage

PASSAGES = [
    Passage(id="mint", title="United States Mint",
            text="David J. Ryder is the current Director of the United States Mint, sworn in on April 2018."),
    Passage(id="coins", title="Coin", text="The Mint produces circulating coinage for the United States."),
    Passage(id="ryder", title="David Ryder", text="Ryder served two terms; David Ryder also led a consulting firm."),
]
QUESTION = "who is the current director of the united states mint"


def positions(answer: str, question: str = QUESTION, **kw) -> list[int]:
    return [a.position for a in attribute(answer, PASSAGES, question, **kw)]


def test_a_copied_phrase_attributes_its_passage_with_the_phrase_as_evidence():
    [found] = attribute("The current director is David J. Ryder, sworn in in 2018.", PASSAGES, QUESTION)
    assert (found.position, found.id) == (1, "mint")
    assert found.evidence == "david j ryder"  # normalised words, longest shared run with a new word


def test_the_answers_new_words_in_another_wording_count_too():
    # No 3-word run in common with passage 3, but both of the answer's new words are in it.
    assert positions("Ryder, David.") == [1, 3]


def test_restating_the_question_or_refusing_draws_on_nothing():
    assert positions("The current director of the United States Mint.") == []
    refusal = "I cannot fully answer based on the available information. Please provide more details."
    assert positions(refusal) == []
    assert positions("") == []


def test_question_words_are_not_evidence():
    # "united states" is in the question: passage 2 shares only that with the answer.
    assert positions("The United States Mint is led by Ryder.") == [1, 3]
    # Without the question, passage 2 holds 3 of the answer's 5 new words (united, states, mint).
    assert 2 in positions("The United States Mint is led by Ryder.", question="")


def test_thresholds():
    assert positions("David J. Ryder", min_run=4) == [1, 3]  # by share of new words instead
    assert positions("Ryder led the Mint and a consulting firm", min_share=1.0, min_run=10) == [3]
    with pytest.raises(ValueError):
        attribute("x", PASSAGES, min_share=0)


@pytest.mark.slow
def test_ask_shows_the_passages_the_answer_draws_on(smollm):
    # Retrieval order: the reranker picks the overview passage, whose words the answer copies
    # (ordered by query likelihood it picks another passage, and this answer copies none).
    fast = ["--top-n", "3", "--max-new-tokens", "24", "--reranker-max-tokens", "12", "--order-by", "none"]
    result = CliRunner().invoke(app, ["ask", "What does the reranker output?", "--json", *fast])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["attribution"]  # the answer copies "retrieval-augmented generation (RAG)" from its passage
    for a in record["attribution"]:
        assert a["position"] in record["selected"]
        assert record["passages"][a["position"] - 1]["id"] == a["id"] and a["evidence"]
    table = CliRunner().invoke(app, ["ask", "What does the reranker output?", *fast])
    assert table.exit_code == 0 and "answer draws on:" in table.output
