"""The id grammar's prefix checks, which drive constrained decoding."""

import pytest

import re

from dynamicrag.llm.constrain import id_list_gbnf, id_list_regex, is_complete, is_valid_prefix
from dynamicrag.rerank.parse import parse_selection


@pytest.mark.parametrize(
    "text, ok",
    [
        ("", True), ("N", True), ("None", True), ("Nonee", False),
        ("[", True), ("[0", False), ("[1", True), ("[4", False), ("[1]", True), ("[1],", True),
        ("[1], ", True), ("[1], [1]", False), ("[1], [2]", True), ("[1], [2], [3], ", False),
        ("[3]]", False), ("[1] ", False), ("[1],[2]", False),
    ],
)
def test_prefixes_over_three_passages(text, ok):
    assert is_valid_prefix(text, 3) is ok


def test_multi_digit_ids_need_a_free_completion():
    assert is_valid_prefix("[1", 12)  # 1, 10, 11, 12
    assert not is_valid_prefix("[13", 12)
    assert not is_valid_prefix("[1], [10], [11], [12], [1", 12)  # all of 1,10,11,12 taken
    assert is_valid_prefix("[1], [10], [11], [1", 12)  # 12 is free


def test_every_complete_text_parses_as_well_formed():
    for text in ["None", "[2]", "[3], [1]", "[1], [2], [3]"]:
        assert is_complete(text, 3)
        assert parse_selection(text, 3).well_formed
    for text in ["", "[", "[1],", "[4]", "[1], [1]"]:
        assert not is_complete(text, 3)


def test_the_engines_regex_holds_ids_to_the_candidates():
    # What vLLM and OpenAI-compatible servers are sent: an id above k (a [11] over 10 passages)
    # or a list longer than k can no longer be decoded; repeats are left to the parser.
    regex = re.compile(id_list_regex(12))
    for text in ["None", "[1]", "[12], [3]", "[10], [1], [11]", ", ".join(f"[{i}]" for i in range(1, 13))]:
        assert regex.fullmatch(text), text
    for text in ["", "[13]", "[0]", "[1], [13]", "[01]", "none", ", ".join(f"[{i}]" for i in range(1, 13)) + ", [1]"]:
        assert not regex.fullmatch(text), text


def test_the_gbnf_grammar_names_the_same_ids():
    assert id_list_gbnf(3) == 'root ::= "None" | id (", " id){0,2}\nid ::= "[" ("3" | "2" | "1") "]"'
