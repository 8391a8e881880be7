"""The id grammar's prefix checks, which drive constrained decoding."""

import pytest

from dynamicrag.llm.constrain import ID_LIST_REGEX, is_complete, is_valid_prefix
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
    assert ID_LIST_REGEX.startswith("(None|")
